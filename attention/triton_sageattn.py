"""Triton forward kernels of the quantized attention modes (non-causal, no mask, [B, L, H, D]).

They reproduce the numerics of attention/reference.py (the spec), fused into flash-style kernels:
  sageattn3_fp8(q, k, v)  INT8 Q.K (K smoothed, one scale per token x head), e4m3 P.V with one
                          V scale per (batch, head, channel), fp32 accumulation.      sm_89+
  sageattn3(q, k, v)      the same Q.K, P.V in the input's 16-bit type.              sm_80+
  sageattn3_fp4(q, k, v)  NVFP4 Q, K, P, V through tl.dot_scaled (triton_sageattn_fp4.py): native
                          on sm_100/sm_120, emulated by Triton elsewhere (numerics proof only).
Quantization runs as separate, memory-bound Triton passes (about 1-2% of the attention time at
Wan shapes); their time is part of every call. Head dims 64 and 128 (any power of two 32..256: the INT8
Q.K MMA needs K >= 32).
"""
from __future__ import annotations

import math

import torch

try:  # Triton ships with CUDA builds of torch; CPU-only installs have none and never call this.
    import triton
    from . import triton_sageattn_kernels as _k
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    _k = None

LOG2E = 1.4426950408889634
_HALF = (torch.float16, torch.bfloat16)
# Tile configuration per (pv_fp8, head_dim): BM, BN, num_warps, num_stages, prefetch, warp-specialize
# (and optionally maxnreg; _config fills in the defaults).
# Chosen by bench/kernels.py --tune on the H200; other GPUs use the same (correct, maybe not fastest).
CONFIGS: dict[tuple[bool, int], tuple] = {
    (True, 128): (128, 128, 8, 3, True, False), (False, 128): (128, 64, 4, 3, False, False),
    (True, 64): (128, 128, 8, 3, True, False), (False, 64): (128, 64, 4, 3, False, False),
}
USE_TMA = True          # tensor descriptors (TMA) on sm_90+; plain loads elsewhere


def _capability(device) -> tuple[int, int] | None:
    device = torch.device(device) if device is not None else None
    if triton is None or not torch.cuda.is_available() or (device is not None and device.type != "cuda"):
        return None
    return torch.cuda.get_device_capability(device)


def head_dim_ok(head_dim: int) -> bool:
    """A power of two in 32..256: the INT8 Q.K MMA needs K >= 32 (Triton refuses smaller dots)."""
    return 32 <= head_dim <= 256 and not head_dim & (head_dim - 1)


def unsupported_reason(device=None, head_dim: int | None = None, dtype: torch.dtype | None = None,
                       min_sm: int = 80) -> str | None:
    """None when the Triton kernels can run there, else a user-facing reason."""
    if triton is None:
        return "Triton is not installed"
    cap = _capability(device)
    if cap is None:
        return "needs a CUDA GPU"
    if cap[0] * 10 + cap[1] < min_sm:
        return f"needs sm_{min_sm}+, this GPU is sm_{cap[0]}{cap[1]}"
    if head_dim is not None and not head_dim_ok(head_dim):
        return f"head dim {head_dim} is not a power of two in 32..256"
    if dtype is not None and dtype not in _HALF + (torch.float32,):
        return f"dtype {dtype} is not fp16/bf16/fp32"
    return None


def supports(device=None) -> bool:
    """sageattn3 (INT8 Q.K, 16-bit P.V) runs on this device."""
    return unsupported_reason(device, min_sm=80) is None


def supports_fp8(device=None) -> bool:
    """sageattn3_fp8 (e4m3 P.V) runs on this device (FP8 tensor cores: sm_89+)."""
    return unsupported_reason(device, min_sm=89) is None


def _check(q, k, v, name):
    if not (q.dim() == k.dim() == v.dim() == 4):
        raise ValueError(f"{name}: q, k, v must be [B, L, H, D], got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"{name}: shapes do not match: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} "
                         "(need q [B, Lq, H, D] and k, v [B, Lk, H, D])")
    why = unsupported_reason(q.device, q.shape[-1], q.dtype)
    if why:
        raise RuntimeError(f"{name}: {why}")


def _padded(n: int, block: int) -> int:
    return -(-n // block) * block


def quant_int8_rows(x: torch.Tensor, mean: torch.Tensor | None, lpad: int):
    """x [B, L, H, D] -> (INT8 codes [B*H*lpad, D], fp32 scale [B*H*lpad]); rows >= L are zeros."""
    b, n, h, d = x.shape
    codes = torch.empty(b * h * lpad, d, dtype=torch.int8, device=x.device)
    scale = torch.empty(b * h * lpad, dtype=torch.float32, device=x.device)
    block = 64
    grid = (triton.cdiv(lpad, block), b * h)
    _k.quant_int8_rows_kernel[grid](x, mean if mean is not None else scale, codes, scale, n, lpad, h,
                                    x.stride(0), x.stride(1), x.stride(2), HAS_MEAN=mean is not None, D=d,
                                    BLOCK_L=block, num_warps=4)
    return codes, scale


def quant_fp8_v_transposed(v: torch.Tensor, lpad: int):
    """v [B, L, H, D] -> (e4m3 V^T [B*H*D, lpad], fp32 scale [B*H*D] = amax over tokens / 448)."""
    b, n, h, d = v.shape
    lo, hi = torch.aminmax(v, dim=1)                                          # [B, H, D] each, one read
    amax = torch.maximum(hi.float(), -lo.float())
    scale = torch.where(amax > 0, amax / 448.0, torch.ones_like(amax)).contiguous()
    vt = torch.empty(b * h * d, lpad, dtype=torch.float8_e4m3fn, device=v.device)
    block = 64
    grid = (triton.cdiv(lpad, block), b * h)
    _k.quant_fp8_vt_kernel[grid](v, scale, vt, n, lpad, h, v.stride(0), v.stride(1), v.stride(2),
                                 D=d, BLOCK_L=block, num_warps=4)
    return vt, scale


def _descriptor(t: torch.Tensor, block: list[int]):
    from triton.tools.tensor_descriptor import TensorDescriptor
    return TensorDescriptor.from_tensor(t, block)


def _config(config) -> tuple:
    """(BM, BN, warps, stages[, prefetch[, warp_specialize[, maxnreg]]]) with the defaults filled in;
    maxnreg 0 leaves the register budget to ptxas (it takes up to 255 per thread)."""
    bm, bn, warps, stages, prefetch, ws, maxnreg = (tuple(config) + (False, False, 0)[len(config) - 4:])[:7]
    return bm, bn, warps, stages, bool(prefetch), bool(ws), int(maxnreg)


def _int8_attention(q, k, v, pv_fp8: bool, config=None, use_tma: bool | None = None) -> torch.Tensor:
    out_dtype = q.dtype
    if q.dtype not in _HALF:                        # fp32 inputs: 16-bit P.V as bf16, as the reference
        q, k, v = (t.to(torch.bfloat16) for t in (q, k, v))
    b, lq, h, d = q.shape
    lk = k.shape[1]
    bm, bn, warps, stages, prefetch, ws, maxnreg = _config(config or CONFIGS.get((pv_fp8, d), (128, 64, 4, 2)))
    use_tma = (USE_TMA and torch.cuda.get_device_capability(q.device)[0] >= 9) if use_tma is None else use_tma
    lq_pad, lk_pad = _padded(lq, bm), _padded(lk, max(bn, 16))
    kmean = torch.mean(k, dim=1, dtype=torch.float32).contiguous()                   # [B, H, D]
    qc, qs = quant_int8_rows(q, None, lq_pad)
    kc, ks = quant_int8_rows(k, kmean, lk_pad)
    if pv_fp8:
        vsrc, vs = quant_fp8_v_transposed(v, lk_pad)
        v_stride = lk_pad
        v_block = [d, bn]
    else:
        vsrc, vs = v.contiguous().view(b * lk, h * d), qs   # vs unused
        v_stride = h * d
        v_block = [bn, d]
    out = torch.empty(b, lq, h, d, dtype=q.dtype, device=q.device)
    if use_tma:
        triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device=q.device))
        q_src, k_src, v_src = _descriptor(qc, [bm, d]), _descriptor(kc, [bn, d]), _descriptor(vsrc, v_block)
    else:
        q_src, k_src, v_src = qc, kc, vsrc
    grid = (lq_pad // bm, b * h)
    _k.attn_int8_kernel[grid](q_src, qs, k_src, ks, v_src, vs, out, lq, lq_pad, lk, lk_pad, h,
                              out.stride(0), out.stride(1), out.stride(2), LOG2E / math.sqrt(d), v_stride,
                              D=d, BM=bm, BN=bn, PV_FP8=pv_fp8, USE_TMA=use_tma, PREFETCH=prefetch, WS=ws,
                              num_warps=warps, num_stages=stages, **({"maxnreg": maxnreg} if maxnreg else {}))
    return out if out.dtype == out_dtype else out.to(out_dtype)


def sageattn3_fp8(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """sageattn_3_fp8 on [B, L, H, D]: INT8 Q.K with K smoothing, e4m3 P.V; output dtype of q."""
    _check(q, k, v, "sageattn3_fp8")
    return _int8_attention(q, k, v, pv_fp8=True)


def sageattn3(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """sageattn_3 on [B, L, H, D]: INT8 Q.K with K smoothing, fp16/bf16 P.V; output dtype of q."""
    _check(q, k, v, "sageattn3")
    return _int8_attention(q, k, v, pv_fp8=False)


# ----------------------------------------------------------------------------- registry seam
def registry_supports(min_sm: int):
    """A supports(env, head_dim, dtype) for attention/registry.py: judged from the Env (simulated ones too)."""
    def supports(env, head_dim, dtype):
        if triton is None or "triton" not in env.packages:
            return "needs the triton package (pip install triton; CUDA builds of torch include it)"
        if not env.is_cuda:
            return "needs a CUDA GPU"
        if env.sm < min_sm:
            return f"the Triton kernel needs sm_{min_sm}+ ({env.gpu_text()})"
        if head_dim is not None and not head_dim_ok(head_dim):
            return f"the Triton kernel needs a power-of-two head dim in 32..256, got {head_dim}"
        if dtype is not None and dtype not in _HALF + (torch.float32,):
            return f"the Triton kernel takes fp16/bf16/fp32, got {dtype}"
        return None
    return supports


def register_attention(priority: int = 5) -> None:
    """Register the Triton kernels as implementations of their modes (below the sageattn3 package for
    sageattn_3_fp4, which is proven on Blackwell; ours has run there on no GPU yet)."""
    from .registry import Implementation, register
    from .triton_sageattn_fp4 import sageattn3_fp4
    register(Implementation("sageattn_3", "triton", sageattn3, registry_supports(80), priority=priority))
    register(Implementation("sageattn_3_fp8", "triton", sageattn3_fp8, registry_supports(89), priority=priority))
    register(Implementation("sageattn_3_fp4", "triton", sageattn3_fp4, registry_supports(100), priority=priority))
