"""InfiniteTalk streaming generation (reference doc §4.2): windows of 81 frames that carry 9
motion frames forward, the reference image re-injected every window, text + audio CFG.

This module is pure model code: it takes encoded inputs (T5 features, CLIP features, audio
features, the reference image) and loaded models, and returns frames. The ComfyUI node, the
headless runner and the benchmarks all call :func:`generate`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ..log import info, warn
from .audio_windows import gather_audio_window, mirror_pad_features
from .color import match_colors
from .schedulers import make_scheduler

WINDOW = 81


@dataclass
class GenerationSettings:
    width: int = 640
    height: int = 720
    frames: int = 81            # upper bound on the output length (the audio may make it shorter)
    fps: float = 16.0
    steps: int = 6
    cfg: float = 7.0            # text guidance; 1.0 => 2 model calls per step
    audio_cfg: float = 4.0
    shift: float = 7.0
    scheduler: str = "euler"
    denoise: float = 1.0
    seed: int = 0
    motion_frames: int = 9
    color_correction: float = 1.0
    audio_scale: float = 1.0
    window: int = WINDOW
    batch_cfg: bool = True      # run the CFG branches as one batch (faster, more activation memory)


@dataclass
class GenerationResult:
    frames: torch.Tensor        # [N, H, W, 3] float 0..1 (ComfyUI IMAGE)
    num_frames: int
    windows: int
    model_calls: int
    timings: dict = field(default_factory=dict)


def round_to_4k1(n: int) -> int:
    """Nearest valid Wan frame count (4k+1), at least 1 (rounds up on ties)."""
    return max(1, 4 * int(math.floor((n - 1) / 4 + 0.5)) + 1)


def plan_windows(total: int, window: int, motion: int) -> list[int]:
    """Start frames of each window so that the windows cover `total` frames."""
    if total <= window:
        return [0]
    step = window - motion
    return [0] + [window - motion + step * i for i in range(math.ceil((total - window) / step))]


def prepare_reference(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """IMAGE [H, W, C] 0..1 -> [H', W', 3] resized to cover (width, height) and centre-cropped."""
    if image.ndim == 4:
        image = image[0]
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image: has a zero dimension {tuple(image.shape)}; connect a real image")
    img = image[..., :3] if image.shape[-1] >= 3 else image[..., :1].expand(-1, -1, 3)
    h, w = img.shape[:2]
    scale = max(width / w, height / h)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    x = img.permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    top, left = (nh - height) // 2, (nw - width) // 2
    return x[0, :, top : top + height, left : left + width].permute(1, 2, 0).contiguous()


def _pad_text(ctx: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad T5 features to the DiT's text length (what the model does anyway) so branches batch."""
    if ctx.ndim == 2:
        ctx = ctx[None]
    if ctx.shape[1] > length:
        raise ValueError(f"text_embeds: {ctx.shape[1]} tokens, the model takes at most {length}")
    return F.pad(ctx, (0, 0, 0, length - ctx.shape[1]))


def _to_video(frames01: torch.Tensor) -> torch.Tensor:
    """[N, H, W, 3] 0..1 -> VAE input [1, 3, N, H, W] in [-1, 1]."""
    return (frames01.permute(3, 0, 1, 2)[None] * 2 - 1)


def _from_video(video: torch.Tensor) -> torch.Tensor:
    return ((video[0].float().clamp(-1, 1) + 1) / 2).permute(1, 2, 3, 0).contiguous()


def generate(
    model,
    vae,
    text_pos: torch.Tensor,
    text_neg: torch.Tensor,
    clip_features: torch.Tensor | None,
    reference_image: torch.Tensor,
    audio_features: torch.Tensor | None,
    settings: GenerationSettings,
    device: torch.device | str = "cpu",
    on_step: Callable[[int, int], None] | None = None,
    check_interrupt: Callable[[], None] | None = None,
    decode_hooks: tuple[Callable[[], None], Callable[[], None]] | None = None,
) -> GenerationResult:
    """Run InfiniteTalk streaming generation; returns frames trimmed to the audio (capped by settings.frames).

    text_pos/text_neg: [1, L, text_dim] T5 features; clip_features: [1, 257, 1280];
    reference_image: IMAGE [H, W, C] or [1, H, W, C]; audio_features: [T, blocks, C] at settings.fps
    (None or empty => silent conditioning of zeros). decode_hooks: (before, after) each VAE decode, e.g.
    to move the DiT out of VRAM when both do not fit.
    """
    s = settings
    if s.width % 16 or s.height % 16:
        raise ValueError(f"width/height: must be multiples of 16, got {s.width}x{s.height}")
    if s.motion_frames < 1 or (s.motion_frames - 1) % 4:
        raise ValueError(f"motion_frames: must be 4k+1 (1, 5, 9, ...), got {s.motion_frames}")
    device = torch.device(device)
    dtype = next(model.parameters()).dtype
    vae_dtype = next(vae.parameters()).dtype

    ref = prepare_reference(reference_image, s.width, s.height).to(device)
    target = int(s.frames)
    if audio_features is not None and audio_features.shape[0] > 0:
        target = min(target, int(audio_features.shape[0]))
    if s.window < 5 or (s.window - 1) % 4:
        raise ValueError(f"window: must be 4k+1 and >= 5, got {s.window}")
    # Short clips run one shorter window (4k+1 frames covering the target) instead of 81 frames.
    window = s.window if target > s.window else 4 * math.ceil((max(target, 1) - 1) / 4) + 1
    if target > window and window <= s.motion_frames:
        raise ValueError(f"motion_frames: {s.motion_frames} must be smaller than the window ({window})")
    starts = plan_windows(target, window, s.motion_frames)
    lat_f = (window - 1) // 4 + 1
    lh, lw = s.height // 8, s.width // 8

    if audio_features is None or audio_features.shape[0] == 0:
        blocks, ch = model.config.audio.blocks, model.config.audio.channels
        audio_features = torch.zeros(target, blocks, ch)
    feats = mirror_pad_features(audio_features.float(), starts[-1] + window)

    gen = torch.Generator("cpu").manual_seed(int(s.seed))
    timings = {"vae_encode": 0.0, "steps": [], "vae_decode": 0.0}
    t0 = time.perf_counter()
    with torch.no_grad():
        ref_video = _to_video(ref[None]).to(device, vae_dtype)
        cond = torch.zeros(1, 3, window, s.height, s.width, device=device, dtype=vae_dtype)
        cond[:, :, :1] = ref_video
        y_lat = vae.encode(cond).float()
        mask = torch.zeros(1, 4, lat_f, lh, lw, device=device)
        mask[:, :, 0] = 1
        y = torch.cat([mask, y_lat], 1)
        motion = vae.encode(ref_video).float()  # first window: the reference frame only
        ref_lat = motion
    timings["vae_encode"] += time.perf_counter() - t0

    sched_probe = make_scheduler(s.scheduler, s.steps, s.shift, s.denoise)
    total_steps = len(starts) * len(sched_probe.timesteps)
    three = s.cfg != 1.0
    info(
        f"InfiniteTalk: {target} frames at {s.width}x{s.height}, {len(starts)} window(s) of {window}, "
        f"{len(sched_probe.timesteps)} steps, {'3' if three else '2'} model calls per step"
    )
    ctx_pos = _pad_text(text_pos, model.config.text_len).to(device, dtype)
    ctx_neg = _pad_text(text_neg, model.config.text_len).to(device, dtype)
    clip = clip_features.to(device, dtype) if clip_features is not None else None

    out_frames: list[torch.Tensor] = []
    calls = 0
    done = 0
    for wi, start in enumerate(starts):
        sched = make_scheduler(s.scheduler, s.steps, s.shift, s.denoise)
        aw = gather_audio_window(feats, start, window)[None, None].to(device, dtype)  # [1, 1, window, 5, blocks, C]
        null_audio = torch.zeros_like(aw)
        noise = torch.randn(1, 16, lat_f, lh, lw, generator=gen).to(device)
        n_m = motion.shape[2]
        if s.denoise < 1.0:
            latent = sched.scale_noise(ref_lat.expand(-1, -1, lat_f, -1, -1), noise)
        else:
            latent = noise
        for i, t in enumerate(sched.timesteps):
            ts = time.perf_counter()
            if check_interrupt is not None:
                check_interrupt()
            latent[:, :, :n_m] = motion
            x = latent.to(dtype)
            tt = torch.full((1,), float(t), device=device)
            branches = [(ctx_pos, aw), (ctx_neg, aw), (ctx_neg, null_audio)] if three else [(ctx_pos, aw), (ctx_pos, null_audio)]
            vs = _run_branches(model, x, tt, branches, clip, y.to(dtype), s, check_interrupt)
            calls += len(branches)
            v = combine_guidance(vs, s.cfg, s.audio_cfg)
            latent = sched.step(v.float(), i, latent)
            latent[:, :, :n_m] = motion
            _sync(device)
            timings["steps"].append(time.perf_counter() - ts)
            done += 1
            if on_step is not None:
                on_step(done, total_steps)
        td = time.perf_counter()
        if decode_hooks is not None:
            decode_hooks[0]()
        with torch.no_grad():
            video = _from_video(vae.decode(latent.to(vae_dtype)))
        if decode_hooks is not None:
            decode_hooks[1]()
        _sync(device)
        timings["vae_decode"] += time.perf_counter() - td
        if s.color_correction > 0:
            video = match_colors(video, ref.cpu() if video.device.type == "cpu" else ref, s.color_correction)
        out_frames.append(video if wi == 0 else video[s.motion_frames :])
        if wi + 1 < len(starts):
            tail = video[-s.motion_frames :]
            te = time.perf_counter()
            with torch.no_grad():
                motion = vae.encode(_to_video(tail).to(device, vae_dtype)).float()
            timings["vae_encode"] += time.perf_counter() - te
    frames = torch.cat(out_frames, 0)[:target].cpu()
    return GenerationResult(frames, frames.shape[0], len(starts), calls, timings)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def combine_guidance(vs: list[torch.Tensor], cfg: float, audio_cfg: float) -> torch.Tensor:
    """InfiniteTalk CFG (§4.3). 3 branches (cond, null text, null text+audio):
    v_u + cfg*(v_c - v_nt) + audio_cfg*(v_nt - v_u); 2 branches (cond, null audio): v_na + audio_cfg*(v_c - v_na)."""
    if len(vs) == 3:
        v_c, v_nt, v_u = vs
        return v_u + cfg * (v_c - v_nt) + audio_cfg * (v_nt - v_u)
    v_c, v_na = vs
    return v_na + audio_cfg * (v_c - v_na)


def _run_branches(model, x, t, branches, clip, y, s: GenerationSettings, check_interrupt):
    """One model call per CFG branch, or all branches as one batch."""
    with torch.no_grad():
        if s.batch_cfg:
            n = len(branches)
            ctx = torch.cat([c for c, _ in branches], 0)
            aud = torch.cat([a for _, a in branches], 0)
            out = model(
                x.expand(n, -1, -1, -1, -1), t.expand(n), ctx,
                clip_fea=None if clip is None else clip.expand(n, -1, -1),
                y=y.expand(n, -1, -1, -1, -1), audio=aud, audio_scale=s.audio_scale,
            )
            return list(out.float().split(1, 0))
        outs = []
        for c, a in branches:
            if check_interrupt is not None:
                check_interrupt()
            outs.append(model(x, t, c, clip_fea=clip, y=y, audio=a, audio_scale=s.audio_scale).float())
        return outs
