"""fp8 quantization of weights (per output channel) and activations (per token).

Reference numerics shared by the PyTorch path and future kernels:
- weight, scaled: s_n = amax(|W[n, :]|) / FP8_MAX; Wq = fp8(clamp(W / s_n)); W ~ Wq * s_n.
- weight, unscaled (`fp8_e4m3fn`, `fp8_e5m2`): s_n = 1, Wq = fp8(clamp(W)) (a direct, saturating cast).
- activation (W8A8 / W4A8): s_m = amax(|x[m, :]|) / 448 per token, xq = e4m3(clamp(x / s_m)).
All-zero rows get scale 1. Casts round to nearest even (torch semantics).
"""
from __future__ import annotations

import torch

FP8_DTYPES = {"e4m3fn": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


def fp8_max(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).max)


def _row_scale(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    amax = x.detach().abs().amax(dim=-1).float()
    return torch.where(amax > 0, amax / fp8_max(dtype), torch.ones_like(amax))


def quantize_fp8_weight(w: torch.Tensor, dtype: torch.dtype = torch.float8_e4m3fn, scaled: bool = True):
    """[N, K] -> (fp8 [N, K], fp32 per-output-channel scale [N])."""
    w = w.float()
    scale = _row_scale(w, dtype) if scaled else torch.ones(w.shape[0], device=w.device)
    m = fp8_max(dtype)
    return (w / scale[:, None]).clamp(-m, m).to(dtype), scale


def dequantize_fp8_weight(wq: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """fp8 [N, K] x scale (scalar or [N]) -> fp32 [N, K]."""
    s = scale.float()
    return wq.float() * (s.reshape(-1, 1) if s.numel() > 1 else s.reshape(()))


def quantize_fp8_rows(x: torch.Tensor, dtype: torch.dtype = torch.float8_e4m3fn):
    """Per-row (per-token) fp8: [M, K] -> (fp8 [M, K], fp32 scale [M, 1])."""
    x = x.float()
    scale = _row_scale(x, dtype)[:, None]
    m = fp8_max(dtype)
    return (x / scale).clamp(-m, m).to(dtype), scale
