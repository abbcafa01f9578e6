"""Norm layers of the Wan DiT, all computed in fp32 whatever the parameter/activation dtype.

Upstream computes every LayerNorm/RMSNorm in fp32 (wan_infinitetalk.md §1.7); doing the upcast
explicitly (instead of CUDA autocast) is what makes bf16 weights work on CPU too. Parameter
names (`weight`, `bias`) match the original checkpoints.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32; returns fp32 (callers cast once, after modulation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps)


class RMSNorm(nn.Module):
    """Wan RMSNorm: x * rsqrt(mean(x^2) + eps) * weight over the last (full, across-heads) dim, in fp32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return xf * self.weight.float()


def layer_norm(dim: int, eps: float, affine: bool) -> FP32LayerNorm:
    return FP32LayerNorm(dim, eps=eps, elementwise_affine=affine)


def maybe_rms(dim: int, eps: float, enabled: bool) -> nn.Module:
    """q/k norm, or a no-parameter identity when the config disables it (no keys in the state dict)."""
    return RMSNorm(dim, eps) if enabled else nn.Identity()
