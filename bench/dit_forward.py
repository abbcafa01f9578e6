"""One DiT forward at the seed shape: inputs, timing, and the diffusers peer baseline.

Shared by bench/kernels.py --dit (ms per forward for each quantization + attention mode against
bf16 + SDPA) and bench/seed_workload.py (per-call ratio to diffusers' WanTransformer3DModel).
"""
from __future__ import annotations

import gc
import statistics
import time

import torch


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def latent_shape(width: int, height: int, frames: int) -> tuple[int, int, int]:
    return (frames - 1) // 4 + 1, height // 8, width // 8


def dit_inputs(cfg, batch: int, width: int, height: int, frames: int, device, dtype):
    """(args, kwargs) of WanModel.forward for one window: noise latent, t, T5 context, CLIP, y, audio."""
    lat_f, lh, lw = latent_shape(width, height, frames)
    g = torch.Generator(device="cpu").manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g).to(device, dtype)   # noqa: E731
    a = cfg.audio
    args = (r(batch, 16, lat_f, lh, lw), torch.full((batch,), 700.0, device=device), r(batch, cfg.text_len, cfg.text_dim))
    kw = dict(clip_fea=r(batch, cfg.image_tokens, cfg.image_dim), y=r(batch, cfg.in_dim - 16, lat_f, lh, lw))
    if a is not None:
        kw["audio"] = r(batch, 1, frames, a.seq_len, a.blocks, a.channels)
    return args, kw


def time_calls(fn, iters: int, device) -> tuple[float, float, int]:
    """fn() once to warm up (kernel compilation, autotuning), then `iters` timed calls:
    (median ms, first-call ms, peak bytes during the timed calls)."""
    with torch.inference_mode():
        t = time.perf_counter()
        fn()
        sync(device)
        first = (time.perf_counter() - t) * 1000
        if torch.device(device).type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(iters):
            t = time.perf_counter()
            fn()
            sync(device)
            times.append((time.perf_counter() - t) * 1000)
    peak = torch.cuda.max_memory_allocated(device) if torch.device(device).type == "cuda" else 0
    return statistics.median(times), first, peak


def diffusers_kwargs(cfg) -> dict:
    """diffusers WanTransformer3DModel config equal to our WanConfig (I2V: image embedding + added KV)."""
    return dict(patch_size=tuple(cfg.patch_size), num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
                in_channels=cfg.in_dim, out_channels=cfg.out_dim, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
                ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                eps=cfg.eps, image_dim=cfg.image_dim, added_kv_proj_dim=cfg.dim, rope_max_seq_len=1024)


def time_diffusers_forward(cfg, width: int, height: int, frames: int, device, iters: int = 2,
                           dtype: torch.dtype = torch.bfloat16) -> dict:
    """diffusers' WanTransformer3DModel (default SDPA attention), random weights built on `device`,
    one batch-1 forward of the I2V model at the given shape (it has no InfiniteTalk audio layers)."""
    from diffusers import WanTransformer3DModel

    t0 = time.perf_counter()
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = WanTransformer3DModel(**diffusers_kwargs(cfg)).eval()
    finally:
        torch.set_default_dtype(old)
    sync(device)
    build_s = time.perf_counter() - t0
    (x, t, ctx), kw = dit_inputs(cfg, 1, width, height, frames, device, dtype)
    hidden = torch.cat([x, kw["y"]], 1)
    ms, first, peak = time_calls(lambda: model(hidden, t.long(), ctx, encoder_hidden_states_image=kw["clip_fea"],
                                               return_dict=False), iters, device)
    del model, hidden, kw, x, ctx
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    import diffusers

    return {"ms": ms, "first_ms": first, "peak_bytes": peak, "build_s": build_s, "version": diffusers.__version__}
