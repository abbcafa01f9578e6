"""Kernel backend seam: the function that computes a QuantLinear forward for (path, device).

Today: the PyTorch reference of every path (runs anywhere, defines the numerics) plus
`torch._scaled_mm` for W8A8 / W4A8 on CUDA. GPU kernels (Triton) plug in later with
`register_kernel(path, fn, device_types=("cuda",), priority=10, supports=...)`; they must match
the reference within the tolerances in tests/test_quant_linear.py.

A kernel takes (module, x2d) with x2d [M, K] in the activation dtype and returns [M, N] in that
dtype, bias included.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .fp4 import dequantize_nvfp4, nvfp4_to_fp8_rows, quantize_nvfp4
from .fp8 import quantize_fp8_rows

Kernel = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]
PATHS = ("dense", "upcast", "w8a8", "w4a16", "w4a8", "w4a4")


@dataclass
class _Entry:
    name: str
    fn: Kernel
    device_types: tuple[str, ...]
    priority: int
    supports: Callable[[torch.nn.Module, torch.Tensor], bool]


_KERNELS: dict[str, list[_Entry]] = {p: [] for p in PATHS}


def register_kernel(path: str, fn: Kernel, name: str, device_types: tuple[str, ...] = ("cuda",),
                    priority: int = 0, supports: Callable[[torch.nn.Module, torch.Tensor], bool] | None = None) -> None:
    """Add a kernel for a compute path; the highest-priority one that supports the call runs."""
    if path not in _KERNELS:
        raise ValueError(f"unknown compute path {path!r}; known: {', '.join(PATHS)}")
    _KERNELS[path].append(_Entry(name, fn, tuple(device_types), priority, supports or (lambda m, x: True)))
    _KERNELS[path].sort(key=lambda e: -e.priority)


def select_kernel(path: str, module: torch.nn.Module, x: torch.Tensor) -> tuple[str, Kernel]:
    for e in _KERNELS[path]:
        if ("any" in e.device_types or x.device.type in e.device_types) and e.supports(module, x):
            return e.name, e.fn
    raise RuntimeError(f"no kernel for compute path {path!r} on {x.device.type}")


@torch.compiler.disable   # opaque to TorchDynamo (wan/block_compile.py): kernels with their own launch code
def quant_linear_forward(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Entry point used by QuantLinear.forward: flattens leading dims and dispatches."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    _, fn = select_kernel(module.compute_path, module, x2)
    return fn(module, x2).reshape(*lead, -1)


# ----------------------------------------------------------------------------- reference kernels
def _bias(module, dtype) -> torch.Tensor | None:
    return None if module.bias is None else module.bias.to(dtype)


def ref_dequant_linear(module, x):
    """dense / upcast / w4a16: weights dequantized to the activation dtype, GEMM in that dtype."""
    return F.linear(x, module.dequantize_weight(x.dtype), _bias(module, x.dtype))


def _fp8_weight_operand(module) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 e4m3 weight [N, K], fp32 per-channel scale [N]) for the W8A8 / W4A8 GEMMs."""
    if module.storage == "fp8":
        w, s = module.weight, module.weight_scale.float()
        if w.dtype != torch.float8_e4m3fn:  # e5m2 x e4m3 is not a cuBLAS combination: re-round
            w = (w.float().clamp(-448, 448)).to(torch.float8_e4m3fn)
        return w, s
    if module.storage == "nvfp4":
        return nvfp4_to_fp8_rows(module.weight, module.weight_block_scale, module.weight_tensor_scale,
                                 module.in_features)
    raise RuntimeError(f"fp8 GEMM needs fp8 or nvfp4 weights, module stores {module.storage}")


def ref_w8_activations(module, x):
    """w8a8 / w4a8 reference: per-token e4m3 activations x per-channel fp8 weights, fp32 math."""
    xq, sx = quantize_fp8_rows(x)
    wq, sw = _fp8_weight_operand(module)
    out = (xq.float() * sx) @ (wq.float() * sw[:, None]).t()
    if module.bias is not None:
        out = out + module.bias.float()
    return out.to(x.dtype)


def ref_w4a4(module, x):
    """w4a4 reference: NVFP4 activations (block 16 along K, dynamic tensor scale) x NVFP4 weights."""
    if module.storage != "nvfp4":
        raise RuntimeError(f"W4A4 needs nvfp4 weights, module stores {module.storage}")
    k = module.in_features
    xp, xb, xt = quantize_nvfp4(x)
    xd = dequantize_nvfp4(xp, xb, xt, k)
    wd = dequantize_nvfp4(module.weight, module.weight_block_scale, module.weight_tensor_scale, k)
    out = xd @ wd.t()
    if module.bias is not None:
        out = out + module.bias.float()
    return out.to(x.dtype)


for _p in ("dense", "upcast", "w4a16"):
    register_kernel(_p, ref_dequant_linear, "torch-reference", device_types=("any",), priority=-100)
register_kernel("w8a8", ref_w8_activations, "torch-reference", device_types=("any",), priority=-100)
register_kernel("w4a8", ref_w8_activations, "torch-reference", device_types=("any",), priority=-100)
register_kernel("w4a4", ref_w4a4, "torch-reference", device_types=("any",), priority=-100)


# ----------------------------------------------------------------------------- CUDA: torch._scaled_mm
def _scaled_mm_ok(module, x) -> bool:
    return (hasattr(torch, "_scaled_mm") and x.is_cuda and module.in_features % 16 == 0
            and module.out_features % 16 == 0 and x.dtype in (torch.bfloat16, torch.float16, torch.float32))


def cuda_scaled_mm(module, x):
    """W8A8 / W4A8 with row-wise scales on cuBLASLt (sm_89+): scale_a [M, 1], scale_b [1, N]."""
    xq, sx = quantize_fp8_rows(x)
    wq, sw = _fp8_weight_operand(module)
    bias = _bias(module, x.dtype) if x.dtype != torch.float32 else None
    out = torch._scaled_mm(xq, wq.t(), scale_a=sx.contiguous(), scale_b=sw.view(1, -1).contiguous(),
                           bias=bias, out_dtype=x.dtype)
    if module.bias is not None and bias is None:
        out = out + module.bias.to(out.dtype)
    return out


register_kernel("w8a8", cuda_scaled_mm, "torch-scaled-mm", device_types=("cuda",), priority=0, supports=_scaled_mm_ok)
register_kernel("w4a8", cuda_scaled_mm, "torch-scaled-mm", device_types=("cuda",), priority=0, supports=_scaled_mm_ok)


try:  # Triton GEMM kernels (GPU) take precedence where they support the shape
    from .triton_linear import register_backends as _register_triton
    _register_triton()
except ImportError:
    pass
