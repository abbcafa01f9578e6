"""Reference numerics of the quantized attention modes: the spec the GPU kernels are checked against.

Every function simulates its mode's quantization exactly (formats.py), then does the arithmetic in
fp32. Matmul operands are kept as codes (INT8, e4m3, fp16/bf16, e2m1 x e4m3) whose products are
exact in fp32 and TF32 alike, with scales applied outside, so TF32 settings and devices differ only
by fp32 summation order (and the rare INT8/e4m3 code it flips): on the H200 at L=37 800, TF32 on vs
off differs by <= 2.5e-4 absolute, and GPU vs CPU outputs by 3e-4 (sageattn_3) / 2e-3 (fp8)
relative. A GPU kernel should match its reference to well under a tenth of the mode's own error.
Inputs/outputs are [B, L, H, D]; the softmax scale is 1/sqrt(D); attention is non-causal and
unmasked, as in Wan. Ragged lengths (not multiples of any block) and Lq != Lk are fine.

sageattn_3 / sageattn_3_fp8 (SageAttention-style INT8 Q.K):
  * K smoothing: k <- k - mean_over_tokens(k), per (batch, head, channel). Softmax is invariant to
    it (each score row shifts by a constant q.mean), but it removes K's channel bias so INT8 keeps
    its resolution for the part of K that varies.
  * INT8 Q and K: one scale per token x head (Q_BLOCK = K_BLOCK = 1; amax/127 over the token's
    channels). Round to nearest, ties to even, clamp +-127. Q.K is exact in integers (|sum| <=
    127^2 * D < 2^24 for D <= 1040). Why per token rather than SageAttention1's 128/64-token blocks:
    measured on biased K, 128/64 blocks give 0.021-0.023 (as the SA1 and comfy-kitchen kernels,
    0.026 / 0.027 in kernels_quant_perf.md section 2.2) and miss the 0.02 bar; per token: 0.016.
    In a kernel they cost one scale vector per tile and an outer-product multiply of the S tile.
  * Softmax in fp32 against the exact row max: P = exp(S - rowmax) in [0, 1] with max exactly 1;
    the row sum l is taken from the unquantized P (as flash-style kernels do). A kernel that uses a
    running max rounds P at a different scale; it agrees with this reference within rounding noise.
  * sageattn_3: P and V in fp16 (bf16 when the inputs are bf16), products accumulated in fp32.
    sageattn_3_fp8: P -> e4m3 as round(P * 448) / 448 (max 1 -> 448); V -> e4m3 with one scale per
    (batch, head, channel) = amax over tokens / 448; products accumulated in fp32.
sageattn_3_fp4 (SageAttention3-style NVFP4):
  * K smoothing as above; Q smoothing: subtract the mean of each 128-token Q block, and add back
    the exact correction qmean . k_smoothed^T (fp32) to the scores.
  * Q, K: NVFP4 along the channel dim (the Q.K dot dim): e2m1 values in blocks of 16, one e4m3
    scale per block, one fp32 scale per (batch, head). V: NVFP4 along tokens (the P.V dot dim).
  * P: two-level: the fp32 per-row scale maps the row max (1) to 448 * 6, then NVFP4 blocks of 16
    keys with e4m3 block scales. l from the unquantized P.

Measured relative errors (Frobenius, vs fp64 attention of the same bf16 inputs; B=1, H=2, D=128,
L=512 and L=1000 alike; iid N(0,1) / "biased K" = 2*q and k + 4*N(0,1) per-channel offset, as in
kernels_quant_perf.md section 2.2):
  sageattn_3      0.009 / 0.016   (without K smoothing, biased K: 0.044-0.048)
  sageattn_3_fp8  0.036 / 0.035   (without K smoothing, biased K: 0.054)
  sageattn_3_fp4  0.19  / 0.26    (without smoothing, biased K: 0.71)
At the target shape on the H200 (B=1, H=4, L=37 800, D=128, same input kinds; sdpa bf16 gives
0.0023 / 0.0020 there, as in section 2.2): sageattn_3 0.0093 / 0.0188, sageattn_3_fp8 0.038 /
0.038 (unsmoothed biased K 0.073), sageattn_3_fp4 0.19 / 0.30. The reference itself takes 0.4-1 s
per call for those 4 heads (about 100x sdpa), hence the [WARN] when it runs on a GPU.
The fp8 figure is a floor of the format, not of this design: e4m3 rounding of V alone costs 0.025
and of P alone 0.024 (independent errors), so no e4m3 P.V reaches the 0.02 bar of section 3.1;
only the fp16/bf16 P.V of sageattn_3 does. NVFP4 costs ~0.09 each for P and V and 0.13-0.24 for Q.K.
(tests/test_attention_reference.py asserts these with margin.)
"""
from __future__ import annotations

import torch

from .formats import FP8_E4M3_MAX, INT8_MAX, nvfp4_quant, round_fp8_e4m3, round_int8

Q_BLOCK = 1            # tokens per INT8 scale of Q (per head): per token, see the module docstring
K_BLOCK = 1            # tokens per INT8 scale of K (per head)
FP4_BLOCK = 16         # NVFP4 micro-block along the dot-product dim
FP4_Q_SMOOTH_BLOCK = 128
SCORE_ELEMENTS = 1 << 25   # scores held at once (B*H*rows*Lk); memory only, not numerics


def smooth_k(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """k [B, L, H, D] -> (k - mean over tokens, mean [B, 1, H, D]) in fp32 (fp64 stays fp64)."""
    k = k.to(torch.promote_types(k.dtype, torch.float32))
    mean = k.mean(dim=1, keepdim=True)
    return k - mean, mean


def int8_per_block(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """INT8 of x [B, L, H, D] with one scale per `block` tokens x head (amax / 127).

    Returns (codes as fp32 integers in [-127, 127], scale per token [B, L, H, 1]). A ragged last
    block uses only its own tokens. An all-zero block gets scale 1 (its codes are 0).
    """
    x = x.float()
    b, n, h, d = x.shape
    pad = (-n) % block
    xp = torch.cat([x, x.new_zeros(b, pad, h, d)], dim=1) if pad else x
    amax = xp.view(b, -1, block, h, d).abs().amax(dim=(2, 4), keepdim=True)
    scale = torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax))
    scale = scale.expand(-1, -1, block, -1, 1).reshape(b, -1, h, 1)[:, :n]
    return round_int8(x / scale), scale


def fp8_per_channel(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 V with one scale per (batch, head, channel) over all tokens: (codes, scale [B, 1, H, D])."""
    v = v.float()
    amax = v.abs().amax(dim=1, keepdim=True)
    scale = torch.where(amax > 0, amax / FP8_E4M3_MAX, torch.ones_like(amax))
    return round_fp8_e4m3(v / scale), scale


def quantize_p_fp8(p: torch.Tensor) -> torch.Tensor:
    """e4m3 codes of P in [0, 1]: P * 448 rounded, so the row max 1 maps to the format max 448."""
    return round_fp8_e4m3(p * FP8_E4M3_MAX)


def _bhld(x: torch.Tensor) -> torch.Tensor:
    return x.float().transpose(1, 2)          # [B, L, H, D] -> [B, H, L, D]


def _row_chunks(q_bhld: torch.Tensor, lk: int):
    b, h, lq, _ = q_bhld.shape
    rows = max(1, min(lq, SCORE_ELEMENTS // max(1, b * h * lk)))
    for start in range(0, lq, rows):
        yield slice(start, start + rows)


def _softmax(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """P = exp(s - rowmax) in [0, 1] (row max exactly 1) and the row sum l of the unquantized P."""
    p = torch.exp(s - s.amax(dim=-1, keepdim=True))
    return p, p.sum(dim=-1, keepdim=True)


def reference_int8_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pv: str = "fp8",
                             smooth: bool = True, q_block: int | None = None, k_block: int | None = None
                             ) -> torch.Tensor:
    """INT8 Q.K attention (sageattn_3 for pv="fp16"/"bf16", sageattn_3_fp8 for pv="fp8"); fp32 out [B, Lq, H, D]."""
    d = q.shape[-1]
    q_block = Q_BLOCK if q_block is None else q_block
    k_block = K_BLOCK if k_block is None else k_block
    kf = smooth_k(k)[0] if smooth else k.float()
    qi, qs = int8_per_block(q, q_block)
    ki, ks = int8_per_block(kf, k_block)
    if pv == "fp8":
        vc, vs = fp8_per_channel(v)
        vmat, out_scale = _bhld(vc), _bhld(vs) / FP8_E4M3_MAX                   # [B, H, 1, D]
        quantize_p = quantize_p_fp8
    elif pv in ("fp16", "bf16"):
        low = torch.float16 if pv == "fp16" else torch.bfloat16
        vmat, out_scale = _bhld(v.float().to(low)), None
        quantize_p = lambda p: p.to(low).float()                               # noqa: E731
    else:
        raise ValueError(f"reference_int8_attention: pv must be 'fp8', 'fp16' or 'bf16', got {pv!r}")
    qi, qs, ki, ks = _bhld(qi), _bhld(qs), _bhld(ki), _bhld(ks)
    out = []
    for rows in _row_chunks(qi, ki.shape[2]):
        s = (qi[:, :, rows] @ ki.transpose(-1, -2)) * (qs[:, :, rows] * ks.transpose(-1, -2)) * d ** -0.5
        p, l = _softmax(s)
        o = (quantize_p(p) @ vmat) / l
        out.append(o * out_scale if out_scale is not None else o)
    return torch.cat(out, dim=2).transpose(1, 2).contiguous()


def reference_sageattn_3(q, k, v, smooth: bool = True) -> torch.Tensor:
    """sageattn_3: INT8 Q.K with K smoothing, fp16 (bf16 for bf16 inputs) P.V, fp32 accumulation."""
    return reference_int8_attention(q, k, v, pv="bf16" if q.dtype == torch.bfloat16 else "fp16", smooth=smooth)


def reference_sageattn_3_fp8(q, k, v, smooth: bool = True) -> torch.Tensor:
    """sageattn_3_fp8: INT8 Q.K with K smoothing, e4m3 P.V (per-channel V scale), fp32 accumulation."""
    return reference_int8_attention(q, k, v, pv="fp8", smooth=smooth)


def block_means(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Means of each `block`-token group of x [B, L, H, D] -> ([B, G, H, D], group index per token [L]).

    A ragged last group is averaged over its own tokens.
    """
    b, n, h, d = x.shape
    group = torch.arange(n, device=x.device) // block
    sums = x.new_zeros(b, int(group[-1]) + 1 if n else 0, h, d).index_add_(1, group, x)
    counts = torch.bincount(group).to(x.dtype).view(1, -1, 1, 1)
    return sums / counts, group


def reference_sageattn_3_fp4(q, k, v, smooth: bool = True, block: int = FP4_BLOCK) -> torch.Tensor:
    """sageattn_3_fp4: NVFP4 Q, K, P, V (block 16, e4m3 block scales, fp32 tensor/row scales); fp32 out."""
    d = q.shape[-1]
    qf = q.float()
    kf = smooth_k(k)[0] if smooth else k.float()
    qmean, group = block_means(qf, FP4_Q_SMOOTH_BLOCK)
    if not smooth:
        qmean = torch.zeros_like(qmean)
    qv, qt = nvfp4_quant(qf - qmean[:, group], dim=3, tensor_dims=(1, 3), block=block)   # qt [B, 1, H, 1]
    kv, kt = nvfp4_quant(kf, dim=3, tensor_dims=(1, 3), block=block)
    vv, vt = nvfp4_quant(v.float(), dim=1, tensor_dims=(1, 3), block=block)
    qv, kv, vv, kb = _bhld(qv), _bhld(kv), _bhld(vv), _bhld(kf)
    qkt = (_bhld(qt) * _bhld(kt)) * d ** -0.5                                           # [B, H, 1, 1]
    # Q-mean correction qmean . k^T: one row per 128-token group, in fp64 (cheap), then per token.
    delta = (_bhld(qmean).double() @ kb.double().transpose(-1, -2)).float() * d ** -0.5  # [B, H, G, Lk]
    out = []
    for rows in _row_chunks(qv, kv.shape[2]):
        s = (qv[:, :, rows] @ kv.transpose(-1, -2)) * qkt + delta[:, :, group[rows]]
        p, l = _softmax(s)
        pv_, pt = nvfp4_quant(p, dim=-1, tensor_dims=(-1,), block=block)                # pt [.., rows, 1]
        out.append((pv_ @ vv) * pt * _bhld(vt) / l)
    return torch.cat(out, dim=2).transpose(1, 2).contiguous()


REFERENCES = {
    "sageattn_3": reference_sageattn_3,
    "sageattn_3_fp8": reference_sageattn_3_fp8,
    "sageattn_3_fp4": reference_sageattn_3_fp4,
}


def exact_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Unquantized softmax attention in fp64 on [B, L, H, D]: the ground truth for error figures."""
    qd, kd, vd = (t.double().transpose(1, 2) for t in (q, k, v))
    s = (qd @ kd.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return (torch.softmax(s, dim=-1) @ vd).transpose(1, 2)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref||_F / ||ref||_F in fp64 (the metric of kernels_quant_perf.md section 2.2)."""
    out, ref = out.double(), ref.double()
    return float((out - ref).norm() / ref.norm())


def make_inputs(kind: str, b: int, n: int, h: int, d: int, generator: torch.Generator | None = None,
                lk: int | None = None, dtype: torch.dtype = torch.bfloat16
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Benchmark inputs [B, L, H, D] in `dtype`: "iid" N(0,1), or "biased_k": 2*q and k + 4*N(0,1) per channel.

    As in kernels_quant_perf.md section 2.2. Errors are measured against exact_attention of these
    same (already rounded) tensors, so input rounding is not counted as kernel error.
    """
    lk = n if lk is None else lk
    q = torch.randn(b, n, h, d, generator=generator)
    k = torch.randn(b, lk, h, d, generator=generator)
    v = torch.randn(b, lk, h, d, generator=generator)
    if kind == "biased_k":
        q = q * 2
        k = k + 4 * torch.randn(b, 1, h, d, generator=generator)
    elif kind != "iid":
        raise ValueError(f"make_inputs: kind must be 'iid' or 'biased_k', got {kind!r}")
    return q.to(dtype), k.to(dtype), v.to(dtype)
