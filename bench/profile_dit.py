"""Where one DiT forward spends its GPU time: torch.profiler over one forward at the seed shape.

    python -m wanfp4.bench.profile_dit --mode fp8_e4m3fn_fast --attention sageattn_3_fp8 [--batch 3]
    python -m wanfp4.bench.profile_dit --tiny --device cpu                              # smoke run

Prints the top kernels by total device time and a summary by kind (GEMM, attention, norm/RoPE/
modulation elementwise, copies), which is what decides where the next speed-up comes from.
"""
from __future__ import annotations

import argparse
import re

import torch

KINDS = (   # first match wins; names of cuBLAS/cuDNN/Triton/ATen kernels
    ("attention", re.compile(r"attn|attention|flash|fmha|_sage|softmax", re.I)),
    ("gemm", re.compile(r"gemm|nvjet|sm90_xmma|cutlass|matmul|addmm|_mm_|scaled_mm|linear|wgmma", re.I)),
    ("quantize", re.compile(r"quant|fp8|fp4|nvfp4|mxfp4|act_q", re.I)),
    ("copy", re.compile(r"copy|memcpy|memset|cat|fill", re.I)),
    ("elementwise/norm/rope", re.compile(r"elementwise|vectorized|reduce|norm|mul|add|pow|rsqrt|exp|gelu|tanh|"
                                         r"unrolled|index", re.I)),
)


def kind_of(name: str) -> str:
    return next((k for k, rx in KINDS if rx.search(name)), "other")


def main(argv=None):
    from ..wan import services
    from .dit_forward import dit_inputs, sync
    from .seed_models import build_dit, dit_config

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", default="fp8_e4m3fn_fast")
    p.add_argument("--attention", default="sageattn_3_fp8")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--size", type=int, nargs=3, default=[640, 720, 81], metavar=("W", "H", "FRAMES"))
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--no-fused", action="store_true", help="PyTorch element-wise path instead of the fused kernels")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    if a.no_fused:
        from ..wan.fused import set_fused
        set_fused(False)
    dev = torch.device(a.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    cfg = dit_config(a.tiny)
    dm = services.prepare_diffusion_model(build_dit(a.mode, dev, dtype, a.tiny), a.attention, None, dev, dtype)
    args, kw = dit_inputs(cfg, a.batch, *a.size, dev, dtype)
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with torch.inference_mode():
        dm.model(*args, **kw)
        sync(dev)
        with torch.profiler.profile(activities=acts) as prof:
            dm.model(*args, **kw)
            sync(dev)
    attr = "device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attr, 0) > 0]
    if dev.type == "cuda":   # kernels only (no CPU-side op wrappers, which would double count)
        events = [e for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA]
    total = sum(getattr(e, attr) for e in events) or 1
    by_kind: dict[str, float] = {}
    for e in events:
        by_kind[kind_of(e.key)] = by_kind.get(kind_of(e.key), 0.0) + getattr(e, attr)
    print(f"# {a.mode} + {a.attention}, batch {a.batch}, {a.size[0]}x{a.size[1]}x{a.size[2]}f on {dev}: "
          f"{total / 1e3:.0f} ms of {'kernel' if dev.type == 'cuda' else 'CPU'} time in one forward")
    print("| kind | ms | share |\n|---|---|---|")
    for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"| {k} | {v / 1e3:.0f} | {100 * v / total:.1f}% |")
    print("\n| kernel | kind | calls | ms | share |\n|---|---|---|---|---|")
    for e in sorted(events, key=lambda e: -getattr(e, attr))[: a.top]:
        name = e.key if len(e.key) <= 90 else e.key[:87] + "..."
        print(f"| `{name}` | {kind_of(e.key)} | {e.count} | {getattr(e, attr) / 1e3:.1f} | "
              f"{100 * getattr(e, attr) / total:.1f}% |")


if __name__ == "__main__":
    main()
