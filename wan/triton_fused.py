"""Triton kernels that fuse the DiT block's element-wise passes (one read, one write per tensor).

The profile of a 14B forward on the H200 (bench/RESULTS.md) spends 30-34% of the time in element-wise
work: fp32 LayerNorm + modulation, fp32 gated residual adds, q/k RMSNorm + 3-D RoPE and their casts,
each a full pass over tokens x 5120 activations. These kernels do the same fp32 math in registers:
- ln_modulate:    LayerNorm(x) * (1 + scale[b]) + shift[b]           -> activation dtype
- gated_residual: x + y * gate[b]  (in fp32)                         -> activation dtype
- rms_rope:       RMSNorm(x) * w, then interleaved-pair rotation     -> activation dtype
                  (ROPE=False: RMSNorm only, for cross-attention queries)
An affine LayerNorm is ln_modulate with scale = weight - 1 and shift = bias (wan/fused.py).
Dispatch and the PyTorch reference path are in wan/fused.py.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _ln_modulate_kernel(X, SCALE, SHIFT, OUT, N, L, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    b = row // L
    cols = tl.arange(0, BLOCK)
    m = cols < N
    x = tl.load(X + row * N + cols, mask=m, other=0.0).to(tl.float32)
    mean = tl.sum(x, 0) / N
    d = tl.where(m, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, 0) / N + eps)
    sc = tl.load(SCALE + b * N + cols, mask=m, other=0.0)
    sh = tl.load(SHIFT + b * N + cols, mask=m, other=0.0)
    y = (d * rstd) * (1.0 + sc) + sh
    tl.store(OUT + row * N + cols, y.to(OUT.dtype.element_ty), mask=m)


@triton.jit
def _gated_residual_kernel(X, Y, GATE, OUT, N, L, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    b = row // L
    cols = tl.arange(0, BLOCK)
    m = cols < N
    x = tl.load(X + row * N + cols, mask=m, other=0.0).to(tl.float32)
    y = tl.load(Y + row * N + cols, mask=m, other=0.0).to(tl.float32)
    g = tl.load(GATE + b * N + cols, mask=m, other=0.0)
    tl.store(OUT + row * N + cols, (x + y * g).to(OUT.dtype.element_ty), mask=m)


@triton.jit
def _rms_rope_kernel(X, W, COS, SIN, OUT, N, L, HALF_HEAD, eps, BLOCK: tl.constexpr, ROPE: tl.constexpr = True):
    row = tl.program_id(0)
    pos = row % L
    p = tl.arange(0, BLOCK)                     # pair index within the row: elements 2p, 2p+1
    m = p < N // 2
    xe = tl.load(X + row * N + 2 * p, mask=m, other=0.0).to(tl.float32)
    xo = tl.load(X + row * N + 2 * p + 1, mask=m, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt((tl.sum(xe * xe, 0) + tl.sum(xo * xo, 0)) / N + eps)
    xe = xe * rstd * tl.load(W + 2 * p, mask=m, other=0.0).to(tl.float32)
    xo = xo * rstd * tl.load(W + 2 * p + 1, mask=m, other=0.0).to(tl.float32)
    if ROPE:
        j = p % HALF_HEAD
        c = tl.load(COS + pos * HALF_HEAD + j, mask=m, other=0.0)
        s = tl.load(SIN + pos * HALF_HEAD + j, mask=m, other=0.0)
        xe, xo = xe * c - xo * s, xo * c + xe * s
    tl.store(OUT + row * N + 2 * p, xe.to(OUT.dtype.element_ty), mask=m)
    tl.store(OUT + row * N + 2 * p + 1, xo.to(OUT.dtype.element_ty), mask=m)


def _warps(block: int) -> int:
    return 8 if block >= 4096 else 4


def ln_modulate(x, scale, shift, eps, out):
    """x [B, L, N] (contiguous), scale/shift [B, N] fp32 -> out [B, L, N]."""
    b, l, n = x.shape
    block = triton.next_power_of_2(n)
    _ln_modulate_kernel[(b * l,)](x, scale, shift, out, n, l, eps, BLOCK=block, num_warps=_warps(block))
    return out


def gated_residual(x, y, gate, out):
    """x, y [B, L, N] (contiguous), gate [B, N] fp32 -> out [B, L, N]."""
    b, l, n = x.shape
    block = triton.next_power_of_2(n)
    _gated_residual_kernel[(b * l,)](x, y, gate, out, n, l, BLOCK=block, num_warps=_warps(block))
    return out


def rms_rope(x, weight, cos, sin, eps, out):
    """x [B, L, N] (contiguous), weight [N], cos/sin [L, head_dim/2] fp32 (None: no rotation) -> out [B, L, N]."""
    b, l, n = x.shape
    block = triton.next_power_of_2(n // 2)
    rope = cos is not None
    _rms_rope_kernel[(b * l,)](x, weight, cos if rope else weight, sin if rope else weight, out, n, l,
                               cos.shape[-1] if rope else 1, eps, BLOCK=block, ROPE=rope, num_warps=_warps(block))
    return out
