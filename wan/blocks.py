"""The Wan2.1 transformer block: modulated self-attention, text(+image) cross-attention,
optional InfiniteTalk audio cross-attention, modulated FFN (wan_infinitetalk.md §1.3).

Numerics follow the InfiniteTalk convention (§1.7): modulation and norms in fp32, attention
and Linears in the activation dtype, gated residual adds in fp32 and the residual stream cast
back to the activation dtype after every add. Every Linear is called as a module (the quantizer
swaps them) and every attention goes through `attention(q, k, v, mode)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..attention import attention
from . import fused
from .audio_modules import AudioCrossAttention, speaker_reference_map
from .norms import layer_norm, maybe_rms


@dataclass
class BlockInputs:
    """Everything a block needs besides x; built once per forward and shared by all blocks.

    e0: [B, 6, dim] fp32 time projection; rope_cos/sin: [L, head_dim/2] fp32; grid: latent token
    grid (F, h, w); context: [B, text_len, dim]; context_img: [B, 257, dim] or None (t2v);
    audio: [B*F, tokens, audio_dim] or None (plain Wan); speaker_masks: [B?, 3, h*w] float or None.
    """

    e0: torch.Tensor
    rope_cos: torch.Tensor
    rope_sin: torch.Tensor
    grid: tuple[int, int, int]
    context: torch.Tensor
    context_img: torch.Tensor | None = None
    audio: torch.Tensor | None = None
    audio_scale: float = 1.0
    speakers: int = 1
    speaker_masks: torch.Tensor | None = None
    modes: dict = field(default_factory=lambda: {"self": "sdpa", "cross": "sdpa", "audio": "sdpa"})


class SelfAttention(nn.Module):
    """q/k RMSNorm over the whole dim, 3-D RoPE on q and k, softmax attention, output projection."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = maybe_rms(dim, eps, qk_norm)
        self.norm_k = maybe_rms(dim, eps, qk_norm)

    def forward(self, x: torch.Tensor, inp: BlockInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (output, q, k); q/k (after RoPE) feed the two-speaker reference map."""
        b, n, _ = x.shape
        shape = (b, n, self.num_heads, self.head_dim)
        q = fused.rms_rope(self.norm_q, self.q(x), self.num_heads, inp.rope_cos, inp.rope_sin, x.dtype)
        k = fused.rms_rope(self.norm_k, self.k(x), self.num_heads, inp.rope_cos, inp.rope_sin, x.dtype)
        v = self.v(x).view(shape)
        out = attention(q, k, v, inp.modes["self"])
        return self.o(out.flatten(2)), q, k


class CrossAttention(nn.Module):
    """Text cross-attention; the I2V variant adds an image branch whose output is summed before `o`."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6, image: bool = False):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = maybe_rms(dim, eps, qk_norm)
        self.norm_k = maybe_rms(dim, eps, qk_norm)
        self.has_image = image
        if image:
            self.k_img = nn.Linear(dim, dim)
            self.v_img = nn.Linear(dim, dim)
            self.norm_k_img = maybe_rms(dim, eps, qk_norm)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(t.shape[0], t.shape[1], self.num_heads, self.head_dim)

    def forward(self, x: torch.Tensor, inp: BlockInputs) -> torch.Tensor:
        dt = x.dtype
        q = self._heads(fused.rms_norm(self.norm_q, self.q(x), dt))
        k = self._heads(self.norm_k(self.k(inp.context)).to(dt))
        out = attention(q, k, self._heads(self.v(inp.context)), inp.modes["cross"])
        if self.has_image:
            if inp.context_img is None:
                raise ValueError("clip_fea is required: this is an image-to-video (i2v) model")
            k_img = self._heads(self.norm_k_img(self.k_img(inp.context_img)).to(dt))
            out = out + attention(q, k_img, self._heads(self.v_img(inp.context_img)), inp.modes["cross"])
        return self.o(out.flatten(2))


class WanBlock(nn.Module):
    """One DiT block. Key names: modulation, self_attn.*, norm3.*, cross_attn.*, ffn.{0,2}.*,
    and with audio: audio_cross_attn.*, norm_x.*  (norm1/norm2 have no parameters)."""

    def __init__(self, cfg, image: bool):
        super().__init__()
        dim, eps = cfg.dim, cfg.eps
        self.dim = dim
        self.norm1 = layer_norm(dim, eps, affine=False)
        self.self_attn = SelfAttention(dim, cfg.num_heads, cfg.qk_norm, eps)
        self.norm3 = layer_norm(dim, eps, affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(dim, cfg.num_heads, cfg.qk_norm, eps, image=image)
        self.norm2 = layer_norm(dim, eps, affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)
        self.has_audio = cfg.audio is not None
        if self.has_audio:
            self.audio_cross_attn = AudioCrossAttention(dim, cfg.audio.output_dim, cfg.num_heads)
            self.norm_x = layer_norm(dim, eps, affine=True)

    def forward(self, x: torch.Tensor, inp: BlockInputs) -> torch.Tensor:
        dt = x.dtype
        mod = (self.modulation.float() + inp.e0).unsqueeze(2)  # [B, 6, 1, dim] fp32
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = mod.unbind(1)

        y, q, k = self.self_attn(fused.modulate(self.norm1, x, scale_sa, shift_sa, dt), inp)
        x = fused.gated_residual(x, y, gate_sa)

        x = x + self.cross_attn(fused.layer_norm(self.norm3, x, dt), inp).to(dt)

        if self.has_audio and inp.audio is not None:
            ref_map = None
            if inp.speakers > 1:
                ref_map = speaker_reference_map(q, k, inp.speaker_masks, inp.grid)
            y = self.audio_cross_attn(fused.layer_norm(self.norm_x, x, dt), inp.audio, inp.grid, inp.modes["audio"],
                                      ref_map)
            x = x + (y * inp.audio_scale if inp.audio_scale != 1.0 else y).to(dt)

        y = self.ffn(fused.modulate(self.norm2, x, scale_ff, shift_ff, dt))
        return fused.gated_residual(x, y, gate_ff)
