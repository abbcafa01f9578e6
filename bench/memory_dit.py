"""Where one DiT forward holds its VRAM: allocated bytes above the block's entry, per phase of a block.

    python -m wanfp4.bench.memory_dit --mode fp4_scaled_fast --attention sageattn_3_fp8 --batch 1 --swap 40
    python -m wanfp4.bench.memory_dit --tiny --device cpu           # smoke run (no CUDA: no figures)

For checking the activation coefficients of wan/hw_tuning.py against the real kernels (fused element-wise on
and off): per phase (self-attention incl. modulation, cross-attention, audio cross-attention, FFN, residual)
the peak of torch.cuda.max_memory_allocated above the bytes allocated when the block started, in units of
E = batch x tokens x dim bf16 elements as well as GiB; and the forward's peak above what was allocated before it.
"""
from __future__ import annotations

import argparse

import torch

GiB = 1024 ** 3
PHASES = ("self_attn", "cross_attn", "audio_cross_attn", "ffn")


def _probe(block, dev, rows: dict, counter=None):
    """Hooks that record, per phase, the peak allocation above the block's entry (then reset the peak).
    counter: (allocated, peak, reset) callables; default the CUDA allocator's (tests pass their own)."""
    allocated, peak, reset = counter or (lambda: torch.cuda.memory_allocated(dev),
                                         lambda: torch.cuda.max_memory_allocated(dev),
                                         lambda: torch.cuda.reset_peak_memory_stats(dev))
    state = {}

    def start(_m, _a):
        state["base"] = allocated()
        reset()

    def mark(name):
        def hook(_m, _a, _o):
            rows[name] = max(rows.get(name, 0), peak() - state["base"])
            reset()
        return hook

    hooks = [block.register_forward_pre_hook(start), block.register_forward_hook(mark("residual/end"))]
    for name in PHASES:
        sub = getattr(block, name, None)
        if sub is not None:
            hooks.append(sub.register_forward_hook(mark(name)))
    return hooks


def main(argv=None):
    from ..wan import fused, services
    from ..wan.block_swap import apply_block_swap
    from .dit_forward import dit_inputs, latent_shape, sync
    from .seed_models import build_dit, dit_config

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", default="fp4_scaled_fast")
    p.add_argument("--attention", default="sageattn_3_fp8")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--swap", type=int, default=0)
    p.add_argument("--size", type=int, nargs=3, default=[640, 720, 81], metavar=("W", "H", "FRAMES"))
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    dev = torch.device(a.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    cfg = dit_config(a.tiny)
    dm = services.prepare_diffusion_model(build_dit(a.mode, dev, dtype, a.tiny), a.attention, None, dev, dtype)
    if a.swap:
        apply_block_swap(dm.model, a.swap, dev)
    args, kw = dit_inputs(cfg, a.batch, *a.size, dev, dtype)
    f, h, w = latent_shape(*a.size)
    e = a.batch * f * (h // 2) * (w // 2) * cfg.dim
    if dev.type != "cuda":
        with torch.inference_mode():
            dm.model(*args, **kw)
        print("no CUDA: ran once, no memory figures")
        return 0
    for on in (True, False):
        fused.set_fused(on)
        rows: dict = {}
        with torch.inference_mode():
            dm.model(*args, **kw)       # warm-up (kernel compilation, swap buffers)
            sync(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            before = torch.cuda.memory_allocated(dev)
            dm.model(*args, **kw)
            sync(dev)
            whole = torch.cuda.max_memory_allocated(dev) - before
            hooks = _probe(dm.model.blocks[len(dm.model.blocks) // 2], dev, rows)
            dm.model(*args, **kw)
            sync(dev)
            for hk in hooks:
                hk.remove()
        print(f"# {a.mode} + {a.attention}, batch {a.batch}, swap {a.swap}, fused {'on' if on else 'off'}: "
              f"E = {e / 1e6:.1f} M elements; allocated before the forward {before / GiB:.2f} GiB")
        print("| phase | peak above block entry GiB | bytes per E |\n|---|---|---|")
        for name, v in rows.items():
            print(f"| {name} | {v / GiB:.2f} | {v / e:.1f} |")
        print(f"| whole forward: peak above its start (separate call, no hooks) | {whole / GiB:.2f} | "
              f"{whole / e:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
