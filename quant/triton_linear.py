"""GPU linears for quantized weights: fp8 W8A8, NVFP4 W4A16 / W4A8 / W4A4 (Triton + cuBLASLt).

Numerics are those of quant/fp8.py, quant/fp4.py and the reference kernels in quant/backends.py:
  fp8_linear          per-token e4m3 activations (one Triton pass, 1 read + 1 write of x) times
                      per-channel fp8 weights on torch._scaled_mm (row-wise scales, cuBLASLt).
  nvfp4_linear_w4a16  NVFP4 weights decoded inside a Triton GEMM (16-bit tensor cores), reading
                      4.5 bits per weight; for large M (compute-bound) the weight is instead decoded
                      once per call into a 16-bit scratch copy and fed to cuBLAS (the decode is ~1%
                      of that GEMM and cuBLAS is faster than a Triton GEMM there).
  mxfp4_linear_w4a16  MXFP4 (fp4_experimental) decoded in one Triton pass to a 16-bit scratch copy,
                      then cuBLAS (the reference decode took several fp32 passes per call).
  nvfp4_linear_w4a8   NVFP4 -> e4m3 with one scale per output channel (nvfp4_to_fp8_rows, re-rounded)
                      in one Triton pass, then the fp8 GEMM above: fp8 tensor cores on sm_89/sm_90.
  nvfp4_linear_w4a4   NVFP4 activations x NVFP4 weights through tl.dot_scaled: native on sm_100/120,
                      emulated by Triton elsewhere (numerics proof only, not fast there).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

try:  # Triton ships with CUDA builds of torch; CPU-only installs never call this module's kernels.
    import triton
    from . import triton_linear_kernels as _k
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    _k = None

from .fp4 import E2M1_MAX, E4M3_MAX, NVFP4_BLOCK, quantize_nvfp4

FAST_ACCUM = True          # cuBLASLt fp8 fast accumulation: +5-10% on the H200, error unchanged at Wan K
FUSED_W4A16_MAX_M = 0      # fused Triton GEMM measured 4-7x slower than decode+cuBLAS at every Wan M (RESULTS.md)
W4A16_CONFIG = {"small": (64, 128, 128, 4, 4), "large": (128, 128, 64, 8, 3)}   # BM, BN, BK, warps, stages


def _sm(device) -> int | None:
    if triton is None or not torch.cuda.is_available():
        return None
    device = torch.device(device) if device is not None else torch.device("cuda")
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return major * 10 + minor


def supports(device=None) -> bool:
    """Triton kernels (W4A16 and the quantization passes) can run: CUDA sm_80+ with Triton."""
    sm = _sm(device)
    return sm is not None and sm >= 80


def supports_fp8(device=None) -> bool:
    """fp8 tensor cores (W8A8, W4A8): sm_89+."""
    sm = _sm(device)
    return sm is not None and sm >= 89 and hasattr(torch, "_scaled_mm")


def supports_fp4_native(device=None) -> bool:
    """Block-scaled FP4 tensor cores (W4A4 at speed): sm_100+ (sm_100, sm_120)."""
    sm = _sm(device)
    return sm is not None and sm >= 100


def _need(ok: bool, what: str, device) -> None:
    if not ok:
        raise RuntimeError(f"{what}: not supported on {device} (needs CUDA, Triton and the GPU generation "
                           "named in quant/triton_linear.py); use the PyTorch reference path instead")


def _gemm_dtype(x: torch.Tensor) -> torch.dtype:
    """The 16-bit type the GEMMs run and return in: x's own, or bf16 for fp32 x (cast back by the caller)."""
    return x.dtype if x.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16


def _check_k(x: torch.Tensor, k: int, name: str) -> torch.Tensor:
    if x.shape[-1] != k:
        raise ValueError(f"{name}: input has {x.shape[-1]} features, the weight expects {k}")
    if k % 16:
        raise ValueError(f"{name}: in_features {k} must be a multiple of 16 (fp8/FP4 tensor-core layout)")
    return x.reshape(-1, k)


# ----------------------------------------------------------------------------- fp8
def quant_fp8_rows(x2d: torch.Tensor, num_warps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """[M, K] -> (e4m3 [M, K], fp32 scale [M, 1]) exactly as quant.fp8.quantize_fp8_rows, in one pass."""
    if x2d.stride(-1) != 1:
        x2d = x2d.contiguous()
    m, k = x2d.shape
    out = torch.empty(m, k, dtype=torch.float8_e4m3fn, device=x2d.device)
    scale = torch.empty(m, 1, dtype=torch.float32, device=x2d.device)
    block_k = triton.next_power_of_2(k)
    rows = max(1, min(16, 4096 // block_k))
    warps = num_warps or (4 if block_k <= 8192 else 8)          # measured best on the H200 (RESULTS.md)
    _k.quant_fp8_rows_kernel[(triton.cdiv(m, rows),)](x2d, out, scale, m, k, x2d.stride(0),
                                                      BLOCK_K=block_k, ROWS=rows, num_warps=warps)
    return out, scale


def _scaled_mm(xq, sx, w8, sw, bias, out_dtype, fast_accum):
    bias = None if bias is None else bias.to(out_dtype)
    return torch._scaled_mm(xq, w8.t(), scale_a=sx, scale_b=sw.float().reshape(1, -1).contiguous(), bias=bias,
                            out_dtype=out_dtype, use_fast_accum=fast_accum)


def fp8_linear(x: torch.Tensor, w_fp8: torch.Tensor, w_scale_per_channel: torch.Tensor,
               bias: torch.Tensor | None = None, fast_accum: bool | None = None) -> torch.Tensor:
    """y = x @ (w_fp8 * scale[:, None])^T + bias with per-token e4m3 activations; y in x's dtype.

    w_fp8: float8_e4m3fn [N, K] (row-major, as stored); w_scale_per_channel: fp32 [N] (or scalar).
    """
    _need(supports_fp8(x.device), "fp8_linear", x.device)
    if w_fp8.dtype != torch.float8_e4m3fn:
        raise ValueError(f"fp8_linear: weight must be float8_e4m3fn, got {w_fp8.dtype} (re-round e5m2 first)")
    n, k = w_fp8.shape
    x2 = _check_k(x, k, "fp8_linear")
    xq, sx = quant_fp8_rows(x2)
    sw = w_scale_per_channel.float().reshape(-1).expand(n) if w_scale_per_channel.numel() == 1 else w_scale_per_channel
    out_dtype = _gemm_dtype(x)
    out = _scaled_mm(xq, sx, w_fp8, sw, bias, out_dtype, FAST_ACCUM if fast_accum is None else fast_accum)
    return out.to(x.dtype).reshape(*x.shape[:-1], n)


# ----------------------------------------------------------------------------- NVFP4 decode
def _nvfp4_shapes(w_packed, block_scales, name):
    n, kh = w_packed.shape
    k = kh * 2
    if block_scales.shape != (n, k // NVFP4_BLOCK):
        raise ValueError(f"{name}: block scales must be [{n}, {k // NVFP4_BLOCK}] for packed weight "
                         f"{tuple(w_packed.shape)}, got {tuple(block_scales.shape)}")
    if k % 64:
        raise ValueError(f"{name}: in_features {k} must be a multiple of 64 for the Triton NVFP4 kernels")
    return n, k


def nvfp4_dequantize(w_packed, block_scales_e4m3, tensor_scale, dtype=torch.bfloat16) -> torch.Tensor:
    """NVFP4 [N, K/2] -> dense [N, K] in `dtype` (quant.fp4.dequantize_nvfp4, cast), one Triton pass."""
    n, k = _nvfp4_shapes(w_packed, block_scales_e4m3, "nvfp4_dequantize")
    out = torch.empty(n, k, dtype=dtype, device=w_packed.device)
    ts = tensor_scale.float().reshape(1).contiguous()
    _k.nvfp4_dequant_kernel[(triton.cdiv(n, 32), k // 64)](w_packed.view(torch.uint8), block_scales_e4m3, ts, ts,
                                                           out, n, k, TO_FP8=False, BR=32, BK=64, num_warps=4)
    return out


def mxfp4_dequantize(w_packed: torch.Tensor, block_scales_e8m0: torch.Tensor, dtype=torch.bfloat16) -> torch.Tensor:
    """MXFP4 [N, K/2] + e8m0 [N, K/32] -> dense [N, K] in `dtype` (quant.fp4.dequantize_mxfp4, cast), one
    Triton pass instead of the reference's several fp32 passes. K here is the padded (stored) width."""
    n, kh = w_packed.shape
    k = 2 * kh
    if k % 64 or tuple(block_scales_e8m0.shape) != (n, k // 32):
        raise ValueError(f"mxfp4_dequantize: packed weight {tuple(w_packed.shape)} needs K % 64 == 0 and block "
                         f"scales [{n}, {k // 32}], got {tuple(block_scales_e8m0.shape)}")
    out = torch.empty(n, k, dtype=dtype, device=w_packed.device)
    _k.mxfp4_dequant_kernel[(triton.cdiv(n, 32), k // 64)](w_packed.view(torch.uint8),
                                                           block_scales_e8m0.view(torch.uint8), out, n, k,
                                                           BR=32, BK=64, num_warps=4)
    return out


def nvfp4_row_scales(block_scales_e4m3, tensor_scale) -> torch.Tensor:
    """Per-output-channel fp32 scale of the W4A8 operand, as quant.fp4.nvfp4_to_fp8_rows."""
    s = tensor_scale.float().reshape(()) * block_scales_e4m3.float().amax(dim=1) * (E2M1_MAX / E4M3_MAX)
    return torch.where(s > 0, s, torch.ones_like(s))


def nvfp4_to_fp8(w_packed, block_scales_e4m3, tensor_scale) -> tuple[torch.Tensor, torch.Tensor]:
    """NVFP4 -> (e4m3 [N, K], fp32 row scale [N]): quant.fp4.nvfp4_to_fp8_rows in one Triton pass."""
    n, k = _nvfp4_shapes(w_packed, block_scales_e4m3, "nvfp4_to_fp8")
    rs = nvfp4_row_scales(block_scales_e4m3, tensor_scale).contiguous()
    out = torch.empty(n, k, dtype=torch.float8_e4m3fn, device=w_packed.device)
    ts = tensor_scale.float().reshape(1).contiguous()
    _k.nvfp4_dequant_kernel[(triton.cdiv(n, 32), k // 64)](w_packed.view(torch.uint8), block_scales_e4m3, ts, rs,
                                                           out, n, k, TO_FP8=True, BR=32, BK=64, num_warps=4)
    return out, rs


# ----------------------------------------------------------------------------- FP4 linears
def _decoded_linear(x2: torch.Tensor, w: torch.Tensor, bias) -> torch.Tensor:
    """cuBLAS on a weight decoded to x2's 16-bit dtype for this call (the W4A16 path at large M)."""
    return F.linear(x2, w, None if bias is None else bias.to(x2.dtype))


def mxfp4_linear_w4a16(x: torch.Tensor, w_packed, block_scales_e8m0, bias=None) -> torch.Tensor:
    """y = x @ dequant(W)^T + bias for MXFP4 weights (fp4_experimental): decode once per call, cuBLAS GEMM."""
    _need(supports(x.device), "mxfp4_linear_w4a16", x.device)
    dt = _gemm_dtype(x)
    w = mxfp4_dequantize(w_packed, block_scales_e8m0, dt)[:, :x.shape[-1]]
    return _decoded_linear(x.to(dt), w, bias).to(x.dtype)


def nvfp4_linear_w4a16(x, w_packed, block_scales_e4m3, tensor_scale, bias=None, fused: bool | None = None,
                       config=None) -> torch.Tensor:
    """y = x @ dequant(W)^T + bias in x's 16-bit dtype (fp32 x runs in bf16 and is cast back)."""
    _need(supports(x.device), "nvfp4_linear_w4a16", x.device)
    n, k = _nvfp4_shapes(w_packed, block_scales_e4m3, "nvfp4_linear_w4a16")
    x2 = _check_k(x, k, "nvfp4_linear_w4a16")
    dt = _gemm_dtype(x)
    x2 = x2.to(dt)
    m = x2.shape[0]
    fused = m <= FUSED_W4A16_MAX_M if fused is None else fused
    if not fused:
        out = _decoded_linear(x2, nvfp4_dequantize(w_packed, block_scales_e4m3, tensor_scale, dt), bias)
    else:
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        bm, bn, bk, warps, stages = config or W4A16_CONFIG["small" if m <= 256 else "large"]
        out = torch.empty(m, n, dtype=dt, device=x.device)
        ts = tensor_scale.float().reshape(1).contiguous()
        grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
        _k.w4a16_gemm_kernel[grid](x2, w_packed.view(torch.uint8), block_scales_e4m3, ts,
                                   bias if bias is not None else ts, out, m, n, k, x2.stride(0),
                                   HAS_BIAS=bias is not None, BM=bm, BN=bn, BK=bk, GROUP_M=8,
                                   num_warps=warps, num_stages=stages)
    return out.to(x.dtype).reshape(*x.shape[:-1], n)


def nvfp4_linear_w4a8(x, w_packed, block_scales_e4m3, tensor_scale, bias=None,
                      fast_accum: bool | None = None) -> torch.Tensor:
    """W4A8: NVFP4 weight re-rounded to per-channel e4m3 (one Triton pass), fp8 GEMM (sm_89+)."""
    _need(supports_fp8(x.device), "nvfp4_linear_w4a8", x.device)
    w8, rs = nvfp4_to_fp8(w_packed, block_scales_e4m3, tensor_scale)
    return fp8_linear(x, w8, rs, bias, fast_accum)


def nvfp4_linear_w4a4(x, w_packed, block_scales_e4m3, tensor_scale, bias=None, config=(64, 64, 128, 4, 2)):
    """W4A4: NVFP4 activations (block 16, dynamic tensor scale, quant.fp4.quantize_nvfp4) x NVFP4
    weights via tl.dot_scaled on sm_100+; elsewhere the same products decoded to fp16 (numerics
    proof only, not fast: Triton 3.6 cannot emulate NVFP4 dot_scaled on sm_90 itself)."""
    _need(supports(x.device), "nvfp4_linear_w4a4", x.device)
    n, k = _nvfp4_shapes(w_packed, block_scales_e4m3, "nvfp4_linear_w4a4")
    x2 = _check_k(x, k, "nvfp4_linear_w4a4")
    xp, xb, xt = quantize_nvfp4(x2)
    alpha = (xt.float() * tensor_scale.float().reshape(())).reshape(1).contiguous()
    m = x2.shape[0]
    dt = _gemm_dtype(x)
    out = torch.empty(m, n, dtype=dt, device=x.device)
    bm, bn, bk, warps, stages = config
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
    _k.w4a4_gemm_kernel[grid](xp, xb, w_packed.view(torch.uint8), block_scales_e4m3, alpha,
                              bias if bias is not None else alpha, out, m, n, k,
                              HAS_BIAS=bias is not None, BM=bm, BN=bn, BK=bk, NATIVE=supports_fp4_native(x.device),
                              num_warps=warps, num_stages=stages)
    return out.to(x.dtype).reshape(*x.shape[:-1], n)


# ----------------------------------------------------------------------------- backend seam
def _nvfp4_args(module):
    return module.weight, module.weight_block_scale, module.weight_tensor_scale


def _nvfp4_ok(module, x) -> bool:
    return (module.storage == "nvfp4" and module.in_features % 64 == 0
            and module.weight.shape[-1] * 2 == module.in_features)


def register_backends() -> None:
    """Plug these kernels into quant/backends.py (priority above the torch paths) where they run."""
    from .backends import register_kernel

    def fp8_ok(module, x):
        return (supports_fp8(x.device) and module.storage == "fp8" and module.weight.dtype == torch.float8_e4m3fn
                and module.in_features % 16 == 0 and module.out_features % 16 == 0)

    register_kernel("w8a8", lambda m, x: fp8_linear(x, m.weight, m.weight_scale, m.bias), "triton-fp8",
                    priority=10, supports=fp8_ok)
    register_kernel("w4a8", lambda m, x: nvfp4_linear_w4a8(x, *_nvfp4_args(m), m.bias), "triton-w4a8",
                    priority=10, supports=lambda m, x: supports_fp8(x.device) and _nvfp4_ok(m, x)
                    and m.out_features % 16 == 0)
    register_kernel("w4a16", lambda m, x: nvfp4_linear_w4a16(x, *_nvfp4_args(m), m.bias), "triton-w4a16",
                    priority=10, supports=lambda m, x: supports(x.device) and _nvfp4_ok(m, x))
    register_kernel("w4a16", lambda m, x: mxfp4_linear_w4a16(x, m.weight, m.weight_block_scale, m.bias),
                    "triton-mxfp4-decode", priority=10,
                    supports=lambda m, x: supports(x.device) and m.storage == "mxfp4" and m.weight.shape[-1] % 32 == 0)
    register_kernel("w4a4", lambda m, x: nvfp4_linear_w4a4(x, *_nvfp4_args(m), m.bias), "triton-w4a4",
                    priority=10, supports=lambda m, x: supports_fp4_native(x.device) and _nvfp4_ok(m, x))
