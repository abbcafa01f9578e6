"""Triton kernel behind triton_sageattn_fp4.py (imported only when Triton is installed).

Buffers: Q, K packed e2m1 [B*H*Lpad, D/2] with e4m3 scales [B*H*Lpad, D/16]; V transposed, packed
along tokens: [B*H*D, Lkpad/2] with scales [B*H*D, Lkpad/16]. Pointer loads (speed is not the
point on GPUs without FP4 MMA; on sm_100/120 a TMA variant would be the next step).
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..quant.triton_linear_kernels import fp4_operand

P_SCALE = tl.constexpr(2688.0)  # 448 * 6: the row max (1) maps to the largest NVFP4 value


@triton.jit
def _e2m1_code_pos(a):
    """Nearest-even e2m1 code of non-negative a (saturating at 6), as int32 0..7 (quant/fp4.py rule)."""
    c = (a > 0.25).to(tl.int32) + (a >= 0.75).to(tl.int32) + (a > 1.25).to(tl.int32)
    c += (a >= 1.75).to(tl.int32) + (a > 2.5).to(tl.int32) + (a >= 3.5).to(tl.int32) + (a > 5.0).to(tl.int32)
    return c


@triton.jit
def _e2m1_pos_value(c):
    """Code 0..7 -> 0, .5, 1, 1.5, 2, 3, 4, 6."""
    e = c >> 1
    m = (c & 1).to(tl.float32)
    return tl.where(e == 0, m * 0.5, (1.0 + m * 0.5) * tl.math.exp2((e - 1).to(tl.float32)))


@triton.jit
def attn_fp4_kernel(qp, qb, kp, kb, vp, vb, qk_scale_ptr, out_scale_ptr, qmean_ptr, ks_ptr, o_ptr,
                    Lq, Lq_pad, L, Lpad, H, G, skb, skl, skh, sob, sol, soh, delta_scale,
                    D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, QBLK: tl.constexpr,
                    NATIVE: tl.constexpr, FMT: tl.constexpr = "e2m1"):
    """NATIVE: tl.dot_scaled (sm_100+). Otherwise the same e2m1 x e4m3 products decoded to fp16 (exact)
    on 16-bit tensor cores: Triton 3.6 cannot emulate NVFP4 (e4m3-scaled) dot_scaled on sm_90."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = pid_m * BM + tl.arange(0, BM)
    dh = tl.arange(0, D // 2)
    ds = tl.arange(0, D // 16)
    dd = tl.arange(0, D)
    q = tl.load(qp + (bh * Lq_pad + offs_m)[:, None] * (D // 2) + dh[None, :])
    q_s = tl.load(qb + (bh * Lq_pad + offs_m)[:, None] * (D // 16) + ds[None, :])
    group = tl.minimum((pid_m * BM) // QBLK, G - 1)                  # BM divides QBLK: one group
    qmean = tl.load(qmean_ptr + (bh * G + group) * D + dd)
    qk_scale = tl.load(qk_scale_ptr + bh)
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, D], tl.float32)
    for n0 in range(0, L, BN):
        offs_n = n0 + tl.arange(0, BN)
        k = tl.load(kp + (bh * Lpad + offs_n)[:, None] * (D // 2) + dh[None, :])
        k_s = tl.load(kb + (bh * Lpad + offs_n)[:, None] * (D // 16) + ds[None, :])
        if NATIVE:
            s = tl.dot_scaled(q, q_s, FMT, tl.trans(k), k_s, FMT)                         # [BM, BN]
        else:
            s = tl.dot(fp4_operand(q, q_s, BM, D), tl.trans(fp4_operand(k, k_s, BN, D)))
        kf = tl.load(ks_ptr + b * skb + h * skh + offs_n[:, None] * skl + dd[None, :],
                     mask=(offs_n < L)[:, None], other=0.0)
        delta = tl.sum(kf * qmean[None, :], axis=1) * delta_scale                         # qmean . k / sqrt(D) * log2e
        x = s * qk_scale + delta[None, :]
        x = tl.where((offs_n < L)[None, :], x, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(x, axis=1))
        p = tl.math.exp2(x - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        # P -> NVFP4: per-row scale 2688 (row max 1 -> 6 * 448), blocks of 16 keys with e4m3 scales.
        pb = tl.reshape(p * P_SCALE, (BM, BN // 16, 16))
        sb = tl.math.div_rn(tl.max(pb, axis=2), tl.full((BM, BN // 16), 6.0, tl.float32))
        sb8 = tl.minimum(sb, 448.0).to(tl.float8e4nv)
        sbf = sb8.to(tl.float32)
        safe = tl.where(sbf > 0, sbf, 1.0)
        codes = tl.where(sbf[:, :, None] > 0, _e2m1_code_pos(tl.math.div_rn(pb, safe[:, :, None])), 0)
        dv = bh * D + dd
        nh = n0 // 2 + tl.arange(0, BN // 2)
        nb = n0 // 16 + tl.arange(0, BN // 16)
        vt = tl.load(vp + dv[:, None] * (Lpad // 2) + nh[None, :])                     # [D, BN/2]
        v_s = tl.load(vb + dv[:, None] * (Lpad // 16) + nb[None, :])                    # [D, BN/16]
        if NATIVE:
            lo, hi = tl.split(tl.reshape(codes, (BM, BN // 2, 2)))
            p_packed = (lo | (hi << 4)).to(tl.uint8)
            pv = tl.dot_scaled(p_packed, sb8, FMT, tl.trans(vt), v_s, FMT)
        else:
            pvals = tl.reshape(_e2m1_pos_value(codes) * sbf[:, :, None], (BM, BN)).to(tl.float16)
            pv = tl.dot(pvals, tl.trans(fp4_operand(vt, v_s, D, BN)))
        acc = acc * alpha[:, None] + pv
        m_i = m_new
    out = acc / l_i[:, None] * tl.load(out_scale_ptr + bh)
    tl.store(o_ptr + b * sob + h * soh + offs_m[:, None] * sol + dd[None, :], out.to(o_ptr.dtype.element_ty),
             mask=(offs_m < Lq)[:, None])
