"""Per-window slicing of InfiniteTalk audio features and the official time-reversed padding.

Features are [T, layers, C] at the video frame rate. Each 81-frame video window sees, for every
frame, the 5 audio frames around it (offsets -2..+2) clamped to the clip (wan_infinitetalk.md
§3.2). When a window runs past the end, the official loop appends the time-reversed tail
(§5.3); the same padding rescues clips shorter than one window.
"""
from __future__ import annotations

import torch

from ..log import warn

NEIGHBOURHOOD = (-2, -1, 0, 1, 2)
DEFAULT_FRAME_NUM = 81


def window_indices(start: int, total: int, frame_num: int = DEFAULT_FRAME_NUM) -> torch.Tensor:
    """[frame_num, 5] audio-frame indices for video frames start..start+frame_num-1, clamped to [0, total-1]."""
    if total <= 0:
        raise ValueError("audio features are empty: there is no frame to index")
    frames = torch.arange(start, start + frame_num).unsqueeze(1)
    offsets = torch.tensor(NEIGHBOURHOOD).unsqueeze(0)
    return (frames + offsets).clamp(0, total - 1)


def gather_audio_window(features: torch.Tensor, start: int, frame_num: int = DEFAULT_FRAME_NUM) -> torch.Tensor:
    """features [T, L, C] -> [frame_num, 5, L, C] for the window starting at video frame `start`."""
    if features.dim() != 3:
        raise ValueError(f"audio features must be [frames, layers, channels], got shape {tuple(features.shape)}")
    idx = window_indices(start, features.shape[0], frame_num).to(features.device)
    return features[idx]


def mirror_pad_features(features: torch.Tensor, end_idx: int) -> torch.Tensor:
    """Official end-of-clip padding: append the time-reversed last (end_idx - T + 3) frames.

    When the clip is shorter than the missing length the reflection is repeated (back and
    forth) until the result covers end_idx + 3 frames, so very short clips still work.
    """
    out = features
    target = end_idx + 3
    while out.shape[0] < target:
        miss = target - out.shape[0]
        out = torch.cat([out, torch.flip(out[-miss:], dims=[0])], dim=0)
    return out


def pad_short_features(features: torch.Tensor, frame_num: int = DEFAULT_FRAME_NUM, name: str = "audio") -> tuple[torch.Tensor, int]:
    """Pad features shorter than one window; returns (features, original frame count) so video can be trimmed."""
    n = features.shape[0]
    if n == 0:
        raise ValueError(f"{name}: no audio frames (the clip is shorter than one video frame)")
    if n > frame_num:
        return features, n
    warn(
        f"{name}: audio covers {n} video frames, less than one {frame_num}-frame window; "
        f"padding with the time-reversed tail as InfiniteTalk does (output will be trimmed to {n} frames)"
    )
    return mirror_pad_features(features, frame_num), n


def null_audio_features(num_frames: int, layers: int = 12, channels: int = 768, *, like: torch.Tensor | None = None) -> torch.Tensor:
    """The CFG 'no audio' input: all zeros in feature space (not wav2vec2 of silence, §5.2)."""
    if like is not None:
        return torch.zeros_like(like)
    return torch.zeros(num_frames, layers, channels)
