"""Rotary position embeddings of the Wan DiT: 3-D RoPE for self-attention, 1-D RoPE for L-RoPE.

Both rotate *interleaved* pairs (x[2i], x[2i+1]) as complex numbers (wan_infinitetalk.md §1.3,
§3.4). Angles are computed in float64 and rounded once to fp32, as upstream does, then the
rotation itself runs in fp32. Tables are computed per call (cheap, [L, D/2]) instead of being
stored as buffers, so the model's state_dict holds only checkpoint tensors.
"""
from __future__ import annotations

import torch

ROPE_THETA = 10000.0


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Channels per axis (t, h, w) of one head: t = d - 4*(d//6), h = w = 2*(d//6) (44/42/42 for d=128)."""
    if head_dim < 6 or head_dim % 2:
        raise ValueError(f"head_dim must be even and >= 6 for 3-D RoPE, got {head_dim}")
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def rope_frequencies(dim: int, theta: float = ROPE_THETA) -> torch.Tensor:
    """Inverse frequencies theta^(-2j/dim), j = 0..dim/2-1, in float64."""
    return 1.0 / torch.pow(theta, torch.arange(0, dim, 2, dtype=torch.float64) / dim)


def rope_angles_3d(
    grid: tuple[int, int, int],
    head_dim: int,
    device: torch.device | str | None = None,
    max_len: int = 1024,
    theta: float = ROPE_THETA,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) of shape [F*H*W, head_dim/2] in fp32 for tokens ordered (f, h, w)-major.

    Token (f, h, w) gets the concatenated angles of the t-axis at f, the h-axis at h and the
    w-axis at w; positions start at 0 for every call (each window restarts at frame 0).
    """
    f, h, w = (int(v) for v in grid)
    if max(f, h, w) > max_len:
        raise ValueError(
            f"latent grid {f}x{h}x{w} exceeds the RoPE table length {max_len}; use a smaller size or frame count"
        )
    parts = []
    for n, dim, shape in zip((f, h, w), rope_axis_dims(head_dim), ((f, 1, 1), (1, h, 1), (1, 1, w))):
        ang = torch.outer(torch.arange(n, dtype=torch.float64), rope_frequencies(dim, theta))
        parts.append(ang.view(*shape, -1).expand(f, h, w, -1))
    angles = torch.cat(parts, dim=-1).reshape(f * h * w, head_dim // 2)
    return angles.cos().float().to(device), angles.sin().float().to(device)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of x [B, L, H, D] by angles given as cos/sin [L, D/2]; returns fp32.

    cos/sin may also carry a batch axis ([B, L, D/2]) when positions differ per sample.
    """
    b, n, heads, d = x.shape
    xf = x.float().reshape(b, n, heads, d // 2, 2)
    if cos.dim() == 2:
        c, s = cos[None, :, None, :], sin[None, :, None, :]
    else:
        c, s = cos[:, :, None, :], sin[:, :, None, :]
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack((x0 * c - x1 * s, x1 * c + x0 * s), dim=-1)
    return out.reshape(b, n, heads, d)


def rope_angles_1d(positions: torch.Tensor, head_dim: int, base: float = ROPE_THETA) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) [..., head_dim/2] fp32 for (possibly fractional) positions [...] (L-RoPE, §3.4).

    Pair j of a token at position p is rotated by p * base^(-2j/head_dim).
    """
    inv = rope_frequencies(head_dim, base).to(positions.device)
    ang = positions.double()[..., None] * inv
    return ang.cos().float(), ang.sin().float()


def apply_rope_1d(x: torch.Tensor, positions: torch.Tensor, base: float = ROPE_THETA) -> torch.Tensor:
    """1-D rotary embedding of x [B, L, H, D] at positions [L] or [B, L]; returns x's dtype."""
    cos, sin = rope_angles_1d(positions, x.shape[-1], base)
    return apply_rotary(x, cos, sin).to(x.dtype)
