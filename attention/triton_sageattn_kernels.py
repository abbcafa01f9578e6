"""Triton kernels behind triton_sageattn.py (imported only when Triton is installed).

Layouts (all produced by the quantization kernels here, padded to a whole number of key blocks so
tiles never straddle two heads; padded rows hold zeros and scale 1):
  Q/K INT8 codes   [B*H*Lpad, D]  int8, scale [B*H*Lpad] fp32 (per token x head, amax / 127)
  V e4m3 (fp8 PV)  [B*H*D, Lpad]  float8_e4m3fn, V transposed (fp8 wgmma wants both operands K-major)
  V bf16/fp16 PV   the caller's v viewed as [B*L, H*D]
Tiles are read either through tensor descriptors (TMA on Hopper) or plain pointer loads (USE_TMA).
"""
from __future__ import annotations

import triton
import triton.language as tl

FP8_MAX = tl.constexpr(448.0)


@triton.jit
def _round_half_even(x):
    # torch.round semantics (ties to even); exact for |x| < 2^22, which covers INT8 codes.
    r = tl.floor(x + 0.5)
    tie = (r - x) == 0.5
    odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
    return tl.where(tie & odd, r - 1.0, r)


@triton.jit
def quant_int8_rows_kernel(x_ptr, mean_ptr, out_ptr, scale_ptr, L, Lpad, H,
                           sxb, sxl, sxh, HAS_MEAN: tl.constexpr, D: tl.constexpr, BLOCK_L: tl.constexpr):
    """INT8 per token x head of x [B, L, H, D] (minus the per-channel mean when HAS_MEAN)."""
    pid_l = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    rows = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    cols = tl.arange(0, D)
    valid = rows < L
    x = tl.load(x_ptr + b * sxb + h * sxh + rows[:, None] * sxl + cols[None, :],
                mask=valid[:, None], other=0.0).to(tl.float32)
    if HAS_MEAN:
        mean = tl.load(mean_ptr + bh * D + cols)
        x = tl.where(valid[:, None], x - mean[None, :], 0.0)
    amax = tl.max(tl.abs(x), axis=1)
    scale = tl.where(amax > 0, tl.math.div_rn(amax, tl.full(amax.shape, 127.0, tl.float32)), 1.0)
    q = _round_half_even(tl.math.div_rn(x, scale[:, None]))
    q = tl.minimum(tl.maximum(q, -127.0), 127.0)
    out_rows = bh * Lpad + rows
    tl.store(out_ptr + out_rows[:, None] * D + cols[None, :], q.to(tl.int8), mask=(rows < Lpad)[:, None])
    tl.store(scale_ptr + out_rows, scale, mask=rows < Lpad)


@triton.jit
def quant_fp8_vt_kernel(v_ptr, scale_ptr, out_ptr, L, Lpad, H, svb, svl, svh,
                        D: tl.constexpr, BLOCK_L: tl.constexpr):
    """V [B, L, H, D] -> e4m3 codes of V / scale[b, h, d], stored transposed as [B*H*D, Lpad]."""
    pid_l = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    rows = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    cols = tl.arange(0, D)
    v = tl.load(v_ptr + b * svb + h * svh + rows[:, None] * svl + cols[None, :],
                mask=(rows < L)[:, None], other=0.0).to(tl.float32)
    s = tl.load(scale_ptr + bh * D + cols)
    c = tl.math.div_rn(v, s[None, :])
    c = tl.minimum(tl.maximum(c, -FP8_MAX), FP8_MAX).to(tl.float8e4nv)
    ct = tl.trans(c)                                                # [D, BLOCK_L]
    tl.store(out_ptr + (bh * D + cols)[:, None] * Lpad + rows[None, :], ct, mask=(rows < Lpad)[None, :])


@triton.jit
def _tile(src, r, c, R: tl.constexpr, C: tl.constexpr, row_stride, USE_TMA: tl.constexpr,
          row_limit=0, MASK_ROWS: tl.constexpr = False):
    if USE_TMA:
        return src.load([r, c])       # rows past the tensor's end read as zeros
    else:
        rr = r + tl.arange(0, R)
        cc = c + tl.arange(0, C)
        if MASK_ROWS:
            return tl.load(src + rr[:, None] * row_stride + cc[None, :], mask=(rr < row_limit)[:, None], other=0.0)
        else:
            return tl.load(src + rr[:, None] * row_stride + cc[None, :])


@triton.jit
def _qk(q, k_src, kv_row, n0, D: tl.constexpr, BN: tl.constexpr, USE_TMA: tl.constexpr):
    k = _tile(k_src, kv_row + n0, 0, BN, D, D, USE_TMA)                    # int8 [BN, D]
    return tl.dot(q, tl.trans(k))                                            # int32 [BM, BN]


@triton.jit
def _softmax_pv(acc, m_i, l_i, s, qs, ks_ptr, v_src, kv_row, v_row, v_col, n0, L, Lpad_or_hd,
                PV_FP8: tl.constexpr, MASK: tl.constexpr, D: tl.constexpr, BN: tl.constexpr,
                USE_TMA: tl.constexpr):
    ks = tl.load(ks_ptr + kv_row + n0 + tl.arange(0, BN))
    x = s.to(tl.float32) * ks[None, :]
    if MASK:
        x = tl.where((n0 + tl.arange(0, BN))[None, :] < L, x, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(x, axis=1) * qs)                          # qs > 0: max commutes
    p = tl.math.exp2(x * qs[:, None] - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None]
    if PV_FP8:
        vt = _tile(v_src, v_row, n0, D, BN, Lpad_or_hd, USE_TMA)             # e4m3 [D, BN]
        acc = acc + tl.dot((p * FP8_MAX).to(tl.float8e4nv), tl.trans(vt))
    else:
        v = _tile(v_src, v_row + n0, v_col, BN, D, Lpad_or_hd, USE_TMA, v_row + L, MASK)  # 16-bit [BN, D]
        acc = tl.dot(p.to(v.dtype), v, acc)
    return acc, m_new, l_i


@triton.jit
def attn_int8_kernel(q_src, qs_ptr, k_src, ks_ptr, v_src, vs_ptr, o_ptr, Lq, Lq_pad, L, Lpad, H,
                     sob, sol, soh, qk_scale, v_row_stride,
                     D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, PV_FP8: tl.constexpr,
                     USE_TMA: tl.constexpr, PREFETCH: tl.constexpr = False, WS: tl.constexpr = False):
    """One [BM, D] output tile of one (batch, head): INT8 Q.K (per-token scales), online softmax
    in exp2, P.V in e4m3 (PV_FP8) or in the input's 16-bit type, fp32 accumulation.
    PREFETCH issues the next block's Q.K before this block's softmax so the tensor cores work on it
    while the softmax runs (one extra S tile in registers); WS asks Triton to warp-specialize."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    kv_row = bh * Lpad
    q = _tile(q_src, bh * Lq_pad + pid_m * BM, 0, BM, D, D, USE_TMA)
    offs_m = pid_m * BM + tl.arange(0, BM)
    qs = tl.load(qs_ptr + bh * Lq_pad + offs_m) * qk_scale                  # scale * log2(e) / sqrt(D)
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, D], tl.float32)
    if PV_FP8:
        v_row = bh * D
        v_col = 0
    else:
        v_row = b * L
        v_col = h * D
    if PREFETCH:
        n_last = tl.cdiv(L, BN) * BN - BN
        s = _qk(q, k_src, kv_row, 0, D, BN, USE_TMA)
        for n0 in tl.range(0, n_last, BN, warp_specialize=WS):
            s_next = _qk(q, k_src, kv_row, n0 + BN, D, BN, USE_TMA)
            acc, m_i, l_i = _softmax_pv(acc, m_i, l_i, s, qs, ks_ptr, v_src, kv_row, v_row, v_col, n0, L,
                                        v_row_stride, PV_FP8, False, D, BN, USE_TMA)
            s = s_next
        acc, m_i, l_i = _softmax_pv(acc, m_i, l_i, s, qs, ks_ptr, v_src, kv_row, v_row, v_col, n_last, L,
                                    v_row_stride, PV_FP8, True, D, BN, USE_TMA)
    else:
        n_full = (L // BN) * BN
        for n0 in tl.range(0, n_full, BN, warp_specialize=WS):
            s = _qk(q, k_src, kv_row, n0, D, BN, USE_TMA)
            acc, m_i, l_i = _softmax_pv(acc, m_i, l_i, s, qs, ks_ptr, v_src, kv_row, v_row, v_col, n0, L,
                                        v_row_stride, PV_FP8, False, D, BN, USE_TMA)
        if n_full < L:
            s = _qk(q, k_src, kv_row, n_full, D, BN, USE_TMA)
            acc, m_i, l_i = _softmax_pv(acc, m_i, l_i, s, qs, ks_ptr, v_src, kv_row, v_row, v_col, n_full, L,
                                        v_row_stride, PV_FP8, True, D, BN, USE_TMA)
    cols = tl.arange(0, D)
    out = acc / l_i[:, None]
    if PV_FP8:
        vs = tl.load(vs_ptr + bh * D + cols) * (1.0 / FP8_MAX)
        out = out * vs[None, :]
    tl.store(o_ptr + b * sob + h * soh + offs_m[:, None] * sol + cols[None, :],
             out.to(o_ptr.dtype.element_ty), mask=(offs_m < Lq)[:, None])
