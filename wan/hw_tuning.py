"""Auto hardware tuning: predict the VRAM peak of a run and pick blocks_to_swap, the quantization /
attention / batched-CFG fallbacks, VAE tiling and encoder residency (umT5 whole on the GPU or streamed one
block at a time) so every stage of the run stays under a threshold.

`plan_memory` is a pure function of a `GpuInfo` (real: `detect_gpu`, or simulated presets) and the run
settings, so every decision is testable on CPU. Byte counts of weights are exact (quant storage layouts);
activations follow measured coefficients of this pack's block code (wan/memory_sizes.py); the VAE figures
come from kernels_quant_perf.md §2.4. All predictions are *allocated* bytes, the quantity
`torch.cuda.max_memory_allocated` reports; the threshold check adds CUDA_CONTEXT_BYTES on top.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..log import info, warn
from .block_swap import DEFAULT_PIN_FRACTION, system_ram_bytes
from .memory_sizes import (
    ENCODER_BYTES, QUANT_TEMP_PER_WEIGHT, VAE_WEIGHT_BYTES, activation_bytes, t5_streamed_bytes, tokens_for,
    vae_encode_bytes, vae_peak_bytes, weight_sizes)

GiB = 1024**3

CUDA_CONTEXT_BYTES = int(0.75 * GiB)              # CUDA context + allocator slack, not in max_memory_allocated
HOST_RAM_USABLE = 0.8                             # share of RAM swapped weights may take


# ----------------------------------------------------------------------------- GPU description
@dataclass(frozen=True)
class GpuInfo:
    name: str = "CPU"
    cc: tuple[int, int] | None = None            # None: CPU / no CUDA
    total_bytes: int = 0
    free_bytes: int | None = None
    ram_bytes: int | None = None

    @property
    def is_cuda(self) -> bool:
        return self.cc is not None and self.total_bytes > 0

    @property
    def sm(self) -> str:
        return "cpu" if self.cc is None else f"sm_{self.cc[0]}{self.cc[1]}"

    @property
    def fp8_compute(self) -> bool:
        return self.cc is not None and self.cc >= (8, 9)

    def describe(self) -> str:
        ram = "" if self.ram_bytes is None else f", RAM {self.ram_bytes / GiB:.0f} GiB"
        if not self.is_cuda:
            return f"CPU (no CUDA GPU){ram}"
        free = "" if self.free_bytes is None else f", {self.free_bytes / GiB:.1f} GiB free"
        return f"{self.name} ({self.sm}, {self.total_bytes / GiB:.1f} GiB total{free}){ram}"

    @classmethod
    def simulate(cls, preset: str, free_bytes: int | None = None, ram_bytes: int | None = 64 * GiB) -> "GpuInfo":
        """Presets for tests and what-if plans: rtx3060, rtx4090, rtx5090, h100, h200."""
        try:
            name, cc, mib = GPU_PRESETS[preset]
        except KeyError:
            raise ValueError(f"unknown GPU preset {preset!r}; choose one of {', '.join(GPU_PRESETS)}") from None
        return cls(name, cc, mib * 1024**2, free_bytes, ram_bytes)


GPU_PRESETS = {   # name, compute capability, total MiB as nvidia-smi reports it
    "rtx3060": ("NVIDIA GeForce RTX 3060", (8, 6), 12288),
    "rtx4090": ("NVIDIA GeForce RTX 4090", (8, 9), 24564),
    "rtx5090": ("NVIDIA GeForce RTX 5090", (12, 0), 32607),
    "h100": ("NVIDIA H100 80GB HBM3", (9, 0), 81559),
    "h200": ("NVIDIA H200", (9, 0), 143771),
}


def detect_gpu(device=None) -> GpuInfo:
    """The real device: name, compute capability, total and free VRAM, and the system RAM."""
    ram = system_ram_bytes()
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type != "cuda" or not torch.cuda.is_available():
        return GpuInfo(ram_bytes=ram)
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(idx)
    free, total = torch.cuda.mem_get_info(idx)
    return GpuInfo(props.name, (props.major, props.minor), int(total), int(free), ram)


def decide_t5_streaming(streaming: str, base: int, whole: int, streamed: int, limit: int) -> tuple[bool, str]:
    """(stream?, why): umT5 whole on the GPU for the encode when it fits next to `base` (what is already
    there) under `limit` with the CUDA context; otherwise one block at a time. "on"/"off" force it."""
    if streaming not in ("auto", "on", "off"):
        raise ValueError(f"t5_streaming: must be 'auto', 'on' or 'off', got {streaming!r}")
    if streaming != "auto":
        return streaming == "on", f"{'streamed' if streaming == 'on' else 'whole on the GPU'} as requested"
    if base + whole + CUDA_CONTEXT_BYTES <= limit:
        return False, "whole on the GPU for the encode: it fits"
    return True, (f"streamed one block at a time: whole ({whole / GiB:.1f} GiB) does not fit next to "
                  f"{base / GiB:.1f} GiB already there")


def text_encoder_streams(encoder, streaming: str = "auto", gpu: GpuInfo | None = None) -> tuple[bool, str]:
    """The umT5 decision when no whole-run plan made it (the text encode node): whole on the GPU when
    its blocks and activations fit in the VRAM free now (the allocator's cached free blocks count),
    else streamed. On a CPU nothing moves: whole."""
    dev = torch.device(encoder.device)
    if streaming == "auto" and (dev.type != "cuda" or getattr(encoder, "on_device", False)):
        return False, "whole: on the CPU or already on the GPU"
    c, sz = encoder.model.config, encoder.sizes()
    dims = dict(d_model=c.d_model, inner=c.num_heads * c.d_kv, heads=c.num_heads, d_ff=c.d_ff)
    item = torch.empty((), dtype=encoder.dtype).element_size()
    work = t5_streamed_bytes(0, act_bytes=item, **dims)          # activations + prompt rows in/out
    streamed = sz["largest_block"] + sz["norm"] + work
    whole = sz["blocks"] + sz["norm"] + work
    if streaming != "auto":
        return decide_t5_streaming(streaming, 0, whole, streamed, 0)
    gpu = gpu or detect_gpu(dev)
    cached = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev) if torch.cuda.is_available() else 0
    # the CUDA context already exists (free VRAM excludes it): give back the margin decide_t5_streaming adds
    return decide_t5_streaming("auto", 0, whole, streamed, (gpu.free_bytes or 0) + cached + CUDA_CONTEXT_BYTES)


# ----------------------------------------------------------------------------- the plan
@dataclass
class Plan:
    gpu: GpuInfo
    threshold: float
    limit_bytes: int
    quant_mode: str
    attention_mode: str
    batch_cfg: bool
    blocks_to_swap: int
    num_layers: int
    vae_tiling: bool
    dit_leaves_for_decode: bool
    keep_encoders: bool
    fits: bool
    width: int = 0
    height: int = 0
    frames: int = 0
    tokens: int = 0
    batch: int = 1
    weights_resident: int = 0        # resident blocks + outside-block weights + swap slots
    slot_bytes: int = 0
    activations: int = 0
    vae_bytes: int = 0               # VAE weights + decode working set
    encoder_bytes: int = 0           # kept on the GPU during sampling (0 when they leave)
    sampling_peak: int = 0
    decode_peak: int = 0
    predicted_peak: int = 0
    host_bytes: int = 0
    pinned_bytes: int = 0
    t5_streamed: bool = False        # umT5 visits the GPU one block at a time for the encode
    t5_bytes: int = 0                # its GPU bytes during the encode (whole or streamed; 0: not planned)
    stage_peaks: dict = field(default_factory=dict)   # predicted peak per stage: t5, clip, audio, vae_encode, ...
    whole_run_peak: int = 0          # the largest of stage_peaks
    torch_compile: bool = False      # compile the transformer blocks (wan/block_compile.py)
    reasons: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


def _auto_order(gpu: GpuInfo) -> tuple[str, ...]:
    """Quality first among modes that run fast on this GPU (same policy as quant.choose_auto_mode)."""
    if not gpu.is_cuda:
        return ("disabled",)
    return ("fp8_e4m3fn_fast", "fp4_scaled_fast") if gpu.fp8_compute else ("disabled", "fp8_e4m3fn_scaled", "fp4_scaled")


def _compute_path(mode: str, gpu: GpuInfo) -> str:
    from ..quant import Environment, resolve_compute
    env = Environment(cc=gpu.cc, name=gpu.name) if gpu.is_cuda else Environment()
    return resolve_compute(mode, env).path


def plan_memory(gpu: GpuInfo, model_config, quant_mode: str, attention_mode: str, width: int, height: int,
                frames: int, blocks_to_swap: int = 0, threshold: float = 0.5, *, auto: bool = True,
                dtype: torch.dtype = torch.bfloat16, cfg_branches: int = 3, batch_cfg: bool = True,
                offload_embeddings: bool = False, vae_tiling: str = "auto", attention_reference: bool = False,
                encoder_bytes: dict | None = None, window: int = 81, prefetch: int = 1,
                t5_streaming: str = "auto", t5_stream_bytes: int | None = None) -> Plan:
    """Predict the peak and choose the settings (see module doc). With auto=False the user's settings are
    kept and the plan only reports the prediction. quant_mode may be "auto". encoder_bytes: what each
    encoder holds on the GPU while it runs (a "t5" entry: the T5 encode is planned too, whole or streamed
    per t5_streaming auto/on/off; t5_stream_bytes: its streamed share, default umT5-XXL in bf16)."""
    if not 0 < threshold <= 1:
        raise ValueError(f"vram_threshold: must be in (0, 1] (a share of total VRAM), got {threshold}")
    if width % 16 or height % 16 or width <= 0 or height <= 0:
        raise ValueError(f"width/height: must be positive multiples of 16, got {width}x{height}")
    n_layers = model_config.num_layers
    if not 0 <= blocks_to_swap <= n_layers:
        raise ValueError(f"blocks_to_swap: must be between 0 and {n_layers}, got {blocks_to_swap}")
    enc = dict(ENCODER_BYTES if encoder_bytes is None else encoder_bytes)
    lat_f, tokens = tokens_for(model_config, width, height, frames, window)
    win_frames = 4 * (lat_f - 1) + 1
    act_b = torch.empty((), dtype=dtype).element_size()
    limit = int(threshold * gpu.total_bytes)
    common = dict(gpu=gpu, threshold=threshold, limit_bytes=limit, num_layers=n_layers, width=width,
                  height=height, frames=win_frames, tokens=tokens)
    if not gpu.is_cuda:
        mode = "disabled" if quant_mode == "auto" else quant_mode
        plan = Plan(quant_mode=mode, attention_mode=attention_mode, batch_cfg=batch_cfg, blocks_to_swap=0,
                    vae_tiling=vae_tiling == "on", dit_leaves_for_decode=False, keep_encoders=True, fits=True,
                    batch=cfg_branches if batch_cfg else 1, **common)
        plan.notes.append("no CUDA GPU: no VRAM plan, block swap off")
        return plan

    requested = quant_mode
    order = _auto_order(gpu)
    if quant_mode == "auto":
        modes = list(order)
    elif auto:   # the user's mode first, then the smaller ones this GPU runs well
        mine = weight_sizes(model_config, quant_mode, dtype).block_bytes
        modes = [quant_mode] + [m for m in order if weight_sizes(model_config, m, dtype).block_bytes < mine]
    else:
        modes = [quant_mode]
    variants = [(batch_cfg, attention_mode)] + ([(False, attention_mode)] if auto and batch_cfg else [])
    last_resort = [(False, "sdpa")] if auto and attention_mode != "sdpa" else []
    ram_cap = None if gpu.ram_bytes is None else HOST_RAM_USABLE * gpu.ram_bytes

    def evaluate(mode, batched, attn, n):
        ws = weight_sizes(model_config, mode, dtype)
        batch = cfg_branches if batched else 1
        slots = min(prefetch + 1, n) * ws.block_bytes
        other = ws.other_bytes - (ws.embedding_bytes if offload_embeddings else 0)
        resident = other + (n_layers - n) * ws.block_bytes + slots
        act = activation_bytes(model_config, tokens, batch, attn, attention_reference and attn == attention_mode,
                               act_b)
        act += int(QUANT_TEMP_PER_WEIGHT.get(_compute_path(mode, gpu), 6.0) * ws.largest_linear)
        host = n * ws.block_bytes + (ws.embedding_bytes if offload_embeddings else 0)
        sampling = resident + act + VAE_WEIGHT_BYTES
        ok = sampling + CUDA_CONTEXT_BYTES <= limit and (ram_cap is None or host <= ram_cap)
        return ok, dict(resident=resident, slots=slots, act=act, host=host, sampling=sampling, batch=batch)

    def fewest_blocks(mode, batched, attn):
        for n in range(blocks_to_swap, (n_layers if auto else blocks_to_swap) + 1):
            ok, est = evaluate(mode, batched, attn, n)
            if ok:
                return n, est
        return None

    # Per mode (quality first): the variant that swaps the fewest blocks (ties: batched CFG); switching the
    # attention kernel to sdpa only when nothing else fits. Fewer swapped blocks means less PCIe traffic
    # and pinned RAM; running CFG branches one at a time costs little at video token counts.
    chosen = None
    for mode in modes:
        found = [(r[0], i, v, r[1]) for i, v in enumerate(variants) if (r := fewest_blocks(mode, *v)) is not None]
        if not found:
            found = [(r[0], 0, v, r[1]) for v in last_resort if (r := fewest_blocks(mode, *v)) is not None]
        if found:
            n, _, (batched, attn), est = min(found, key=lambda t: (t[0], t[1]))
            chosen = (mode, batched, attn, n, est)
            break
    fits = chosen is not None
    if not fits:   # best effort: the smallest footprint we can offer, reported as not fitting
        mode, (batched, attn) = modes[-1], (last_resort or variants)[-1]
        n = n_layers if auto else blocks_to_swap
        chosen = (mode, batched, attn, n, evaluate(mode, batched, attn, n)[1])
    mode, batched, attn, n, est = chosen
    reasons = {}
    reasons["quant"] = ("as requested" if mode == requested else
                        f"auto: {'quality first, fits' if mode == modes[0] else 'larger modes do not fit'}"
                        if requested == "auto" else f"{requested} does not fit; smaller weights")
    reasons["attention"] = "as requested" if attn == attention_mode else f"{attention_mode} workspace does not fit"
    reasons["batch_cfg"] = ("as requested" if batched == batch_cfg else
                            "CFG branches run one at a time: batched activations do not fit")
    reasons["swap"] = ("as requested" if n == blocks_to_swap else
                       f"raised from {blocks_to_swap}: fewest blocks that keep the peak under the threshold")

    # ---- VAE decode (DiT resident unless it has to leave) and encoders
    resident, sampling = est["resident"], est["sampling"]
    free_for_vae = limit - CUDA_CONTEXT_BYTES - VAE_WEIGHT_BYTES
    untiled, tiled = vae_peak_bytes(width, height, win_frames, False), vae_peak_bytes(width, height, win_frames, True)
    tiles = {"on": [True], "off": [False], "auto": [False, True]}.get(vae_tiling)
    if tiles is None:
        raise ValueError(f"vae_tiling: must be 'auto', 'on' or 'off', got {vae_tiling!r}")
    enc_work = {t: vae_encode_bytes(width, height, win_frames, t) for t in (False, True)}  # the DiT stays for it
    leaves, use_tiles = False, tiles[-1]
    for t in tiles:
        if resident + max(tiled if t else untiled, enc_work[t]) <= free_for_vae:
            use_tiles = t
            break
    else:
        leaves = True   # the DiT leaves VRAM for the decode
        alone = [t for t in tiles
                 if (tiled if t else untiled) <= free_for_vae and resident + enc_work[t] <= free_for_vae]
        use_tiles = alone[0] if alone else tiles[-1]
        fits = fits and bool(alone)
    vae_work = tiled if use_tiles else untiled
    decode_peak = (0 if leaves else resident) + VAE_WEIGHT_BYTES + vae_work
    encode_peak = resident + VAE_WEIGHT_BYTES + enc_work[use_tiles]

    # ---- umT5: whole or streamed for its encode (only when the plan is made before the encoders run)
    t5_whole = enc.pop("t5", None)
    stream_t5, t5_bytes = False, 0
    small = enc.get("wav2vec2", 0)          # wav2vec2 stays on the GPU once loaded (it is small)
    if t5_whole is not None:
        streamed = t5_streamed_bytes() if t5_stream_bytes is None else t5_stream_bytes
        stream_t5, reasons["t5"] = decide_t5_streaming(t5_streaming, resident + VAE_WEIGHT_BYTES + small,
                                                       t5_whole, streamed, limit)
        t5_bytes = streamed if stream_t5 else t5_whole
        if not stream_t5:
            enc["t5"] = t5_whole            # a whole encoder may stay on the GPU below
    # CLIP always leaves before sampling (the sampler re-encodes the resized image, then offloads it)
    enc_total = sum(v for k, v in enc.items() if k != "clip_vision")
    keep_enc = max(sampling, decode_peak, encode_peak) + enc_total + CUDA_CONTEXT_BYTES <= limit
    enc_kept = enc_total if keep_enc else 0
    stages = {}
    base = resident + VAE_WEIGHT_BYTES
    if t5_whole is not None:
        stages["t5"] = base + small + t5_bytes
    if "clip_vision" in enc:                # CLIP stays on the GPU until the sampler re-encodes the image
        stages["clip"] = base + small + enc["clip_vision"]
    if "wav2vec2" in enc:
        stages["audio"] = base + small + enc.get("clip_vision", 0)
    stages.update(vae_encode=encode_peak + enc_kept, sampling=sampling + enc_kept, vae_decode=decode_peak + enc_kept)
    whole_run = max(stages.values())
    fits = fits and whole_run + CUDA_CONTEXT_BYTES <= limit
    reasons["vae"] = ("tiling on as requested" if vae_tiling == "on" else "tiling off as requested"
                      if vae_tiling == "off" else "tiling: untiled decode does not fit" if use_tiles else
                      "untiled decode fits")
    reasons["encoders"] = ("kept on the GPU: room left" if keep_enc else
                           f"leave the GPU after use ({enc_total / GiB:.1f} GiB would not fit next to the DiT)")
    plan = Plan(quant_mode=mode, attention_mode=attn, batch_cfg=batched, blocks_to_swap=n, vae_tiling=use_tiles,
                dit_leaves_for_decode=leaves, keep_encoders=keep_enc, fits=fits, batch=est["batch"],
                weights_resident=resident, slot_bytes=est["slots"], activations=est["act"],
                vae_bytes=VAE_WEIGHT_BYTES + vae_work, encoder_bytes=enc_kept, sampling_peak=sampling + enc_kept,
                decode_peak=decode_peak + enc_kept,
                predicted_peak=max(stages["vae_encode"], stages["sampling"], stages["vae_decode"]),
                host_bytes=est["host"], t5_streamed=stream_t5, t5_bytes=t5_bytes, stage_peaks=stages,
                whole_run_peak=whole_run, reasons=reasons, **common)
    pin_cap = None if gpu.ram_bytes is None else DEFAULT_PIN_FRACTION * gpu.ram_bytes
    plan.pinned_bytes = int(plan.host_bytes if pin_cap is None else min(plan.host_bytes, pin_cap))
    if plan.host_bytes > plan.pinned_bytes:
        plan.notes.append(f"{(plan.host_bytes - plan.pinned_bytes) / GiB:.1f} GiB of swapped weights exceed the "
                          f"pinned cap (50% of RAM): those copies are pageable and slower")
    if gpu.free_bytes is not None and gpu.free_bytes < plan.predicted_peak + CUDA_CONTEXT_BYTES:
        plan.notes.append(f"only {gpu.free_bytes / GiB:.1f} GiB free now: other programs or models hold VRAM")
    if not fits:
        plan.notes.append("does not fit even with every fallback: lower the resolution or the frames per window")
    return plan


def format_plan(plan: Plan) -> str:
    """One readable block: GPU, chosen modes and why, blocks swapped, predicted peak vs the threshold."""
    g = lambda b: f"{b / GiB:.1f} GiB"   # noqa: E731
    r = plan.reasons
    lines = [f"[INFO] Hardware plan: {plan.gpu.describe()}"]
    if not plan.gpu.is_cuda:
        return "\n".join(lines + [f"  {n}" for n in plan.notes])
    lines += [
        f"  shape: {plan.width}x{plan.height}, {plan.frames} frames per window -> {plan.tokens:,} tokens, "
        f"batch {plan.batch}",
        f"  quantization: {plan.quant_mode} ({r.get('quant')})",
        f"  attention: {plan.attention_mode} ({r.get('attention')}); batched CFG: "
        f"{'on' if plan.batch_cfg else 'off'} ({r.get('batch_cfg')})",
        f"  block swap: {plan.blocks_to_swap}/{plan.num_layers} blocks ({r.get('swap')}); host memory "
        f"{g(plan.host_bytes)}, pinned {g(plan.pinned_bytes)}",
        f"  VAE: {r.get('vae')}; DiT {'leaves VRAM for the decode' if plan.dit_leaves_for_decode else 'stays on the GPU during decode'}",
        f"  encoders: {r.get('encoders')}",
    ]
    if "compile" in r:
        lines.append(f"  torch.compile: {'on' if plan.torch_compile else 'off'} ({r['compile']})")
    if "t5" in r:
        lines.append(f"  umT5 encode: {g(plan.t5_bytes)} on the GPU, {r['t5']}")
    names = {"t5": "T5", "clip": "CLIP", "audio": "audio", "vae_encode": "VAE encode", "sampling": "sampling",
             "vae_decode": "VAE decode"}
    lines += [
        "  per stage: " + ", ".join(f"{names.get(k, k)} {g(v)}" for k, v in plan.stage_peaks.items()),
        f"  predicted peak: {g(plan.whole_run_peak)} over the run, {g(plan.predicted_peak)} from the sampler on "
        f"(weights {g(plan.weights_resident)}, activations "
        f"{g(plan.activations)}, VAE {g(plan.vae_bytes)}, encoders {g(plan.encoder_bytes)}) + CUDA context "
        f"{g(CUDA_CONTEXT_BYTES)} vs limit {g(plan.limit_bytes)} ({plan.threshold:.0%} of VRAM): "
        f"{'fits' if plan.fits else 'DOES NOT FIT'}",
    ]
    lines += [f"  note: {n}" for n in plan.notes]
    return "\n".join(lines)


def log_plan(plan: Plan) -> str:
    text = format_plan(plan)
    body = text.removeprefix("[INFO] ")
    return (info if plan.fits else warn)(body)


def measured_vs_predicted(plan: Plan, measured_bytes: int) -> str:
    pred = plan.predicted_peak
    diff = (measured_bytes - pred) / pred * 100 if pred else 0.0
    return (f"Peak VRAM: measured {measured_bytes / GiB:.2f} GiB (max_memory_allocated) vs predicted "
            f"{pred / GiB:.2f} GiB ({diff:+.0f}%)")


# ----------------------------------------------------------------------------- out of memory
def _get(settings, name, default=None):
    return settings.get(name, default) if isinstance(settings, dict) else getattr(settings, name, default)


def oom_advice(plan: Plan, settings) -> str:
    """A clear message with the next setting to try (more blocks swapped, lower resolution, fewer frames)."""
    w, h = int(_get(settings, "width", plan.width)), int(_get(settings, "height", plan.height))
    frames = int(_get(settings, "frames", plan.frames))
    steps = []
    if plan.blocks_to_swap < plan.num_layers:
        more = min(plan.num_layers, max(plan.blocks_to_swap + 10, plan.blocks_to_swap * 2))
        steps.append(f"set blocks_to_swap to {more} (now {plan.blocks_to_swap}) on the hardware tuning node")
    nw, nh = max(16, int(w * 0.8) // 16 * 16), max(16, int(h * 0.8) // 16 * 16)
    if (nw, nh) != (w, h):
        steps.append(f"lower the resolution to {nw}x{nh} (now {w}x{h}, about {1 - nw * nh / (w * h):.0%} fewer tokens)")
    window = min(frames, 81)
    if frames <= 81 and window > 5:
        nf = max(5, 4 * ((window - 1) * 2 // 3 // 4) + 1)
        steps.append(f"use fewer frames: {nf} (now {frames}); longer videos run in 81-frame windows and "
                     f"need no more VRAM than one window")
    if not steps:
        steps.append("free VRAM used by other programs, or use a GPU with more memory")
    msg = (f"CUDA out of memory during sampling (predicted peak {plan.predicted_peak / GiB:.1f} GiB, limit "
           f"{plan.limit_bytes / GiB:.1f} GiB of {plan.gpu.total_bytes / GiB:.1f} GiB). Next setting to try: "
           f"{steps[0]}.")
    if len(steps) > 1:
        msg += " If that is not enough: " + "; then ".join(steps[1:]) + "."
    return msg + " Your inputs and encoded conditions are kept: queue the run again after changing the setting."


_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


@contextmanager
def oom_guard(plan: Plan, settings):
    """Turn torch.OutOfMemoryError into a RuntimeError carrying oom_advice; frees the failed step's memory."""
    try:
        yield
    except _OOM as err:
        first = (str(err).strip().splitlines() or ["CUDA out of memory"])[0]
        err.__traceback__ = None          # drop the frames that hold the failed step's tensors
        del err
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise RuntimeError(f"{oom_advice(plan, settings)} (CUDA: {first})") from None


def other_resident_bytes(model, device) -> int | None:
    """Bytes allocated on the GPU now that are not the DiT's resident weights, its swap slots or the VAE:
    encoders left on the GPU (unload_after off, wav2vec2) and anything else this process holds."""
    dev = torch.device(device) if device is not None else None
    if dev is None or dev.type != "cuda" or not torch.cuda.is_available():
        return None
    tensors = list(model.parameters()) + list(model.buffers())
    dit = sum(t.numel() * t.element_size() for t in tensors if t.device.type == "cuda")
    sw = getattr(model, "wanfp4_block_swap", None)
    slots = sum(s.numel() * s.element_size() for s in sw.slots) if sw is not None else 0
    return max(0, torch.cuda.memory_allocated(dev) - dit - slots - VAE_WEIGHT_BYTES)


def plan_run(model, quant_mode: str, attention_mode: str, settings, tuning: dict | None, device=None,
             gpu: GpuInfo | None = None) -> Plan:
    """Convenience for the sampler: plan for a loaded WanModel, GenerationSettings and the tuning dict.
    On a GPU the encoders' share is what is on the GPU now besides the DiT and the VAE (the encoder
    nodes have already run and unloaded, or not, by the time the sampler plans)."""
    from . import fused
    from .block_compile import COMPILE_PEAK_NOTE, decide_compile

    tuning = tuning or {}
    gpu = gpu or detect_gpu(device)
    other = other_resident_bytes(model, device) if gpu.is_cuda else None
    plan = plan_memory(
        gpu, model.config, quant_mode, attention_mode, int(_get(settings, "width")), int(_get(settings, "height")),
        int(_get(settings, "frames")), int(tuning.get("blocks_to_swap", 0)), float(tuning.get("vram_threshold", 0.5)),
        auto=bool(tuning.get("auto", False)), dtype=getattr(model, "activation_dtype", None) or torch.bfloat16,
        cfg_branches=3 if float(_get(settings, "cfg", 7.0)) != 1.0 else 2,
        batch_cfg=bool(_get(settings, "batch_cfg", True)), offload_embeddings=bool(tuning.get("offload_embeddings", False)),
        vae_tiling=str(tuning.get("vae_tiling", "auto")), window=int(_get(settings, "window", 81)),
        encoder_bytes=None if other is None else {"encoders and other tensors on the GPU now": other})
    plan.torch_compile, plan.reasons["compile"] = decide_compile(
        str(tuning.get("torch_compile", "auto")), gpu.sm if gpu.is_cuda else None, fused.fused_active(),
        bool(tuning.get("auto")))
    if plan.torch_compile:
        plan.notes.append(f"{COMPILE_PEAK_NOTE} (not in the prediction)")
    return plan
