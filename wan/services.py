"""What the nodes, the headless runner and the benchmarks call: cached loads and the encode /
sample steps, one function each. The heavier modules are imported inside the functions so that
importing the pack stays fast and a missing optional package only affects its own feature.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

import torch

from ..log import info, warn
from .hw_tuning import log_plan, measured_vs_predicted, oom_guard, plan_run, text_encoder_streams
from .model_cache import MODEL_CACHE, make_key

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def dtype_of(precision: str) -> torch.dtype:
    try:
        return _DTYPES[precision]
    except KeyError:
        raise ValueError(f"precision: {precision!r} is not one of {', '.join(_DTYPES)}") from None


def _cpu_dtype(dtype: torch.dtype, device: torch.device, what: str) -> torch.dtype:
    """CPUs run bf16/fp16 convolutions and matmuls far slower than fp32: compute in fp32 there."""
    if device.type == "cpu" and dtype != torch.float32:
        info(f"{what}: running on the CPU, computing in fp32 instead of {str(dtype).replace('torch.', '')} (faster there)")
        return torch.float32
    return dtype


def _device(device) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class DiffusionModel:
    """A loaded, quantized DiT plus what was decided for it (shown in logs, used by the sampler)."""

    model: torch.nn.Module
    quant_mode: str
    attention_modes: dict
    device: torch.device
    dtype: torch.dtype
    tuning: dict | None = None
    notes: list = field(default_factory=list)

    @property
    def config(self):
        return self.model.config


# ----------------------------------------------------------------------------- loads
def load_diffusion_model(path: str, patch_path: str | None, precision: str = "bf16", *, quant_mode: str = "auto",
                         keep_audio: bool = False, attention_mode: str = "auto", loras=(), tuning: dict | None = None,
                         device=None) -> DiffusionModel:
    """Transformer (+ InfiniteTalk patch) -> LoRAs merged -> quantized -> on the device, cached."""
    from .. import quant
    from . import loader

    device = _device(device)
    dtype = _cpu_dtype(dtype_of(precision), device, "model")
    lora_list = [(l["path"], float(l["strength"])) for l in loras]
    keep = tuple(quant.KEEP_IN_BASE_PRECISION) + (("audio_cross_attn",) if keep_audio else ())
    key = make_key("diffusion_model", [path, patch_path, *[p for p, _ in lora_list]], precision=precision,
                   quant=quant_mode, keep=keep, loras=[s for _, s in lora_list], device=str(device))

    def _load():
        def transform(m):
            return quant.quantize_model(m, quant_mode, keep=keep, compute_dtype=dtype, device=device)

        if not lora_list:  # quantize on the meta model: the base-precision weights never exist in full
            model = loader.load_transformer(path, audio_path=patch_path, dtype=dtype, device="cpu",
                                            module_transform=transform)
        else:  # LoRAs merge into base-precision weights first, then quantize once (one rounding)
            model = loader.load_transformer(path, audio_path=patch_path, dtype=dtype, device="cpu", loras=lora_list)
            transform(model)
        return model.eval()  # stays on the CPU here: block swap decides what goes to the GPU

    loads = MODEL_CACHE.loads
    model = MODEL_CACHE.get_or_load(key, "model", _load)
    return prepare_diffusion_model(model, attention_mode, tuning, device, dtype, cached=MODEL_CACHE.loads == loads)


def prepare_diffusion_model(model: torch.nn.Module, attention_mode: str = "auto", tuning: dict | None = None,
                            device=None, dtype: torch.dtype = torch.bfloat16, cached: bool = False) -> DiffusionModel:
    """A loaded (quantized) WanModel -> placed for the run: block swap, GPU compute path, attention modes.
    Shared by the loader node and the benchmarks that build models in memory."""
    from .. import attention as attn
    from .. import quant
    from .block_swap import apply_block_swap

    device = _device(device)
    t = tuning or {}
    apply_block_swap(model, int(t.get("blocks_to_swap", 0)), device,
                     offload_embeddings=bool(t.get("offload_embeddings", False)))
    if device.type == "cuda":
        quant.set_compute_path(model, quant.detect_environment(device))
    mode = getattr(model, "wanfp4_quant", {}).get("mode", "disabled")
    if cached and mode != "disabled":  # cached: repeat the mode line the load printed
        env = quant.detect_environment(device)
        quant.capabilities.log_plan(quant.resolve_compute(mode, env), env)
    modes = attn.modes_for_model(attention_mode)
    model.set_attention_modes(self_attn=modes["self"], cross_attn=modes["cross"], audio_attn=modes["audio"])
    attn.reset_announcements()  # every run shows its attention choice (and any fallback) once
    attn.resolve_mode(modes["self"], env=attn.current_env(device), head_dim=model.config.head_dim, dtype=dtype)
    return DiffusionModel(model, mode, modes, device, dtype, tuning)


def load_vae(path: str, precision: str = "bf16", device=None):
    from . import loader

    device = _device(device)
    dtype = _cpu_dtype(dtype_of(precision), device, "VAE")
    key = make_key("vae", [path], precision=precision, device=str(device))
    return MODEL_CACHE.get_or_load(key, "VAE", lambda: loader.load_vae(path, dtype=dtype, device=device).eval())


def load_text_encoder(path: str, precision: str = "bf16", device=None):
    from .text_encoder import load_text_encoder as _load

    device = _device(device)
    key = make_key("t5", [path], precision=precision)
    return MODEL_CACHE.get_or_load(key, "T5", lambda: _load(path, precision=precision, device=device))


def load_clip_vision(path: str, device=None):
    from .clip_vision import load_clip_vision as _load

    device = _device(device)
    key = make_key("clip_vision", [path])
    return MODEL_CACHE.get_or_load(key, "CLIP vision", lambda: _load(path, device=device))


def load_audio_encoder(path: str, device=None):
    from .audio_encoder import load_audio_encoder as _load

    # wav2vec2 is small; InfiniteTalk runs it in fp32 (the features feed every window).
    device = _device(device)
    key = make_key("wav2vec2", [path], device=str(device))
    return MODEL_CACHE.get_or_load(key, "wav2vec2", lambda: _load(path, device=device, dtype=torch.float32))


# ----------------------------------------------------------------------------- encodes
def encode_text(text_encoder, positive: str, negative: str, offload: bool = True, stream: bool | None = None) -> dict:
    """Both prompts in one call. stream: umT5 one block at a time on the GPU (None: the encoder's
    `streaming` setting, "auto" = whole when it fits in the free VRAM, hw_tuning.text_encoder_streams)."""
    if stream is None:
        stream, why = text_encoder_streams(text_encoder, getattr(text_encoder, "streaming", "auto"))
        if stream:
            info(f"umT5 text encoder: {why}")
    with torch.no_grad():
        feats, lengths = text_encoder.encode([positive, negative], stream=stream)
    if offload:
        text_encoder.offload()
    return {"positive": feats[0:1].cpu(), "negative": feats[1:2].cpu(), "lengths": list(lengths)}


def encode_image(clip_vision, image: torch.Tensor) -> dict:
    if image.ndim == 4:
        image = image[:1]
    with torch.no_grad():
        clip = clip_vision.encode_image(image)
    # The encoder travels along: the sampler re-encodes the start image after its resize/crop to the
    # video size, which is what InfiniteTalk conditions on.
    return {"clip": clip[:1].cpu(), "image": image[0].cpu(), "encoder": clip_vision}


def encode_audio(audio_encoder, audio: dict, fps: float, normalize_loudness: bool = True) -> dict:
    from .audio_input import audio_from_comfy

    wave, sr = audio_from_comfy(audio)
    with torch.no_grad():
        feats = audio_encoder.encode_audio(audio, fps=fps, normalize_loudness=normalize_loudness)
    return {"features": feats.cpu(), "fps": float(fps), "audio": {"waveform": wave, "sample_rate": sr}}


def isolate_vocals(path: str, audio: dict, device=None) -> dict:
    from .vocal_separation import load_vocal_separator

    device = _device(device)
    key = make_key("vocals", [path], device=str(device))
    sep = MODEL_CACHE.get_or_load(key, "vocal isolation model", lambda: load_vocal_separator(path, device=device))
    with torch.no_grad():
        return sep.isolate_vocals(audio)


# ----------------------------------------------------------------------------- sampling
def trim_audio(audio: dict, seconds: float) -> dict:
    wav = audio["waveform"]
    keep = int(round(seconds * audio["sample_rate"]))
    return {"waveform": wav[..., :keep].clone(), "sample_rate": audio["sample_rate"]}


def _plan_and_apply(model: DiffusionModel, settings):
    """Auto hardware tuning on CUDA: log the plan; with `auto` on, apply its block swap / CFG batching.
    The plan's torch.compile choice applies either way (it already weighs the tuning node's setting)."""
    from .block_compile import compile_blocks
    from .block_swap import apply_block_swap

    tuning = model.tuning or {}
    plan = plan_run(model.model, model.quant_mode, model.attention_modes["self"], settings, tuning, model.device)
    log_plan(plan)
    if tuning.get("auto"):
        settings.batch_cfg = plan.batch_cfg
        apply_block_swap(model.model, plan.blocks_to_swap, model.device,
                         offload_embeddings=bool(tuning.get("offload_embeddings", False)))
        if plan.attention_mode != model.attention_modes["self"]:
            model.model.set_attention_modes(self_attn=plan.attention_mode)
    compile_blocks(model.model, plan.torch_compile)
    torch.cuda.reset_peak_memory_stats(model.device)
    return plan


def _set_vae_tiling(vae, plan, tuning: dict | None) -> None:
    """The plan's tiling choice on CUDA; on other devices the tuning node's explicit on/off."""
    if not hasattr(vae, "set_tiling"):
        return
    choice = str((tuning or {}).get("vae_tiling", "auto"))
    if plan is not None:
        vae.set_tiling(bool(plan.vae_tiling))
    elif choice in ("on", "off"):
        vae.set_tiling(choice == "on")


def _decode_hooks(model: DiffusionModel):
    """When the DiT and the VAE decode do not fit together: every block goes to host memory for the
    decode (block swap of all layers), and the planned swap comes back for the next window."""
    from .block_swap import apply_block_swap

    t = model.tuning or {}
    n_all, planned = len(model.model.blocks), getattr(model.model, "wanfp4_block_swap", None)
    n_planned = planned.blocks_to_swap if planned is not None else 0
    emb = bool(t.get("offload_embeddings", False))

    def leave():
        apply_block_swap(model.model, n_all, model.device, offload_embeddings=True)
        torch.cuda.empty_cache()

    def back():
        apply_block_swap(model.model, n_planned, model.device, offload_embeddings=emb)

    info("DiT leaves VRAM for each VAE decode (the plan found no room for both)")
    return leave, back


def run_infinitetalk(model: DiffusionModel, vae, text_embeds: dict, image_embeds: dict, audio_embeds: dict, *,
                     width: int, height: int, frames: int, fps: float, steps: int, cfg: float, audio_cfg: float,
                     shift: float, scheduler: str, denoise: float, seed: int, motion_frames: int,
                     color_correction: float, device=None, on_step=None, check_interrupt=None,
                     report: dict | None = None, measured_peak=None):
    """Validate the settings, run the streaming sampler, return (IMAGE frames, AUDIO trimmed to the video).
    `report` (optional dict) receives the per-stage timings, the memory plan and the measured peak.
    `measured_peak()` reads the sampler's peak bytes (default max_memory_allocated since the plan; the
    benchmark's per-stage tracker resets that counter between stages and passes its own total)."""
    from .pipeline import GenerationSettings, generate, round_to_4k1

    if abs(audio_embeds["fps"] - fps) > 1e-6:
        raise ValueError(
            f"fps: the sampler runs at {fps} fps but the audio was encoded at {audio_embeds['fps']} fps; "
            f"set the same fps on both nodes")
    if frames < 1:
        raise ValueError(f"frames: must be at least 1, got {frames}")
    if (frames - 1) % 4:
        fixed = round_to_4k1(frames)
        warn(f"frames: {frames} is not 4k+1 (Wan's VAE needs 1, 5, 9, ..., 81, ...); using {fixed}")
        frames = fixed
    for name, v in (("width", width), ("height", height)):
        if v % 16:
            raise ValueError(f"{name}: {v} is not a multiple of 16; try {max(16, v // 16 * 16)}")
    settings = GenerationSettings(
        width=width, height=height, frames=frames, fps=fps, steps=steps, cfg=cfg, audio_cfg=audio_cfg, shift=shift,
        scheduler=scheduler, denoise=denoise, seed=seed, motion_frames=motion_frames,
        color_correction=color_correction,
    )
    clip = image_embeds["clip"]
    if image_embeds.get("encoder") is not None:
        from .pipeline import prepare_reference

        with torch.no_grad():
            ref = prepare_reference(image_embeds["image"], width, height)
            clip = image_embeds["encoder"].encode_image(ref[None]).cpu()
            image_embeds["encoder"].offload()
    plan = _plan_and_apply(model, settings) if model.device.type == "cuda" else None
    _set_vae_tiling(vae, plan, model.tuning)
    hooks = _decode_hooks(model) if plan is not None and plan.dit_leaves_for_decode else None
    with (oom_guard(plan, settings) if plan is not None else contextlib.nullcontext()):
        result = generate(
            model.model, vae, text_embeds["positive"], text_embeds["negative"], clip,
            image_embeds["image"], audio_embeds["features"], settings, device=model.device,
            on_step=on_step, check_interrupt=check_interrupt, decode_hooks=hooks,
        )
    peak = None
    if plan is not None:
        peak = measured_peak() if measured_peak is not None else torch.cuda.max_memory_allocated(model.device)
        info(measured_vs_predicted(plan, peak))
    if report is not None:
        report.update(timings=result.timings, plan=plan, windows=result.windows, model_calls=result.model_calls,
                      peak_bytes=peak)
    audio = trim_audio(audio_embeds["audio"], result.num_frames / fps)
    tm = result.timings
    info(f"Generated {result.num_frames} frames ({result.num_frames / fps:.2f} s) in {result.windows} window(s), "
         f"{result.model_calls} model calls: VAE encode {tm['vae_encode']:.1f} s, sampling {sum(tm['steps']):.1f} s "
         f"({len(tm['steps'])} steps), VAE decode {tm['vae_decode']:.1f} s")
    return result.frames, audio
