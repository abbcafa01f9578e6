"""InfiniteTalk audio modules: AudioProjModel, per-frame audio cross-attention and L-RoPE
speaker routing (wan_infinitetalk.md §3.3, §3.4).

Key names match the released `infinitetalk.safetensors` (`audio_proj.proj1`, `proj1_vf`,
`proj2`, `proj3`, `norm`; per block `audio_cross_attn.{q_linear,kv_linear,proj}`). diffusers has
no equivalent, so these are tested against the hand-derived indexing rules of §7.2.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..attention import attention
from .norms import layer_norm
from .rope import apply_rope_1d

# L-RoPE layout (MultiTalk): speaker 1 in [0, 4], speaker 2 in [20, 24], background at 12.
CLASS_RANGE = 24
CLASS_INTERVAL = 4
SPEAKER_RANGES = ((0.0, float(CLASS_INTERVAL)), (float(CLASS_RANGE - CLASS_INTERVAL), float(CLASS_RANGE)))
BACKGROUND_POSITION = float(CLASS_RANGE // 2)


def select_window_entries(audio: torch.Tensor, seq_len: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Split per-video-frame audio windows into the inputs of proj1 and proj1_vf.

    audio [N, T, seq_len, blocks, C] with T = 1 + 4k ->
      first  [N, 1, seq_len, blocks, C]   (video frame 0, full window -> latent frame 0)
      latter [N, k, seq_len + 3, blocks, C]: per group of 4 video frames (latent frame j >= 1):
             1st frame offsets -2..0, 2nd and 3rd frames centre only, 4th frame offsets 0..+2.
    """
    n, t = audio.shape[:2]
    if (t - 1) % 4:
        raise ValueError(f"audio: the window must have 4k+1 video frames, got {t}")
    mid = seq_len // 2
    first = audio[:, :1]
    groups = audio[:, 1:].reshape(n, (t - 1) // 4, 4, *audio.shape[2:])
    latter = torch.cat([groups[:, :, 0, : mid + 1], groups[:, :, 1:3, mid], groups[:, :, 3, mid:]], dim=2)
    return first, latter


class AudioProjModel(nn.Module):
    """wav2vec2 window features -> `context_tokens` audio tokens per latent frame (per speaker)."""

    def __init__(self, seq_len=5, seq_len_vf=8, blocks=12, channels=768, intermediate_dim=512,
                 output_dim=768, context_tokens=32, norm_output_audio=True):
        super().__init__()
        if seq_len_vf != seq_len + 3:
            raise ValueError(f"audio config: seq_len_vf must be seq_len + 3 ({seq_len + 3}), got {seq_len_vf}")
        self.seq_len, self.context_tokens, self.output_dim = seq_len, context_tokens, output_dim
        self.proj1 = nn.Linear(seq_len * blocks * channels, intermediate_dim)
        self.proj1_vf = nn.Linear(seq_len_vf * blocks * channels, intermediate_dim)
        self.proj2 = nn.Linear(intermediate_dim, intermediate_dim)
        self.proj3 = nn.Linear(intermediate_dim, context_tokens * output_dim)
        self.norm = layer_norm(output_dim, 1e-5, affine=True) if norm_output_audio else nn.Identity()

    def forward(self, audio: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """audio [N, 4k+1, seq_len, blocks, C] -> tokens [N, k+1, context_tokens, output_dim] in `dtype`."""
        first, latter = select_window_entries(audio.to(dtype), self.seq_len)
        h0 = torch.relu(self.proj1(first.flatten(2)))
        h1 = torch.relu(self.proj1_vf(latter.flatten(2)))
        h = torch.relu(self.proj2(torch.cat([h0, h1], dim=1)))
        tokens = self.proj3(h).unflatten(-1, (self.context_tokens, self.output_dim))
        return self.norm(tokens).to(dtype)


class AudioCrossAttention(nn.Module):
    """Visual tokens of each latent frame attend only to that frame's audio tokens (no norms, no gate).

    With two speakers (L-RoPE) q gets a 1-D rotary position per visual token chosen from the
    reference map, and the audio keys of speaker 1 / 2 get positions 2 / 22.
    """

    def __init__(self, dim: int, audio_dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(audio_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, audio: torch.Tensor, grid: tuple[int, int, int], mode: str = "sdpa",
                ref_map: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, F*S, dim] (normed), audio [B*F, Na, audio_dim] -> residual [B, F*S, dim]."""
        b, n, dim = x.shape
        frames = grid[0]
        s = n // frames
        q = self.q_linear(x).view(b * frames, s, self.num_heads, self.head_dim)
        kv = self.kv_linear(audio).view(audio.shape[0], audio.shape[1], 2, self.num_heads, self.head_dim)
        k, v = kv.unbind(2)
        if ref_map is not None:
            pos_q = speaker_positions(ref_map).view(b * frames, s)
            q = apply_rope_1d(q, pos_q)
            k = apply_rope_1d(k, audio_key_positions(audio.shape[1], k.device))
        out = attention(q, k, v, mode)
        return self.proj(out.flatten(2)).view(b, n, dim)


def audio_key_positions(num_tokens: int, device=None) -> torch.Tensor:
    """1-D positions of one frame's audio keys: first half (speaker 1) at 2, second half (speaker 2) at 22."""
    pos = torch.empty(num_tokens, dtype=torch.float32, device=device)
    half = num_tokens // 2
    pos[:half] = sum(SPEAKER_RANGES[0]) / 2
    pos[half:] = sum(SPEAKER_RANGES[1]) / 2
    return pos


def _rescale(v: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, target: tuple[float, float]) -> torch.Tensor:
    return (v - lo) / (hi - lo + 1e-8) * (target[1] - target[0]) + target[0]


def speaker_positions(ref_map: torch.Tensor) -> torch.Tensor:
    """ref_map [B, 3, L] (speaker 1, speaker 2, background scores) -> 1-D position per token [B, L].

    Each speaker's scores are min/max-rescaled over all tokens into its range ([0, 4] / [20, 24]),
    background is the constant 12, and each token takes the value of the class with the highest
    raw score.
    """
    ref_map = ref_map.float()
    lo, hi = ref_map.amin(dim=2, keepdim=True), ref_map.amax(dim=2, keepdim=True)
    h1 = _rescale(ref_map[:, 0], lo[:, 0], hi[:, 0], SPEAKER_RANGES[0])
    h2 = _rescale(ref_map[:, 1], lo[:, 1], hi[:, 1], SPEAKER_RANGES[1])
    back = torch.full_like(h1, BACKGROUND_POSITION)
    choices = torch.stack([h1, h2, back], dim=1)
    return choices.gather(1, ref_map.argmax(dim=1, keepdim=True)).squeeze(1)


def speaker_reference_map(q: torch.Tensor, k: torch.Tensor, masks: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Per-token affinity to each speaker region of the first latent frame -> [B, 3, L] (fp32).

    For every query token: softmax attention over the keys of latent frame 0, averaged over the
    keys inside each mask (speaker 1, speaker 2, background) and over heads. It is an attention
    whose values are the normalized masks, so it runs through the attention dispatch (sdpa: exact).
    """
    b, n, heads, d = q.shape
    ref = grid[1] * grid[2]
    masks = masks.float().to(q.device)
    if masks.dim() == 2:
        masks = masks.unsqueeze(0).expand(b, -1, -1)
    classes = masks.shape[1]
    if classes > d:
        raise ValueError(f"ref_target_masks: {classes} masks exceed head_dim {d}")
    weights = masks / (masks.sum(dim=2, keepdim=True) + 1e-6)  # [B, 3, ref]
    v = torch.zeros(b, ref, heads, d, device=q.device, dtype=torch.float32)
    v[..., :classes] = weights.transpose(1, 2).unsqueeze(2)
    out = attention(q.float(), k[:, :ref].float(), v, "sdpa")  # [B, L, H, D]
    return out[..., :classes].mean(dim=2).transpose(1, 2)
