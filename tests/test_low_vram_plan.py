"""The whole-run low-VRAM plan (issue 7: fp4 + 40 blocks swapped under 12 GB): umT5 streamed when it
does not fit next to the DiT, a predicted peak per stage, and the seed workload's `--vram-limit-gb`
run (its per-stage peak tracker, the plan applied to the encoder, the CPU smoke run)."""
import json
from types import SimpleNamespace

import pytest
import torch

from wanfp4.bench import seed_workload
from wanfp4.bench.seed_workload import STAGES, StagePeaks, low_vram_plan
from wanfp4.wan import hw_tuning as hw
from wanfp4.wan import memory_sizes as ms
from wanfp4.wan.config import INFINITETALK_14B
from wanfp4.wan.hw_tuning import GiB, GpuInfo, format_plan, plan_memory

H200 = GpuInfo.simulate("h200", ram_bytes=126 * GiB)
SEED_ENC = {k: ms.ENCODER_BYTES[k] for k in ("t5", "clip_vision", "wav2vec2")}


def seed_plan(limit_bytes=12e9, **kw):
    kw = {"encoder_bytes": SEED_ENC, **kw}
    return plan_memory(H200, INFINITETALK_14B, "fp4_experimental", "sageattn_3_fp4", 640, 720, 81, 40,
                       limit_bytes / H200.total_bytes, **kw)


def test_12gb_plan_streams_umt5_and_runs_cfg_branches_one_at_a_time():
    p = seed_plan()
    assert p.fits and p.t5_streamed and not p.batch_cfg and p.blocks_to_swap == 40
    assert p.t5_bytes == ms.t5_streamed_bytes() < GiB
    assert list(p.stage_peaks) == ["t5", "clip", "audio", "vae_encode", "sampling", "vae_decode"]
    assert p.whole_run_peak == max(p.stage_peaks.values())
    assert p.whole_run_peak + hw.CUDA_CONTEXT_BYTES <= p.limit_bytes <= 12e9
    # the T5 stage is what is already there (resident DiT share, VAE, wav2vec2) plus one streamed block
    base = p.weights_resident + ms.VAE_WEIGHT_BYTES + SEED_ENC["wav2vec2"]
    assert p.stage_peaks["t5"] == base + p.t5_bytes
    assert p.stage_peaks["sampling"] == p.sampling_peak and p.predicted_peak == max(
        p.stage_peaks[k] for k in ("vae_encode", "sampling", "vae_decode"))
    text = format_plan(p)
    assert "umT5 encode: 0.6 GiB on the GPU, streamed one block at a time" in text and "per stage: T5 " in text
    assert "over the run" in text and "fits" in text


def test_roomy_plan_keeps_umt5_whole_and_the_choice_can_be_forced():
    roomy = seed_plan(0.5 * H200.total_bytes)
    assert not roomy.t5_streamed and roomy.t5_bytes == SEED_ENC["t5"] and roomy.reasons["t5"].startswith("whole")
    forced = seed_plan(0.5 * H200.total_bytes, t5_streaming="on")
    assert forced.t5_streamed and forced.reasons["t5"] == "streamed as requested"
    assert forced.stage_peaks["t5"] < roomy.stage_peaks["t5"]
    whole = seed_plan(t5_streaming="off")                        # whole umT5 does not fit 12 GB
    assert not whole.t5_streamed and not whole.fits
    with pytest.raises(ValueError, match="t5_streaming"):
        seed_plan(t5_streaming="maybe")


def test_sampler_time_plan_has_no_encoder_stages():
    p = seed_plan(encoder_bytes={"encoders and other tensors on the GPU now": 400_000_000})
    assert list(p.stage_peaks) == ["vae_encode", "sampling", "vae_decode"] and "t5" not in p.reasons
    assert "umT5" not in format_plan(p)


def test_vae_encode_stage_keeps_the_dit_and_can_force_tiling():
    p = seed_plan()
    enc = ms.vae_encode_bytes(640, 720, 81, p.vae_tiling)
    assert p.stage_peaks["vae_encode"] == p.weights_resident + ms.VAE_WEIGHT_BYTES + enc + p.encoder_bytes
    assert ms.vae_encode_bytes(640, 720, 81, True) < ms.vae_encode_bytes(640, 720, 81, False)


class FakeCounter:
    """Stands in for the CUDA allocator's peak counter."""

    def __init__(self):
        self.cur = self.peak = 0

    def alloc(self, n):
        self.cur += n
        self.peak = max(self.peak, self.cur)

    def free(self, n):
        self.cur -= n

    def reset(self):
        self.peak = self.cur


def test_stage_peaks_attribute_each_stage_and_restore_wrapped_methods():
    c = FakeCounter()
    peaks = StagePeaks(torch.device("cpu"), read=lambda: c.peak, reset=c.reset)

    class VAE:
        def encode(self, n):
            c.alloc(n)
            c.free(n)
            return n

    vae = VAE()
    peaks.mark("t5")
    c.alloc(10)
    c.free(10)
    peaks.mark("sampling")
    c.alloc(3)                       # stays allocated
    with peaks.around(vae, "encode", "vae_encode", "sampling"):
        assert vae.encode(50) == 50
        c.alloc(20)
        c.free(20)
    assert "encode" not in vars(vae)
    assert peaks.total(["vae_encode", "sampling"]) == 53
    peaks.mark(None)
    assert peaks.peaks == {"t5": 10, "sampling": 23, "vae_encode": 53} and peaks.total() == 53
    assert StagePeaks(torch.device("cpu")).total() == 0          # CPU: no counter


def test_low_vram_plan_applies_the_umt5_decision():
    from wanfp4.bench import seed_models as sm
    from wanfp4.wan.services import prepare_diffusion_model

    dm = prepare_diffusion_model(sm.build_dit("disabled", "cpu", torch.float32, tiny=True), "sdpa", None, "cpu",
                                 torch.float32)
    t5 = sm.build_text_encoder("cpu", torch.float32, tiny=True)
    a = SimpleNamespace(width=64, height=64, frames=9, t5_stream="auto")
    plan = low_vram_plan(dm, t5, a, 0, 2e9 / H200.total_bytes, gpu=H200)
    assert plan.t5_streamed and t5.streaming == "on" and "t5" in plan.stage_peaks
    plan = low_vram_plan(dm, t5, a, 0, 0.5, gpu=H200)
    assert not plan.t5_streamed and t5.streaming == "off"


def test_seed_workload_low_vram_flag_on_cpu(tmp_path):
    res = seed_workload.main(["--tiny", "--device", "cpu", "--width", "64", "--height", "64", "--frames", "9",
                              "--steps", "1", "--configs", "fp8", "--runs", "swap", "--vram-limit-gb", "12",
                              "--t5-stream", "on", "--out", str(tmp_path), "--json", str(tmp_path / "r.json"),
                              "--md", str(tmp_path / "r.md")])
    (row,) = res["runs"]
    assert "error" not in row and row["run"] == "swap" and row["vram_limit_gb"] == 12
    assert set(row["stage_peaks_gib"]) == set(STAGES) and row["t5_streamed"]
    assert row["predicted_stages_gib"] is None          # no CUDA: no plan
    md = (tmp_path / "r.md").read_text()
    assert "| **whole run** |" in md and "limit 12.0 GB = 11.18 GiB" in md
    assert json.loads((tmp_path / "r.json").read_text())["runs"][0]["t5_streamed"]
