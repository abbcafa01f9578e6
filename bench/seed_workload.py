"""The seed workload at 14B scale with random weights: the example workflow's pipeline, timed per stage.

    python -m wanfp4.bench.seed_workload --json seed.json --md seed.md             # H200: all configurations
    python -m wanfp4.bench.seed_workload --configs bf16 fp8 --diffusers             # a subset (one process)
    python -m wanfp4.bench.seed_workload --tiny --device cpu                        # CPU smoke run
    python -m wanfp4.bench.seed_workload --configs fp4_exp --runs swap --swap 40 --vram-limit-gb 12   # low VRAM

Builds the Wan2.1 14B I2V + InfiniteTalk DiT, umT5-XXL, CLIP ViT-H/14, wav2vec2-base and the Wan VAE
with random weights on the device (bench/seed_models.py) and runs what the nodes run
(wan/services.py: encode_text, encode_image, encode_audio, run_infinitetalk, then write_mp4) on the
example portrait and speech clip: 640x720, 81 frames, 16 fps, 6 steps, cfg 7 + audio cfg 4 (3 model
calls per step, batched), euler, shift 7. Per quantization mode it runs: a first run (the DiT is built
and quantized: "load"), a second run with everything cached, and a run with `--swap` blocks swapped
(the cached model re-placed by block swap, as the loader node does when blocks_to_swap changes).
Reported per run: seconds per stage, total, peak VRAM of the run (max_memory_allocated, reset after
the load), the plan's predicted peak, host RSS; per configuration the ms per model call against one
forward of diffusers' WanTransformer3DModel (bf16, SDPA) of the same config and shape.

`--vram-limit-gb X` is the low-VRAM run: auto hardware tuning with a limit of X*1e9 bytes (the plan
picks CFG batching, VAE tiling, umT5 whole or streamed, whether the DiT leaves for the decode), the
encoders start on the CPU as the file loaders leave them, and the peak (max_memory_allocated) is
reported per stage (T5, CLIP, audio, VAE encode, sampling, VAE decode) next to the plan's prediction.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

CONFIGS = {   # name -> (quantization mode, attention mode); the last is the seed's own choice
    "bf16": ("disabled", "sdpa"),
    "fp8": ("fp8_e4m3fn_fast", "sageattn_3_fp8"),
    "fp8_sa3": ("fp8_e4m3fn_fast", "sageattn_3"),   # 16-bit P.V: faster and more accurate on Hopper (RESULTS.md)
    "fp4_fast": ("fp4_scaled_fast", "sageattn_3_fp8"),
    "fp4_exp": ("fp4_experimental", "sageattn_3_fp4"),
}
POSITIVE = "A person talks to the camera with natural expressions and lip movements, soft studio light."
NEGATIVE = ("bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, "
            "overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete")
GiB = 1024 ** 3


def _host_mem() -> dict:
    out = {}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {"rss_gib": out.get("VmRSS", 0) / GiB, "rss_peak_gib": out.get("VmHWM", 0) / GiB}


@contextlib.contextmanager
def stage(times: dict, name: str, device):
    """Adds the seconds of the `with` body (device work finished) to times[name]."""
    from .dit_forward import sync

    t = time.perf_counter()
    yield
    sync(device)
    times[name] = times.get(name, 0.0) + time.perf_counter() - t


class StagePeaks:
    """max_memory_allocated per stage: `mark(name)` closes the running stage (its peak since the last
    mark), resets the counter and opens `name`. A stage met twice keeps its larger peak. `read`/`reset`
    stand in for the CUDA counter in tests (on a CPU every peak is 0)."""

    def __init__(self, device, read=None, reset=None):
        cuda = device.type == "cuda"
        self.read = read or ((lambda: torch.cuda.max_memory_allocated(device)) if cuda else (lambda: 0))
        self.reset = reset or ((lambda: torch.cuda.reset_peak_memory_stats(device)) if cuda else (lambda: None))
        self.peaks: dict = {}
        self.resident: dict = {}     # bytes allocated when a stage first opened (what earlier stages left)
        self.current = None
        self._allocated = (lambda: torch.cuda.memory_allocated(device)) if cuda else (lambda: 0)

    def mark(self, name) -> None:
        if self.current is not None:
            self.peaks[self.current] = max(self.peaks.get(self.current, 0), self.read())
        if name is not None and name not in self.resident:
            self.resident[name] = self._allocated()
        self.current = name
        self.reset()

    def checkpoint(self) -> int:
        """The running stage's peak since the last mark/checkpoint (kept in the stage's peak), then a reset:
        per-step peaks inside one stage."""
        now = self.read()
        if self.current is not None:
            self.peaks[self.current] = max(self.peaks.get(self.current, 0), now)
        self.reset()
        return now

    def total(self, names=None) -> int:
        """The largest peak of `names` (all stages when None), the running stage included."""
        self.mark(self.current)
        return max((v for k, v in self.peaks.items() if names is None or k in names), default=0)

    @contextlib.contextmanager
    def around(self, obj, method: str, name: str, after: str):
        """obj.method runs as stage `name`, what follows it as `after` (an instance attribute shadows the
        method for the `with` body: how the VAE's encode/decode inside the sampler are told apart)."""
        orig = getattr(obj, method)

        def staged(*args, **kwargs):
            self.mark(name)
            try:
                return orig(*args, **kwargs)
            finally:
                self.mark(after)

        setattr(obj, method, staged)
        try:
            yield
        finally:
            delattr(obj, method)


STAGES = ("t5", "clip", "audio", "vae_encode", "sampling", "vae_decode")
SAMPLER_STAGES = ("vae_encode", "sampling", "vae_decode")
SEED_ENCODERS = ("t5", "clip_vision", "wav2vec2")     # what the seed workflow runs (no vocal isolation)


def low_vram_plan(dm, t5, a, blocks_to_swap: int, threshold: float, gpu=None):
    """The whole-run plan before the encoders run: the T5 decision (whole or streamed) is applied to the
    encoder, a raised block swap to the DiT; the sampler plans again with what is on the GPU then."""
    from ..wan import hw_tuning as hw
    from ..wan import memory_sizes as ms
    from ..wan.block_swap import apply_block_swap

    gpu = gpu or hw.detect_gpu(dm.device)
    plan = hw.plan_memory(gpu, dm.config, dm.quant_mode, dm.attention_modes["self"], a.width, a.height, a.frames,
                          blocks_to_swap, threshold, auto=True, dtype=dm.dtype,
                          encoder_bytes={k: ms.ENCODER_BYTES[k] for k in SEED_ENCODERS}, t5_streaming=a.t5_stream)
    hw.log_plan(plan)
    t5.streaming = "on" if plan.t5_streamed else "off"
    apply_block_swap(dm.model, plan.blocks_to_swap, dm.device)
    return plan


def example_inputs():
    from ..nodes.headless_core import load_audio_file, load_image_file

    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "example_workflows")
    image, _ = load_image_file(os.path.join(root, "wanfp4_example_portrait.png"))
    return image, load_audio_file(os.path.join(root, "wanfp4_example_speech.wav"))


def run_once(name: str, mode: str, attention: str, blocks_to_swap: int, a, image, audio, out_dir: str) -> dict:
    """One pass of the example pipeline; returns the stage timings and memory figures."""
    from . import seed_models as sm
    from .. import attention as attn
    from ..wan import services
    from ..wan.model_cache import MODEL_CACHE
    from ..wan.video_io import write_mp4

    device, dtype, tiny = torch.device(a.device), a.dtype, a.tiny
    cuda = device.type == "cuda"
    limit = a.vram_limit_gb
    tuning = {"blocks_to_swap": blocks_to_swap}
    if limit is not None:
        from ..wan.hw_tuning import detect_gpu
        total = detect_gpu(device).total_bytes      # the plan's limit is a share of this
        tuning.update(auto=True, vram_threshold=min(1.0, limit * 1e9 / total) if total else 1.0)
    times: dict = {}
    loads = MODEL_CACHE.loads
    t_all = time.perf_counter()
    with stage(times, "load", device):
        get = MODEL_CACHE.get_or_load
        model = get(("seed_dit", (), ()) + ((("mode", mode),),), f"model (random-weight DiT, {mode})",
                    lambda: sm.build_dit(mode, device, dtype, tiny))
        t5 = get(("seed_t5", (), ()), "T5", lambda: sm.build_text_encoder(device, dtype, tiny))
        clip = get(("seed_clip", (), ()), "CLIP vision", lambda: sm.build_clip_vision(device, tiny))
        w2v = get(("seed_w2v", (), ()), "wav2vec2", lambda: sm.build_audio_encoder(device, tiny))
        vae = get(("seed_vae", (), ()), "VAE", lambda: sm.build_vae(device, dtype, tiny))
        dm = services.prepare_diffusion_model(model, attention, tuning, device, dtype,
                                              cached=MODEL_CACHE.loads == loads)
        t5.streaming = a.t5_stream
        if limit is not None:   # the encoders start on the CPU, as the file loaders leave them
            t5.offload()
            clip.offload()
    whole_plan = low_vram_plan(dm, t5, a, blocks_to_swap, tuning["vram_threshold"]) if limit and cuda else None
    peaks = StagePeaks(device)
    peaks.mark("t5")
    with stage(times, "t5", device):
        text = services.encode_text(t5, POSITIVE, NEGATIVE, offload=True)
    peaks.mark("clip")
    with stage(times, "clip", device):
        img = services.encode_image(clip, image)
    peaks.mark("audio")
    with stage(times, "audio", device):
        aud = services.encode_audio(w2v, audio, fps=a.fps)
    peaks.mark("sampling")
    rep: dict = {}
    step_alloc: list = []     # per step, GiB: (allocated after it, its peak)

    def after_step(done, total):
        now = torch.cuda.memory_allocated(device) if cuda else 0
        step_alloc.append((now / GiB, peaks.checkpoint() / GiB))
    with stage(times, "sampler", device), peaks.around(vae, "encode", "vae_encode", "sampling"), \
            peaks.around(vae, "decode", "vae_decode", "sampling"), \
            peaks.around(clip, "encode_image", "clip", "sampling"):   # the re-encode of the resized image
        frames, audio_out = services.run_infinitetalk(
            dm, vae, text, img, aud, width=a.width, height=a.height, frames=a.frames, fps=a.fps, steps=a.steps,
            cfg=7.0, audio_cfg=4.0, shift=7.0, scheduler="euler", denoise=1.0, seed=42, motion_frames=9,
            color_correction=1.0, report=rep, measured_peak=lambda: peaks.total(SAMPLER_STAGES),
            on_step=after_step)
    peaks.mark(None)
    with stage(times, "mux", device):
        vid = write_mp4(frames, out_dir, f"seed_{name}", fps=a.fps, crf=19, audio=audio_out)
    total = time.perf_counter() - t_all
    tm = rep["timings"]
    steps = list(tm["steps"])
    stages = dict(times)
    stages["vae_encode"], stages["vae_decode"] = tm["vae_encode"], tm["vae_decode"]
    stages["sampler_other"] = stages.pop("sampler") - tm["vae_encode"] - tm["vae_decode"] - sum(steps)
    calls_per_step = rep["model_calls"] / max(1, len(steps))
    plan = rep.get("plan")
    peak = peaks.total()
    shown = whole_plan or plan
    row = {"config": name, "quant": mode, "attention": attention, "blocks_to_swap": blocks_to_swap,
           "attention_runs": attn.resolve_mode(attention, env=attn.current_env(device), head_dim=dm.config.head_dim,
                                               dtype=dtype, log=False)[0],
           "compute_path": getattr(dm.model, "wanfp4_quant", {}).get("compute_path"),
           "stages_s": stages, "steps_s": steps, "total_s": total, "frames": int(frames.shape[0]),
           "calls_per_step": calls_per_step, "ms_per_call": 1000 * statistics.median(steps) / calls_per_step,
           "peak_vram_gib": peak / GiB, "sampler_peak_gib": (rep.get("peak_bytes") or 0) / GiB,
           "predicted_peak_gib": plan.predicted_peak / GiB if plan is not None else None,
           "vram_limit_gb": limit, "stage_peaks_gib": {k: peaks.peaks.get(k, 0) / GiB for k in STAGES},
           "stage_resident_gib": {k: peaks.resident.get(k, 0) / GiB for k in STAGES},
           "steps_allocated_peak_gib": step_alloc,
           "predicted_stages_gib": {k: v / GiB for k, v in shown.stage_peaks.items()} if shown else None,
           "predicted_whole_gib": shown.whole_run_peak / GiB if shown else None,
           "t5_streamed": bool(whole_plan.t5_streamed) if whole_plan else t5.streaming == "on",
           "plan": _plan_summary(plan) if plan is not None else None,
           "mp4": os.path.basename(vid.path), **_host_mem()}
    del dm, model, frames
    return row


def _plan_summary(plan) -> dict:
    """What the sampler's plan applied (auto tuning): CFG batching, swap, tiling, DiT leaving for the decode."""
    return {"batch_cfg": plan.batch_cfg, "blocks_to_swap": plan.blocks_to_swap, "vae_tiling": plan.vae_tiling,
            "dit_leaves_for_decode": plan.dit_leaves_for_decode, "attention": plan.attention_mode}


def stage_table(r: dict) -> str:
    """Measured peak per stage against the plan's prediction (a low-VRAM run's own table)."""
    pred = r.get("predicted_stages_gib") or {}
    lines = [f"| {r['config']} {r['run']} (limit {r['vram_limit_gb']} GB = {r['vram_limit_gb'] * 1e9 / GiB:.2f} GiB) "
             "| measured GiB | predicted GiB | allocated at stage start GiB |", "|---|---|---|---|"]
    for k in STAGES:
        p = pred.get(k)
        lines.append(f"| {k} | {r['stage_peaks_gib'][k]:.2f} | {'' if p is None else f'{p:.2f}'} | "
                     f"{r.get('stage_resident_gib', {}).get(k, 0):.2f} |")
    whole = r.get("predicted_whole_gib")
    lines.append(f"| **whole run** | **{r['peak_vram_gib']:.2f}** | {'' if whole is None else f'{whole:.2f}'} | |")
    after = r.get("steps_allocated_peak_gib") or []
    if after:
        lines.append("\nper step, GiB allocated after it / its peak: "
                     + ", ".join(f"{a:.2f} / {p:.2f}" for a, p in after))
    return "\n".join(lines)


def _fmt_row(r: dict) -> str:
    s = r["stages_s"]
    pred = "" if r["predicted_peak_gib"] is None else f"{r['predicted_peak_gib']:.1f}"
    return (f"| {r['config']} | {r['run']} | {r['blocks_to_swap']} | {s['load']:.2f} | {s['t5']:.2f} | {s['clip']:.2f} | "
            f"{s['audio']:.2f} | {s['vae_encode']:.2f} | {' / '.join(f'{x:.2f}' for x in r['steps_s'])} | "
            f"{s['vae_decode']:.2f} | {s['sampler_other']:.2f} | {s['mux']:.2f} | **{r['total_s']:.1f}** | "
            f"{r['ms_per_call']:.0f} | {r.get('vs_diffusers', '')} | {r['peak_vram_gib']:.2f} | {pred} | "
            f"{r['rss_peak_gib']:.1f} |")


HEADER = ("| config | run | swap | load | T5 | CLIP | audio | VAE enc | steps (s each) | VAE dec | other | mux | total s | "
          "ms/call | vs diffusers | peak VRAM GiB | predicted GiB | host RSS peak GiB |\n" + "|---" * 18 + "|")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--swap", type=int, default=40, help="blocks swapped in the swap run (-1: no swap run)")
    p.add_argument("--no-second", action="store_true", help="skip the cached second run")
    p.add_argument("--second-for", nargs="+", default=None, choices=list(CONFIGS),
                   help="run the cached second run only for these configurations")
    p.add_argument("--diffusers", action="store_true", help="time diffusers' WanTransformer3DModel too")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--fps", type=float, default=16.0)
    p.add_argument("--no-fused", action="store_true", help="PyTorch element-wise path instead of the fused kernels")
    p.add_argument("--vram-limit-gb", type=float, default=None,
                   help="low-VRAM run: auto tuning under this many GB (1e9 bytes); peaks reported per stage")
    p.add_argument("--t5-stream", default="auto", choices=("auto", "on", "off"),
                   help="umT5 one block at a time on the GPU (auto: the plan decides)")
    p.add_argument("--runs", nargs="+", default=None, choices=("first", "cached", "swap"),
                   help="only these runs (e.g. --runs swap: build the DiT and run it with --swap blocks swapped)")
    p.add_argument("--tiny", action="store_true", help="small models of the same structure (CPU smoke run)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="folder for the MP4s (default: a temporary folder)")
    p.add_argument("--json", default=None)
    p.add_argument("--md", default=None)
    a = p.parse_args(argv)
    a.dtype = torch.bfloat16 if torch.device(a.device).type == "cuda" else torch.float32
    out_dir = a.out or tempfile.mkdtemp(prefix="wanfp4_seed_")
    from ..wan.fused import fused_enabled, set_fused
    if a.no_fused:
        set_fused(False)
    from . import seed_models as sm
    from .dit_forward import time_diffusers_forward
    from ..wan.model_cache import MODEL_CACHE

    env = {"python": platform.python_version(), "torch": torch.__version__, "argv": sys.argv[1:],
           "fused": fused_enabled()}
    if torch.device(a.device).type == "cuda":
        import triton
        env.update(gpu=torch.cuda.get_device_name(a.device), triton=triton.__version__,
                   cuda=torch.version.cuda, vram_gib=torch.cuda.get_device_properties(a.device).total_memory / GiB)
    result = {"env": env, "runs": [], "diffusers": None}

    def save():
        if a.json:
            with open(a.json, "w") as fh:
                json.dump(result, fh, indent=1, default=str)

    cfg = sm.dit_config(a.tiny)
    if a.diffusers:
        d = time_diffusers_forward(cfg, a.width, a.height, a.frames, a.device, dtype=a.dtype)
        result["diffusers"] = d
        print(f"[INFO] diffusers WanTransformer3DModel {d['version']}: {d['ms']:.0f} ms per forward "
              f"(first {d['first_ms']:.0f} ms, peak {d['peak_bytes'] / GiB:.1f} GiB)", flush=True)
        save()
    image, audio = example_inputs()
    for name in a.configs:
        mode, attention = CONFIGS[name]
        second = not a.no_second and (a.second_for is None or name in a.second_for)
        plan = [("first", 0)] + ([("cached", 0)] if second else []) + ([("swap", a.swap)] if a.swap >= 0 else [])
        plan = [(run, n) for run, n in plan if a.runs is None or run in a.runs]
        for run, n in plan:
            print(f"[INFO] ===== seed workload: {name} ({mode} + {attention}), {run} run, {n} blocks swapped",
                  flush=True)
            try:
                row = run_once(name, mode, attention, min(n, cfg.num_layers), a, image, audio, out_dir)
            except Exception as err:   # keep the other configurations' results
                row = {"config": name, "run": run, "error": f"{type(err).__name__}: {err}"}
                print(f"[WARN] {name} {run}: {row['error']}", flush=True)
                result["runs"].append(row)
                save()
                break
            row["run"] = run
            if result["diffusers"]:
                row["vs_diffusers"] = f"{result['diffusers']['ms'] / row['ms_per_call']:.2f}x"
            result["runs"].append(row)
            print("[INFO] " + json.dumps({k: row[k] for k in ("config", "run", "total_s", "ms_per_call",
                                                               "peak_vram_gib", "predicted_peak_gib")}), flush=True)
            if a.vram_limit_gb is not None:
                print(stage_table(row), flush=True)
            save()
        gc.collect()
        if torch.device(a.device).type == "cuda":
            torch.cuda.empty_cache()
    MODEL_CACHE.clear()
    ok = [r for r in result["runs"] if "error" not in r]
    table = HEADER + "\n" + "\n".join(_fmt_row(r) for r in ok)
    if a.vram_limit_gb is not None:
        table += "\n\n" + "\n\n".join(stage_table(r) for r in ok)
    print(table)
    if a.md:
        with open(a.md, "w") as fh:
            fh.write(table + "\n")
    save()
    return result


if __name__ == "__main__":
    main()
