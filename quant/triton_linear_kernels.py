"""Triton kernels behind triton_linear.py (imported only when Triton is installed).

NVFP4 weights as stored by quant/linear.py: packed uint8 [N, K/2] (element 2i in the low nibble),
e4m3 block scales [N, K/16], fp32 tensor scale; MXFP4: the same packing, e8m0 block scales [N, K/32].
Numerics follow quant/fp4.py and quant/fp8.py.
"""
from __future__ import annotations

import triton
import triton.language as tl

FP8_MAX = tl.constexpr(448.0)
INV_FP8_MAX = tl.constexpr(0.002232142857142857)   # fp32(1/448) = 0x3B124925


@triton.jit
def quant_fp8_rows_kernel(x_ptr, out_ptr, scale_ptr, M, K, sxm, BLOCK_K: tl.constexpr, ROWS: tl.constexpr):
    """Per-token e4m3: scale = amax(|row|) / 448 (1 for a zero row), codes = e4m3(x / scale), one pass."""
    pid = tl.program_id(0)
    rows = pid * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_K)
    mask = (rows < M)[:, None] & (cols < K)[None, :]
    x = tl.load(x_ptr + rows[:, None] * sxm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    amax = tl.max(tl.abs(x), axis=1)
    scale = tl.where(amax > 0, amax * INV_FP8_MAX, 1.0)         # torch's CUDA "amax / 448" is amax * fp32(1/448)
    inv = tl.math.div_rn(tl.full(scale.shape, 1.0, tl.float32), scale)
    c = x * inv[:, None]                                         # vs x / scale: differs in ~1e-6 of elements
    c = tl.minimum(tl.maximum(c, -FP8_MAX), FP8_MAX)
    tl.store(out_ptr + rows[:, None] * K + cols[None, :], c.to(tl.float8e4nv), mask=mask)
    tl.store(scale_ptr + rows, scale, mask=rows < M)


@triton.jit
def _e2m1_value(code):
    """4-bit e2m1 code (int32, sign in bit 3) -> fp32 value: 0, .5, 1, 1.5, 2, 3, 4, 6 and negatives."""
    e = (code >> 1) & 3
    m = (code & 1).to(tl.float32)
    mag = tl.where(e == 0, m * 0.5, (1.0 + m * 0.5) * tl.math.exp2((e - 1).to(tl.float32)))
    return tl.where((code & 8) != 0, -mag, mag)


@triton.jit
def _unpack_e2m1(packed, R: tl.constexpr, C: tl.constexpr):
    """Packed codes [R, C/2] (any int type; element 2i in the low nibble) -> fp32 values [R, C]."""
    p = packed.to(tl.int32)
    return tl.reshape(tl.join(_e2m1_value(p & 15), _e2m1_value(p >> 4)), (R, C))


@triton.jit
def _nvfp4_tile(w_ptr, bs_ptr, ts, rows, k0, Kh, Kb, BR: tl.constexpr, BK: tl.constexpr, row_mask):
    """Dequantized fp32 tile [BR, BK] of an NVFP4 weight starting at column k0 (k0 % 16 == 0)."""
    kh = k0 // 2 + tl.arange(0, BK // 2)
    vals = _unpack_e2m1(tl.load(w_ptr + rows[:, None] * Kh + kh[None, :], mask=row_mask[:, None], other=0), BR, BK)
    kb = k0 // 16 + tl.arange(0, BK // 16)
    bs = tl.load(bs_ptr + rows[:, None] * Kb + kb[None, :], mask=row_mask[:, None], other=0.0).to(tl.float32)
    scale = bs * ts                                                          # as quant/fp4.dequantize_nvfp4
    vals = tl.reshape(vals, (BR, BK // 16, 16)) * scale[:, :, None]
    return tl.reshape(vals, (BR, BK))


@triton.jit
def _e8m0_value(code):
    """e8m0 code (int32 0..255) -> 2^(code - 127) exactly, from the bits (255 -> NaN, as quant/fp4.decode_e8m0)."""
    normal = (code << 23).to(tl.float32, bitcast=True)                      # codes 1..254
    v = tl.where(code == 0, (tl.full(code.shape, 0x00400000, tl.int32)).to(tl.float32, bitcast=True), normal)
    return tl.where(code == 255, float("nan"), v)


@triton.jit
def mxfp4_dequant_kernel(w_ptr, bs_ptr, out_ptr, N, K, BR: tl.constexpr, BK: tl.constexpr):
    """MXFP4 [N, K] -> dense W in out's dtype, as quant.fp4.dequantize_mxfp4.
    K is a multiple of BK, and BK of 32 (the MXFP4 block)."""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    k0 = tl.program_id(1) * BK
    row_mask = rows < N
    kh = k0 // 2 + tl.arange(0, BK // 2)
    vals = _unpack_e2m1(tl.load(w_ptr + rows[:, None] * (K // 2) + kh[None, :], mask=row_mask[:, None], other=0),
                        BR, BK)
    kb = k0 // 32 + tl.arange(0, BK // 32)
    code = tl.load(bs_ptr + rows[:, None] * (K // 32) + kb[None, :], mask=row_mask[:, None], other=127).to(tl.int32)
    w = tl.reshape(tl.reshape(vals, (BR, BK // 32, 32)) * _e8m0_value(code)[:, :, None], (BR, BK))
    cols = k0 + tl.arange(0, BK)
    tl.store(out_ptr + rows[:, None] * K + cols[None, :], w.to(out_ptr.dtype.element_ty), mask=row_mask[:, None])


@triton.jit
def nvfp4_dequant_kernel(w_ptr, bs_ptr, ts_ptr, rs_ptr, out_ptr, N, K, TO_FP8: tl.constexpr,
                         BR: tl.constexpr, BK: tl.constexpr):
    """NVFP4 [N, K] -> bf16/fp16 W, or (TO_FP8) e4m3 codes of W / row_scale[n] (the W4A8 operand)."""
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    k0 = tl.program_id(1) * BK
    row_mask = rows < N
    w = _nvfp4_tile(w_ptr, bs_ptr, tl.load(ts_ptr), rows, k0, K // 2, K // 16, BR, BK, row_mask)
    cols = k0 + tl.arange(0, BK)
    if TO_FP8:
        rs = tl.load(rs_ptr + rows, mask=row_mask, other=1.0)
        w = tl.math.div_rn(w, rs[:, None])
        w = tl.minimum(tl.maximum(w, -FP8_MAX), FP8_MAX)
    tl.store(out_ptr + rows[:, None] * K + cols[None, :], w.to(out_ptr.dtype.element_ty), mask=row_mask[:, None])


@triton.jit
def w4a16_gemm_kernel(x_ptr, w_ptr, bs_ptr, ts_ptr, bias_ptr, out_ptr, M, N, K, sxm,
                      HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                      GROUP_M: tl.constexpr):
    """out[M, N] = x[M, K] @ dequant(W)^T (+ bias): the NVFP4 tile is decoded in registers to the
    activation dtype and fed to the 16-bit tensor cores; the weight is read from memory at 4.5 bits."""
    pid = tl.program_id(0)
    grid_m = tl.cdiv(M, BM)
    grid_n = tl.cdiv(N, BN)
    width = GROUP_M * grid_n                                                  # grouped order: L2 reuse
    group = pid // width
    first_m = group * GROUP_M
    size_m = tl.minimum(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    ts = tl.load(ts_ptr)
    acc = tl.zeros([BM, BN], tl.float32)
    for k0 in range(0, K, BK):
        a = tl.load(x_ptr + rm[:, None] * sxm + (k0 + rk)[None, :], mask=(rm < M)[:, None], other=0.0)
        w = _nvfp4_tile(w_ptr, bs_ptr, ts, rn, k0, K // 2, K // 16, BN, BK, rn < N)
        acc = tl.dot(a, tl.trans(w.to(a.dtype)), acc)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + rm[:, None] * N + rn[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=(rm < M)[:, None] & (rn < N)[None, :])


@triton.jit
def fp4_operand(packed, scales, R: tl.constexpr, C: tl.constexpr):
    """Packed e2m1 [R, C/2] + e4m3 scales [R, C/16] -> fp16 [R, C] (exact: <= 6 significant bits, >= 2^-10).
    What tl.dot_scaled does in software where FP4 MMA is missing, written out because Triton 3.6
    cannot emulate e4m3-scaled (NVFP4) dot_scaled on sm_90."""
    vals = tl.reshape(_unpack_e2m1(packed, R, C), (R, C // 16, 16)) * scales.to(tl.float32)[:, :, None]
    return tl.reshape(vals, (R, C)).to(tl.float16)


@triton.jit
def w4a4_gemm_kernel(xq_ptr, xs_ptr, w_ptr, ws_ptr, alpha_ptr, bias_ptr, out_ptr, M, N, K,
                     HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                     NATIVE: tl.constexpr, FMT: tl.constexpr = "e2m1"):
    """NVFP4 x NVFP4: tl.dot_scaled (block-scaled FP4 MMA) when NATIVE (sm_100+), else the same
    products decoded to fp16 (exact) on the 16-bit tensor cores; alpha = both tensor scales."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    acc = tl.zeros([BM, BN], tl.float32)
    for k0 in range(0, K, BK):
        kh = k0 // 2 + tl.arange(0, BK // 2)
        kb = k0 // 16 + tl.arange(0, BK // 16)
        a = tl.load(xq_ptr + rm[:, None] * (K // 2) + kh[None, :], mask=(rm < M)[:, None], other=0)
        a_s = tl.load(xs_ptr + rm[:, None] * (K // 16) + kb[None, :], mask=(rm < M)[:, None], other=0.0)
        b = tl.load(w_ptr + rn[:, None] * (K // 2) + kh[None, :], mask=(rn < N)[:, None], other=0)
        b_s = tl.load(ws_ptr + rn[:, None] * (K // 16) + kb[None, :], mask=(rn < N)[:, None], other=0.0)
        if NATIVE:
            acc = tl.dot_scaled(a, a_s, FMT, tl.trans(b), b_s, FMT, acc)
        else:
            acc = tl.dot(fp4_operand(a, a_s, BM, BK), tl.trans(fp4_operand(b, b_s, BN, BK)), acc)
    acc = acc * tl.load(alpha_ptr)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + rm[:, None] * N + rn[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=(rm < M)[:, None] & (rn < N)[None, :])
