"""EXPERIMENT (branch exp/gluon-ws): launcher of gluon_ws_kernels.py for sageattn_3 numerics (INT8 Q.K with K
smoothing, 16-bit P.V) on sm_90; quantization shared with triton_sageattn.py."""
from __future__ import annotations

import math

import torch
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from . import gluon_ws_kernels as _g
from .triton_sageattn import LOG2E, _padded, quant_int8_rows

_GL = {torch.int8: gl.int8, torch.bfloat16: gl.bfloat16, torch.float16: gl.float16}


def _desc(t: torch.Tensor, block: list[int]):
    return TensorDescriptor.from_tensor(t, block, gl.NVMMASharedLayout.get_default_for(block, _GL[t.dtype]))


def sageattn3_ws(q, k, v, bn: int = 64, stages: int = 2, consumer_regs: int = 240, maxnreg: int = 168):
    """[B, L, H, D] bf16/fp16 -> same; sageattn_3 numerics through the warp-specialized kernel."""
    b, lq, h, d = q.shape
    lk = k.shape[1]
    bm = 64
    lq_pad, lk_pad = _padded(lq, 2 * bm), _padded(lk, bn)
    kmean = torch.mean(k, dim=1, dtype=torch.float32).contiguous()
    qc, qs = quant_int8_rows(q, None, lq_pad)
    kc, ks = quant_int8_rows(k, kmean, lk_pad)
    vsrc = v.contiguous().view(b * lk, h * d)
    out = torch.empty(b, lq, h, d, dtype=q.dtype, device=q.device)
    grid = (lq_pad // (2 * bm), b * h)
    _g.attn_int8_ws_kernel[grid](_desc(qc, [bm, d]), qs, _desc(kc, [bn, d]), ks, _desc(vsrc, [bn, d]), out,
                                 lq, lq_pad, lk, lk_pad, h, out.stride(0), out.stride(1), out.stride(2),
                                 LOG2E / math.sqrt(d), D=d, BM=bm, BN=bn, STAGES=stages,
                                 CONSUMER_REGS=consumer_regs, num_warps=4, maxnreg=maxnreg)
    return out
