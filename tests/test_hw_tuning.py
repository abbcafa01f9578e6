"""Auto hardware tuning: activation formula against a measured peak of our block code, exact weight
sizes against real quantized models, plans on simulated GPUs (3060 / 4090 / 5090 / H100 / H200),
minimality of blocks_to_swap, VAE / encoder decisions, the plan text, OOM advice and the guard."""
from dataclasses import replace

import pytest
import torch

from log_capture import captured_lines
from memory_tracker import PeakTracker
from wanfp4 import quant
from wanfp4.wan import hw_tuning as hw
from wanfp4.wan import memory_sizes as ms
from wanfp4.wan.blocks import BlockInputs
from wanfp4.wan.config import INFINITETALK_14B, TINY_INFINITETALK
from wanfp4.wan.hw_tuning import GiB, GpuInfo, format_plan, oom_advice, oom_guard, plan_memory
from wanfp4.wan.model import WanModel, build_model, keeps_fp32
from wanfp4.wan.pipeline import GenerationSettings
from wanfp4.wan.rope import rope_angles_3d

SEED = dict(width=640, height=720, frames=81)


def measured_block_peak(d, f, heads, grid, batch, audio=True):
    cfg = replace(TINY_INFINITETALK, dim=d, ffn_dim=f, num_heads=heads, num_layers=1, text_len=64)
    if not audio:
        cfg = replace(cfg, audio=None)
    blk = build_model(cfg, "cpu", torch.bfloat16, seed=0).blocks[0]
    cos, sin = rope_angles_3d(grid, d // heads)
    g = torch.Generator().manual_seed(0)
    inp = BlockInputs(e0=torch.randn(batch, 6, d, generator=g), rope_cos=cos, rope_sin=sin, grid=grid,
                      context=torch.randn(batch, 64, d, generator=g).bfloat16(),
                      context_img=torch.randn(batch, 257, d, generator=g).bfloat16())
    if audio:
        inp.audio = torch.randn(batch * grid[0], cfg.audio.context_tokens, cfg.audio.output_dim).bfloat16()
    tokens = grid[0] * grid[1] * grid[2]
    x = torch.randn(batch, tokens, d, generator=g).bfloat16()
    with torch.no_grad(), PeakTracker(list(blk.parameters())) as tr:
        blk(x, inp)
    # the block's input stays alive in the caller (_run_blocks) during the call: count it as the model does
    return cfg, tokens, tr.peak + x.numel() * 2


@pytest.mark.parametrize("d,f,heads,grid,batch,audio", [
    (512, 1382, 4, (5, 32, 32), 1, True),     # Wan's ffn/dim ratio (2.7)
    (512, 1382, 4, (5, 32, 32), 3, True),     # batched CFG
    (512, 1382, 4, (5, 32, 32), 1, False),    # plain Wan block
    (384, 2048, 3, (4, 24, 32), 1, True),     # FFN-heavy: the FFN phase dominates
])
def test_activation_formula_matches_measured_block_peak(d, f, heads, grid, batch, audio):
    cfg, tokens, measured = measured_block_peak(d, f, heads, grid, batch, audio)
    ctx_bytes = batch * (cfg.text_len + cfg.image_tokens) * d * 2   # formula counts the (outside) context too
    predicted = ms.activation_bytes(cfg, tokens, batch, "sdpa") - ctx_bytes
    assert abs(predicted - measured) / measured < 0.12, (predicted, measured)


@pytest.mark.parametrize("mode", ["disabled", "fp8_e4m3fn_scaled", "fp4_scaled", "fp4_experimental"])
def test_weight_sizes_match_a_real_quantized_model(mode):
    cfg = replace(TINY_INFINITETALK, num_layers=3)
    model = quant.quantize_model(build_model(cfg, "cpu", torch.bfloat16, seed=1), mode, compute_dtype=torch.bfloat16)
    nbytes = lambda m: sum(t.numel() * t.element_size() for t in list(m.parameters()) + list(m.buffers()))  # noqa
    ws = ms.weight_sizes(cfg, mode, torch.bfloat16)
    assert ws.block_bytes * 3 == sum(nbytes(b) for b in model.blocks)
    assert ws.other_bytes == nbytes(model) - sum(nbytes(b) for b in model.blocks)
    assert ws.embedding_bytes == sum(nbytes(getattr(model, n)) for n in ("text_embedding", "img_emb", "audio_proj"))


def test_14b_sizes_agree_with_the_quant_helper_and_the_reference_table():
    # the quant helper counts every non-Linear tensor at 2 bytes; ours keeps the fp32 ones at 4 (dtype policy)
    with torch.device("meta"):
        meta = WanModel(INFINITETALK_14B)
    fp32_extra = 2 * sum(p.numel() for n, p in meta.named_parameters() if keeps_fp32(n))
    for mode in ("disabled", "fp8_e4m3fn_fast", "fp4_scaled"):
        ws = ms.weight_sizes(INFINITETALK_14B, mode)
        total = ws.other_bytes + 40 * ws.block_bytes
        assert total - quant.quantized_size_bytes(INFINITETALK_14B, mode) == fp32_extra
    # I2V 14B blocks (§4.5): bf16 807 MB, fp8 ~404 MB, NVFP4 ~227 MB; InfiniteTalk adds the audio cross-attn
    plain = replace(INFINITETALK_14B, audio=None)
    for mode, ref in (("disabled", 807e6), ("fp8_e4m3fn_fast", 404e6), ("fp4_scaled", 227e6)):
        assert abs(ms.weight_sizes(plain, mode).block_bytes - ref) / ref < 0.03


def test_tokens_follow_the_window():
    assert ms.tokens_for(INFINITETALK_14B, 640, 720, 81) == (21, 37800)
    assert ms.tokens_for(INFINITETALK_14B, 640, 720, 1000) == (21, 37800)   # 81-frame windows
    assert ms.tokens_for(INFINITETALK_14B, 640, 640, 33) == (9, 9 * 40 * 40)


def plan(preset, threshold=0.5, quant_mode="auto", attention="sageattn_3_fp8", ram=64 * GiB, **kw):
    shape = {**SEED, **{k: kw.pop(k) for k in list(kw) if k in SEED}}
    return plan_memory(GpuInfo.simulate(preset, ram_bytes=ram), INFINITETALK_14B, quant_mode, attention,
                       threshold=threshold, **shape, **kw)


def test_h200_seed_runs_resident_with_fp8():
    p = plan("h200")
    assert p.fits and p.blocks_to_swap == 0 and p.quant_mode == "fp8_e4m3fn_fast" and p.batch_cfg
    assert not p.vae_tiling and not p.dit_leaves_for_decode
    assert p.predicted_peak + hw.CUDA_CONTEXT_BYTES <= p.limit_bytes


@pytest.mark.parametrize("preset", ["rtx3060", "rtx4090", "rtx5090", "h100", "h200"])
@pytest.mark.parametrize("threshold", [0.5, 0.9])
def test_plans_fit_and_swap_the_fewest_blocks(preset, threshold):
    p = plan(preset, threshold)
    if not p.fits:
        assert preset == "rtx3060" and threshold == 0.5
        assert any("lower the resolution" in n for n in p.notes)
        return
    assert p.sampling_peak + hw.CUDA_CONTEXT_BYTES <= p.limit_bytes
    assert p.decode_peak + hw.CUDA_CONTEXT_BYTES <= p.limit_bytes
    if p.blocks_to_swap:
        fewer = plan(preset, threshold, quant_mode=p.quant_mode, attention=p.attention_mode, auto=False,
                     batch_cfg=p.batch_cfg, blocks_to_swap=p.blocks_to_swap - 1)
        assert fewer.sampling_peak + hw.CUDA_CONTEXT_BYTES > p.limit_bytes
    if GpuInfo.simulate(preset).fp8_compute:
        assert p.quant_mode in ("fp8_e4m3fn_fast", "fp4_scaled_fast")
    else:
        assert p.quant_mode in ("disabled", "fp8_e4m3fn_scaled", "fp4_scaled")


def test_more_vram_never_swaps_more():
    swaps = [plan("rtx4090", t).blocks_to_swap for t in (0.5, 0.7, 0.9)]
    assert swaps == sorted(swaps, reverse=True) and swaps[0] > swaps[-1]
    p = plan("rtx4090", 0.5)
    assert p.blocks_to_swap > 0 and p.host_bytes == p.blocks_to_swap * ms.weight_sizes(
        INFINITETALK_14B, p.quant_mode).block_bytes


def test_manual_mode_keeps_the_users_settings():
    p = plan("h100", 0.3, quant_mode="disabled", attention="sdpa", auto=False, blocks_to_swap=0)
    assert (p.quant_mode, p.blocks_to_swap, p.batch_cfg, p.fits) == ("disabled", 0, True, False)
    p = plan("h100", 0.3, quant_mode="disabled", attention="sdpa", auto=True)
    assert p.fits and (p.blocks_to_swap > 0 or p.quant_mode != "disabled")


def test_small_ram_forces_smaller_weights_and_pinned_cap_note():
    roomy = plan("rtx4090", 0.5, ram=128 * GiB)
    tight = plan("rtx4090", 0.5, ram=12 * GiB)
    assert tight.host_bytes <= 0.8 * 12 * GiB
    assert ms.weight_sizes(INFINITETALK_14B, tight.quant_mode).block_bytes < ms.weight_sizes(
        INFINITETALK_14B, roomy.quant_mode).block_bytes
    assert any("pinned cap" in n for n in tight.notes) == (tight.host_bytes > 6 * GiB)


def test_offloading_embeddings_moves_their_bytes_to_host():
    a = plan("rtx4090", 0.9, quant_mode="fp8_e4m3fn_fast", auto=False, blocks_to_swap=20)
    b = plan("rtx4090", 0.9, quant_mode="fp8_e4m3fn_fast", auto=False, blocks_to_swap=20, offload_embeddings=True)
    emb = ms.weight_sizes(INFINITETALK_14B, "fp8_e4m3fn_fast").embedding_bytes
    assert a.weights_resident - b.weights_resident == emb and b.host_bytes - a.host_bytes == emb


def test_vae_tiling_and_dit_leaving_for_decode():
    assert not plan("h200").vae_tiling
    assert plan("h200", vae_tiling="on").vae_tiling
    p = plan("rtx4090", 0.5)
    assert p.vae_tiling and not p.dit_leaves_for_decode          # tiles fit next to the resident DiT
    p = plan("rtx4090", 0.5, vae_tiling="off")
    assert not p.vae_tiling and p.dit_leaves_for_decode and p.decode_peak < p.weights_resident + p.vae_bytes
    assert plan("h200").keep_encoders and not plan("rtx4090").keep_encoders


def test_cpu_plan_and_detection():
    gpu = hw.detect_gpu("cpu")
    assert not gpu.is_cuda and (gpu.ram_bytes or 0) > 0
    p = plan_memory(gpu, INFINITETALK_14B, "auto", "sdpa", 640, 720, 81, 10, 0.5)
    assert p.blocks_to_swap == 0 and p.quant_mode == "disabled" and p.fits
    assert format_plan(p).startswith("[INFO] Hardware plan: CPU")


def test_format_plan_is_one_readable_block():
    p = plan("rtx4090", 0.5)
    text = format_plan(p)
    assert text.startswith("[INFO] Hardware plan: NVIDIA GeForce RTX 4090 (sm_89, 24.0 GiB total)")
    for part in (f"block swap: {p.blocks_to_swap}/40", f"quantization: {p.quant_mode}", "attention:",
                 "predicted peak:", "limit 12.0 GiB (50% of VRAM): fits", "VAE:", "encoders:"):
        assert part in text, part
    with captured_lines() as lines:
        hw.log_plan(p)
    assert len(lines) == 1 and lines[0] == text


def test_measured_vs_predicted_line():
    p = plan("h200")
    line = hw.measured_vs_predicted(p, int(p.predicted_peak * 1.1))
    assert "+10%" in line and "max_memory_allocated" in line


def test_oom_advice_names_the_next_setting():
    p = plan("rtx4090", 0.5)
    s = GenerationSettings(width=640, height=720, frames=81)
    msg = oom_advice(p, s)
    assert f"Next setting to try: set blocks_to_swap to {min(40, max(p.blocks_to_swap + 10, 2 * p.blocks_to_swap))}" in msg
    assert "512x576" in msg and "inputs" in msg
    full = replace(p, blocks_to_swap=40)
    msg = oom_advice(full, {"width": 640, "height": 720, "frames": 81})
    assert "Next setting to try: lower the resolution to 512x576" in msg and "fewer frames: 53" in msg


def test_oom_guard_converts_only_out_of_memory():
    p = plan("rtx4090", 0.5)
    s = GenerationSettings()
    with pytest.raises(RuntimeError) as info:
        with oom_guard(p, s):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert not isinstance(info.value, torch.OutOfMemoryError)
    assert "Next setting to try" in str(info.value) and "Tried to allocate 2.00 GiB" in str(info.value)
    with pytest.raises(ValueError, match="unrelated"):
        with oom_guard(p, s):
            raise ValueError("unrelated")


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="vram_threshold"):
        plan("h200", 0.0)
    with pytest.raises(ValueError, match="multiples of 16"):
        plan("h200", width=650)
    with pytest.raises(ValueError, match="blocks_to_swap"):
        plan("h200", blocks_to_swap=41)
    with pytest.raises(ValueError, match="vae_tiling"):
        plan("h200", vae_tiling="maybe")
    with pytest.raises(ValueError, match="unknown GPU preset"):
        GpuInfo.simulate("rtx9090")


def test_sampler_applies_the_vae_tiling_choice():
    from types import SimpleNamespace

    from wanfp4.wan.services import _set_vae_tiling

    class VAE:
        tiling = None

        def set_tiling(self, enabled=True):
            self.tiling = enabled

    for plan, tuning, want in ((SimpleNamespace(vae_tiling=True), {"vae_tiling": "off"}, True),   # plan decides on CUDA
                               (SimpleNamespace(vae_tiling=False), {"vae_tiling": "auto"}, False),
                               (None, {"vae_tiling": "on"}, True), (None, {"vae_tiling": "off"}, False),
                               (None, {"vae_tiling": "auto"}, None), (None, None, None)):
        vae = VAE()
        _set_vae_tiling(vae, plan, tuning)
        assert vae.tiling is want, (plan, tuning)


def test_no_resident_estimate_without_cuda():
    from wanfp4.wan.hw_tuning import other_resident_bytes

    assert other_resident_bytes(build_model(TINY_INFINITETALK, device="meta"), "cpu") is None
