"""Launcher of the Hopper Gluon kernel of sageattn_3 / sageattn_3_fp8 (gluon_sageattn_kernels.py).

triton_sageattn.py quantizes Q/K/V and then calls `launch` here on sm_90 (wgmma is sm_90a only) or the
portable Triton kernel elsewhere; both kernels read the same quantized buffers, so they differ only by
fp32 rounding order. `WANFP4_SAGEATTN_KERNEL=triton` forces the portable kernel (bench comparisons).
"""
from __future__ import annotations

import os

import torch

try:  # Gluon ships with Triton >= 3.5; older Triton or CPU-only installs keep the Triton kernel
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    from . import gluon_sageattn_kernels as _g
except Exception:  # pragma: no cover - depends on the install
    gl = None
    TensorDescriptor = None
    _g = None

# (pv_fp8, head_dim) -> BM, BN, num_warps, STAGES[, K scales loaded a block ahead]. BM is one warpgroup's
# 64 rows (see the kernel's docstring); chosen by `bench/kernels.py --tune` on the H200.
CONFIGS: dict[tuple[bool, int], tuple] = {
    (False, 128): (64, 64, 4, 2, True), (True, 128): (64, 128, 4, 3, True),
    (False, 64): (64, 64, 4, 2, True), (True, 64): (64, 128, 4, 3, True),
}


def choice() -> str:
    """auto | gluon | triton, from WANFP4_SAGEATTN_KERNEL."""
    value = os.environ.get("WANFP4_SAGEATTN_KERNEL", "auto").strip().lower()
    return value if value in ("auto", "gluon", "triton") else "auto"


def unsupported_reason(device, head_dim: int) -> str | None:
    """None when the Gluon kernel runs there, else why not (the Triton kernel is used instead)."""
    if _g is None:
        return "this Triton has no Gluon (needs Triton >= 3.5)"
    if not torch.cuda.is_available() or torch.device(device).type != "cuda":
        return "needs a CUDA GPU"
    cap = torch.cuda.get_device_capability(device)
    if cap != (9, 0):
        return f"wgmma needs sm_90 (Hopper), this GPU is sm_{cap[0]}{cap[1]}"
    if head_dim not in (64, 128):
        return f"head dim {head_dim} is not 64 or 128"
    return None


def config_for(pv_fp8: bool, head_dim: int) -> tuple:
    return CONFIGS[(pv_fp8, head_dim)]


_GL_DTYPES = {}


def _desc(t: torch.Tensor, block: list[int]):
    if not _GL_DTYPES:
        _GL_DTYPES.update({torch.int8: gl.int8, torch.bfloat16: gl.bfloat16, torch.float16: gl.float16,
                           torch.float8_e4m3fn: gl.float8e4nv})
    layout = gl.NVMMASharedLayout.get_default_for(block, _GL_DTYPES[t.dtype])
    return TensorDescriptor.from_tensor(t, block, layout)


def launch(qc, qs, kc, ks, vsrc, vs, out, lq: int, lq_pad: int, lk: int, lk_pad: int, heads: int,
           qk_scale: float, pv_fp8: bool, config: tuple) -> None:
    """Run the kernel on quantized buffers laid out as triton_sageattn.py makes them (lq_pad a multiple
    of BM, lk_pad of BN); writes out [B, Lq, H, D]."""
    bm, bn, warps, stages, ks_ahead = (tuple(config) + (True,))[:5]
    d = qc.shape[1]
    v_block = [d, bn] if pv_fp8 else [bn, d]
    grid = (lq_pad // bm, out.shape[0] * heads)
    _g.attn_int8_wgmma_kernel[grid](
        _desc(qc, [bm, d]), qs, _desc(kc, [bn, d]), ks, _desc(vsrc, v_block), vs, out,
        lq, lq_pad, lk, lk_pad, heads, out.stride(0), out.stride(1), out.stride(2), qk_scale,
        D=d, BM=bm, BN=bn, PV_FP8=pv_fp8, STAGES=stages, KS_AHEAD=bool(ks_ahead),
        num_warps=warps)
