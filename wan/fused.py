"""The DiT block's element-wise steps, each as one function: the PyTorch path (the reference numerics,
used on CPU and by default) or, when switched on, a fused Triton kernel (wan/triton_fused.py).

On by default where Triton and CUDA are present: on the H200 they take a 14B forward at the seed shape from
4663 to 3838 ms (bf16) and 4030 to 3230 ms (fp8 + sageattn_3), bench/RESULTS.md. `WANFP4_FUSED_ELEMENTWISE=0`
in the environment or `set_fused(False)` turns them off. The kernels do the same fp32 math in registers,
so outputs differ from the PyTorch path only by rounding order.
"""
from __future__ import annotations

import os

import torch

from ..log import warn
from .rope import apply_rotary

_STATE = {"enabled": os.environ.get("WANFP4_FUSED_ELEMENTWISE", "1") != "0"}


def set_fused(enabled: bool) -> None:
    _STATE["enabled"] = bool(enabled)


def fused_enabled() -> bool:
    return _STATE["enabled"]


def fused_active() -> bool:
    """On and importable: the fused kernels will run on CUDA tensors (imports the Triton module once)."""
    return fused_enabled() and _kernels() is not None


def _kernels():
    """The Triton kernel module, or None without Triton; resolved once. A plain dict read afterwards, so
    TorchDynamo traces it as a constant (wan/block_compile.py resolves it before compiling)."""
    if "kernels" not in _STATE:
        try:
            from . import triton_fused
            _STATE["kernels"] = triton_fused
        except Exception:   # no Triton (CPU builds of torch): the PyTorch path stays
            _STATE["kernels"] = None
    return _STATE["kernels"]


def _use(*ts: torch.Tensor) -> bool:
    if not _STATE["enabled"] or _kernels() is None:
        return False
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    return all((t.is_cuda or interpret) and t.is_contiguous() for t in ts) and ts[0].dtype in (
        torch.bfloat16, torch.float16, torch.float32)


@torch.compiler.disable   # opaque to TorchDynamo (wan/block_compile.py); the PyTorch path stays traceable
def _launch(name: str, *args):
    """The kernel's result, or None after switching the fused path off when it fails (a Triton build
    or GPU it does not compile for): the caller then runs the PyTorch path. Out-of-memory propagates."""
    try:
        return getattr(_kernels(), name)(*args)
    except torch.OutOfMemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - any compile/launch failure: keep generating, slower
        _STATE["enabled"] = False
        warn(f"Fused element-wise kernels failed ({type(err).__name__}: {str(err)[:200]}); using the PyTorch "
             "path for the rest of this process (WANFP4_FUSED_ELEMENTWISE=0 skips them)")
        return None


def _rows(v: torch.Tensor, batch: int) -> torch.Tensor:
    """[B or 1, 1, N] fp32 modulation -> contiguous [batch, N]."""
    return v.reshape(v.shape[0], -1).float().expand(batch, -1).contiguous()


def modulate(norm, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
    """LayerNorm(x) * (1 + scale) + shift in fp32, cast to dt (norm: a non-affine FP32LayerNorm)."""
    if _use(x) and not norm.elementwise_affine and x.dim() == 3:
        out = torch.empty(x.shape, dtype=dt, device=x.device)
        got = _launch("ln_modulate", x, _rows(scale, x.shape[0]), _rows(shift, x.shape[0]), norm.eps, out)
        if got is not None:
            return got
    return (norm(x) * (1 + scale) + shift).to(dt)


def layer_norm(norm, x: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
    """norm(x) cast to dt, for the affine FP32LayerNorms (norm3, norm_x): ln_modulate with
    scale = weight - 1 and shift = bias. Other norms (nn.Identity when the config has none) run as is."""
    if _use(x) and getattr(norm, "elementwise_affine", False) and norm.bias is not None and x.dim() == 3:
        out = torch.empty(x.shape, dtype=dt, device=x.device)
        scale, shift = (norm.weight.float() - 1)[None], norm.bias.float()[None]
        got = _launch("ln_modulate", x, _rows(scale, x.shape[0]), _rows(shift, x.shape[0]), norm.eps, out)
        if got is not None:
            return got
    return norm(x).to(dt)


def rms_norm(norm, x: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
    """norm(x) cast to dt for a q/k RMSNorm without RoPE (cross-attention); nn.Identity runs as is."""
    if _use(x) and hasattr(norm, "eps") and x.dim() == 3 and x.shape[-1] % 2 == 0:
        out = torch.empty(x.shape, dtype=dt, device=x.device)
        got = _launch("rms_rope", x, norm.weight, None, None, norm.eps, out)
        if got is not None:
            return got
    return norm(x).to(dt)


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """x + y * gate in fp32, cast back to x's dtype (the residual stream)."""
    if _use(x, y) and x.dim() == 3 and x.shape == y.shape:
        got = _launch("gated_residual", x, y, _rows(gate, x.shape[0]), torch.empty_like(x))
        if got is not None:
            return got
    return (x.float() + y.float() * gate).to(x.dtype)


def rms_rope(norm, x: torch.Tensor, heads: int, cos: torch.Tensor, sin: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
    """q/k: RMSNorm over the full dim (or identity), 3-D RoPE on interleaved pairs, cast to dt.
    x: [B, L, dim] (Linear output) -> [B, L, heads, dim/heads]."""
    b, n, dim = x.shape
    if _use(x, cos, sin) and hasattr(norm, "eps") and cos.dim() == 2:
        got = _launch("rms_rope", x, norm.weight, cos, sin, norm.eps, torch.empty(x.shape, dtype=dt, device=x.device))
        if got is not None:
            return got.view(b, n, heads, dim // heads)
    return apply_rotary(norm(x).view(b, n, heads, dim // heads), cos, sin).to(dt)
