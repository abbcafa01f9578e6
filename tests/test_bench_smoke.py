"""The benchmark scripts run end to end on the CPU with small models of the same structure (--tiny), so
the GPU runs recorded in bench/RESULTS.md can be repeated: every stage is timed, the MP4 is written and
reads back, the cached run loads nothing, and diffusers' forward runs for the peer baseline."""
import json

import pytest
import torch

from wanfp4.bench import seed_workload
from wanfp4.bench.profile_dit import kind_of
from wanfp4.wan.model_cache import MODEL_CACHE
from wanfp4.wan.video_io import probe_mp4


def test_seed_workload_tiny_on_cpu(tmp_path):
    pytest.importorskip("diffusers")
    out = tmp_path / "mp4"
    res = seed_workload.main(["--tiny", "--device", "cpu", "--width", "64", "--height", "64", "--frames", "9",
                              "--steps", "2", "--configs", "fp8", "--diffusers", "--out", str(out),
                              "--json", str(tmp_path / "r.json"), "--md", str(tmp_path / "r.md")])
    runs = {r["run"]: r for r in res["runs"]}
    assert set(runs) == {"first", "cached", "swap"} and not any("error" in r for r in res["runs"])
    for r in runs.values():
        assert set(r["stages_s"]) >= {"load", "t5", "clip", "audio", "vae_encode", "vae_decode", "mux"}
        assert len(r["steps_s"]) == 2 and r["calls_per_step"] == 3 and r["frames"] == 9
        info = probe_mp4(str(out / r["mp4"]))
        assert info["frames"] == 9 and info["audio_codec"] == "aac"
    assert runs["swap"]["blocks_to_swap"] == 2                 # capped at the tiny model's 2 blocks
    assert runs["cached"]["stages_s"]["load"] < runs["first"]["stages_s"]["load"]
    assert res["diffusers"]["ms"] > 0 and len(MODEL_CACHE) == 0
    saved = json.loads((tmp_path / "r.json").read_text())
    assert len(saved["runs"]) == 3 and "| fp8 | cached |" in (tmp_path / "r.md").read_text()


def test_profile_kinds():
    assert kind_of("attn_int8_kernel") == "attention"
    assert kind_of("nvjet_sm90_tst_256x144_64x4_1x2_h_bz_coopA_bias_TNT") == "gemm"
    assert kind_of("quant_fp8_rows_kernel") == "quantize"
    assert kind_of("void at::native::vectorized_layer_norm_kernel<float>") == "elementwise/norm/rope"


def test_block_swap_bench_tiny_on_cpu(capsys):
    from wanfp4.bench import block_swap

    block_swap.main(["--tiny", "--device", "cpu", "--blocks", "2", "--iters", "1"])
    out = capsys.readouterr().out
    assert "resident:" in out and "swap all:" in out and "overhead" in out


def test_memory_probe_records_every_block_phase():
    """bench/memory_dit.py's hooks on a tiny block, with a counter that grows per call: one row per
    phase (audio included), each the peak above the block's entry, and no hooks left behind."""
    from wanfp4.bench.dit_forward import dit_inputs
    from wanfp4.bench.memory_dit import _probe
    from wanfp4.bench.seed_models import build_dit, dit_config

    model = build_dit("disabled", "cpu", torch.float32, tiny=True).eval()
    ticks = {"n": 0}
    counter = (lambda: 100, lambda: ticks.__setitem__("n", ticks["n"] + 10) or 100 + ticks["n"], lambda: None)
    rows: dict = {}
    hooks = _probe(model.blocks[0], "cpu", rows, counter)
    args, kw = dit_inputs(dit_config(True), 1, 64, 64, 9, "cpu", torch.float32)
    with torch.no_grad():
        model(*args, **kw)
    for h in hooks:
        h.remove()
    assert list(rows) == ["self_attn", "cross_attn", "audio_cross_attn", "ffn", "residual/end"]
    assert all(v > 0 for v in rows.values()) and rows["residual/end"] > rows["self_attn"]
    assert not model.blocks[0]._forward_hooks and not model.blocks[0]._forward_pre_hooks


def test_tune_configs_parse_and_fill_defaults():
    from wanfp4.attention.triton_sageattn import _config
    from wanfp4.bench.kernels import parse_tune_configs

    assert parse_tune_configs(None) is None
    got = parse_tune_configs(["16:128,64,4,3", "fp8:128,128,8,3,1", "16:128,128,8,3,0,1"])
    assert got == {False: [(128, 64, 4, 3), (128, 128, 8, 3, 0, 1)], True: [(128, 128, 8, 3, 1)]}
    assert _config((128, 64, 4, 3)) == (128, 64, 4, 3, False, False, 0)
    assert _config((128, 128, 8, 3, 1)) == (128, 128, 8, 3, True, False, 0)
    assert _config((128, 128, 8, 3, 0, 1, 128)) == (128, 128, 8, 3, False, True, 128)
    with pytest.raises(SystemExit, match="PV 16 or fp8"):
        parse_tune_configs(["bf16:128,64,4,3"])


def test_self_attention_skipped_runs_only_the_cross_attentions(monkeypatch):
    """The floor measurement of bench/kernels.py: under the context every self-attention returns q and
    never reaches a kernel, every cross-attention still does, and the DiT's own function comes back after."""
    from wanfp4.bench.dit_forward import dit_inputs
    from wanfp4.bench.kernels import self_attention_skipped
    from wanfp4.bench.seed_models import build_dit, dit_config
    from wanfp4.wan import blocks

    model = build_dit("disabled", "cpu", torch.float32, tiny=True).eval()
    args, kw = dit_inputs(dit_config(True), 1, 64, 64, 9, "cpu", torch.float32)
    seen = []
    real = blocks.attention

    def counting(q, k, v, mode="sdpa", **kwargs):
        seen.append((q.shape[1], k.shape[1]))
        return real(q, k, v, mode, **kwargs)

    monkeypatch.setattr(blocks, "attention", counting)
    with torch.no_grad():
        full = model(*args, **kw)
        self_calls = [s for s in seen if s[0] == s[1]]
        assert len(self_calls) == len(model.blocks)
        seen.clear()
        with self_attention_skipped(min_tokens=0):
            skipped = model(*args, **kw)
        assert seen and all(lq != lk for lq, lk in seen)
    assert blocks.attention is counting
    assert not torch.allclose(full, skipped)
