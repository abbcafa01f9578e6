"""The one attention entry point of the pack.

Every attention call of the DiT goes through :func:`attention`. Inputs are laid out as
``[B, L, H, D]`` (batch, tokens, heads, head dim), as Wan's flash-attn calls use, and the
output has the same layout as ``q``. Modes register an implementation in ``_MODES``; the
capability table (attention/capabilities.py) decides which mode actually runs.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

_MODES: dict[str, AttentionFn] = {}


def register_mode(name: str, fn: AttentionFn) -> None:
    _MODES[name] = fn


def registered_modes() -> list[str]:
    return list(_MODES)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """torch scaled_dot_product_attention on [B, L, H, D] tensors (scale 1/sqrt(D), no mask)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


register_mode("sdpa", sdpa)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mode: str = "sdpa") -> torch.Tensor:
    """Softmax attention of q [B, Lq, H, D] over k, v [B, Lk, H, D]; returns [B, Lq, H, D] in q's dtype."""
    try:
        fn = _MODES[mode]
    except KeyError:
        raise ValueError(f"unknown attention mode {mode!r}; known modes: {', '.join(_MODES)}") from None
    return fn(q, k, v).to(q.dtype)
