"""sageattn3_fp4: NVFP4 microscaled attention (SageAttention3-style) through tl.dot_scaled.

Numerics of attention/reference.py reference_sageattn_3_fp4: K smoothed (token mean), Q smoothed per
128-token block with the exact correction qmean . k^T added to the scores; Q, K NVFP4 along the head
dim, V NVFP4 along tokens (16-element blocks, e4m3 block scales, fp32 scale per batch x head); P
two-level: row max -> 448 * 6, then NVFP4 blocks of 16 keys. Both matmuls are tl.dot_scaled with
e2m1 operands: block-scaled FP4 tensor cores on sm_100/sm_120. Older GPUs run the same e2m1 x e4m3
products decoded to fp16 (exact) on 16-bit tensor cores, because Triton 3.6 cannot emulate NVFP4
dot_scaled on sm_90; the H200 runs it only to prove the numerics (no speed claim there). Q/K/V are quantized with PyTorch
(quant/fp4.py's codes and packing), P inside the kernel.
"""
from __future__ import annotations

import math

import torch

from ..quant.fp4 import encode_e2m1, pack_nibbles
from .triton_sageattn import LOG2E, _check, _padded, triton

if triton is not None:
    from . import triton_sageattn_fp4_kernels as _k
else:  # pragma: no cover
    _k = None

FP4_BLOCK = 16
Q_SMOOTH_BLOCK = 128
P_SCALE = 448.0 * 6.0
CONFIG = (64, 64, 4, 2)      # BM, BN, num_warps, num_stages


def supports_native(device=None) -> bool:
    """Block-scaled FP4 tensor cores (sm_100+): the only place this mode is fast."""
    if triton is None or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device)[0] >= 10


def nvfp4_pack(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x fp32 [G, R, C] (C a multiple of 16; blocks along C, one tensor per G) ->
    (packed uint8 [G, R, C/2], e4m3 block scales [G, R, C/16], fp32 tensor scale [G])."""
    g, r, c = x.shape
    amax = x.abs().amax(dim=(1, 2), keepdim=True)
    s_t = torch.where(amax > 0, amax / P_SCALE, torch.ones_like(amax))
    blocks = (x / s_t).view(g, r, c // FP4_BLOCK, FP4_BLOCK)
    s_b = (blocks.abs().amax(dim=-1, keepdim=True) / 6.0).clamp(max=448.0).to(torch.float8_e4m3fn)
    sbf = s_b.float()
    scaled = torch.where(sbf > 0, blocks / torch.where(sbf > 0, sbf, torch.ones_like(sbf)), torch.zeros_like(blocks))
    codes = encode_e2m1(scaled).view(g, r, c)
    return pack_nibbles(codes).contiguous(), s_b.view(g, r, c // FP4_BLOCK).contiguous(), s_t.view(g).contiguous()


def sageattn3_fp4(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config=None) -> torch.Tensor:
    """sageattn_3_fp4 on [B, L, H, D] (D a multiple of 32); output dtype of q."""
    _check(q, k, v, "sageattn3_fp4")
    b, lq, h, d = q.shape
    lk = k.shape[1]
    bm, bn, warps, stages = config or CONFIG
    lq_pad, lk_pad = _padded(lq, bm), _padded(lk, bn)
    qf, kf = q.float(), k.float()
    kmean = kf.mean(dim=1, keepdim=True)
    ks = kf - kmean                                                            # smoothed K [B, Lk, H, D]
    groups = -(-lq // Q_SMOOTH_BLOCK)
    gi = torch.arange(lq, device=q.device) // Q_SMOOTH_BLOCK
    qmean = qf.new_zeros(b, groups, h, d).index_add_(1, gi, qf)
    qmean = qmean / torch.bincount(gi, minlength=groups).to(qf.dtype).view(1, -1, 1, 1)
    qsm = qf - qmean[:, gi]

    def heads_rows(x, n, npad):                                                # [B, n, H, D] -> [B*H, npad, D]
        x = x.permute(0, 2, 1, 3).reshape(b * h, n, d)
        return torch.nn.functional.pad(x, (0, 0, 0, npad - n))

    # Tensor scales over real tokens only: zero padding changes no amax.
    qp, qb, qt = nvfp4_pack(heads_rows(qsm, lq, lq_pad))
    kp, kb, kt = nvfp4_pack(heads_rows(ks, lk, lk_pad))
    vp, vb, vt = nvfp4_pack(heads_rows(v.float(), lk, lk_pad).transpose(1, 2).contiguous())   # [BH, D, Lkpad]
    qk_scale = (qt * kt * (LOG2E / math.sqrt(d))).contiguous()                 # [B*H]
    out_scale = (vt / P_SCALE).contiguous()
    qmean_bh = qmean.permute(0, 2, 1, 3).reshape(b * h, groups, d).contiguous()
    ksm = ks.to(torch.float32).contiguous()                                    # [B, Lk, H, D] for the correction
    out = torch.empty(b, lq, h, d, dtype=q.dtype if q.dtype in (torch.float16, torch.bfloat16) else torch.float32,
                      device=q.device)
    grid = (lq_pad // bm, b * h)
    _k.attn_fp4_kernel[grid](qp, qb, kp, kb, vp, vb, qk_scale, out_scale, qmean_bh, ksm, out,
                             lq, lq_pad, lk, lk_pad, h, groups, ksm.stride(0), ksm.stride(1), ksm.stride(2),
                             out.stride(0), out.stride(1), out.stride(2), LOG2E / math.sqrt(d),
                             D=d, BM=bm, BN=bn, QBLK=Q_SMOOTH_BLOCK, NATIVE=supports_native(q.device),
                             num_warps=warps, num_stages=stages)
    return out if out.dtype == q.dtype else out.to(q.dtype)
