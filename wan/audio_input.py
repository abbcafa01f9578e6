"""ComfyUI AUDIO input -> the 16 kHz mono, -23 LUFS waveform InfiniteTalk's wav2vec2 expects.

ComfyUI's LoadAudio produces {"waveform": float [B, C, T], "sample_rate": int}. The official
pipeline reads speech with librosa (mono = channel mean, then resample to 16 kHz) and
normalises integrated loudness to -23 LUFS with pyloudnorm, leaving digital silence alone
(reference doc wan_infinitetalk.md §3.1). This module reproduces those steps and rejects bad
input with errors that name the input.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from ..log import warn
from .audio_resample import resample

SPEECH_SR = 16000
TARGET_LUFS = -23.0


class AudioInputError(ValueError):
    """The audio given to a node is missing, empty, or malformed."""


def audio_from_comfy(audio, name: str = "audio") -> tuple[torch.Tensor, int]:
    """Validate a ComfyUI AUDIO dict; return (waveform float32 [B, C, T], sample_rate)."""
    if not isinstance(audio, dict) or "waveform" not in audio or "sample_rate" not in audio:
        raise AudioInputError(
            f"{name}: expected a ComfyUI AUDIO dict with 'waveform' and 'sample_rate' "
            f"(connect a LoadAudio node), got {type(audio).__name__}"
        )
    wave, sr = audio["waveform"], audio["sample_rate"]
    if isinstance(sr, torch.Tensor) and sr.numel() == 1:
        sr = sr.item()
    if isinstance(sr, bool) or not isinstance(sr, (int, float)) or not np.isfinite(sr) or sr <= 0 or int(sr) != sr:
        raise AudioInputError(f"{name}: invalid sample_rate {sr!r}; expected a positive whole number of Hz")
    if not isinstance(wave, torch.Tensor):
        wave = torch.as_tensor(np.asarray(wave))
    if wave.dim() == 1:
        wave = wave[None, None]
    elif wave.dim() == 2:
        wave = wave[None]
    if wave.dim() != 3:
        raise AudioInputError(f"{name}: waveform must be [batch, channels, samples], got shape {tuple(wave.shape)}")
    if wave.shape[0] == 0 or wave.shape[1] == 0 or wave.shape[2] == 0:
        raise AudioInputError(f"{name}: the audio is empty (waveform shape {tuple(wave.shape)}); load a non-empty clip")
    wave = wave.detach().to("cpu", torch.float32)
    if not torch.isfinite(wave).all():
        raise AudioInputError(f"{name}: waveform contains NaN or Inf samples")
    return wave, int(sr)


def to_mono(wave: torch.Tensor) -> torch.Tensor:
    """[..., C, T] -> [..., T] by channel mean (what librosa.load(mono=True) does)."""
    return wave.mean(dim=-2)


def loudness_normalize(wav: torch.Tensor, sr: int, target_lufs: float = TARGET_LUFS) -> torch.Tensor:
    """Integrated loudness -> target LUFS (pyloudnorm). Silence (|L| > 100, e.g. -inf) is returned as is.

    pyloudnorm needs at least one 400 ms gating block; shorter clips are left untouched with a warning.
    """
    import pyloudnorm

    x = wav.detach().to("cpu", torch.float64).numpy()
    meter = pyloudnorm.Meter(sr)
    if x.shape[-1] < int(round(meter.block_size * sr)) + 1:
        warn(f"audio of {x.shape[-1] / sr:.3f} s is shorter than pyloudnorm's 0.4 s block; loudness left unchanged")
        return wav.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyloudnorm warns on -inf loudness and on clipping
        loudness = meter.integrated_loudness(x)
        if not np.isfinite(loudness) or abs(loudness) > 100:
            return wav.clone()
        y = pyloudnorm.normalize.loudness(x, loudness, target_lufs)
    return torch.from_numpy(np.ascontiguousarray(y)).to(wav.dtype)


def speech_waveform(audio, name: str = "audio", *, normalize_loudness: bool = True, batch_index: int = 0) -> torch.Tensor:
    """ComfyUI AUDIO -> 1-D float32 16 kHz mono waveform, loudness-normalised like the official pipeline."""
    wave, sr = audio_from_comfy(audio, name)
    if not 0 <= batch_index < wave.shape[0]:
        raise AudioInputError(f"{name}: batch_index {batch_index} out of range for a batch of {wave.shape[0]}")
    mono = to_mono(wave[batch_index])
    mono = resample(mono, sr, SPEECH_SR)
    if normalize_loudness:
        mono = loudness_normalize(mono, SPEECH_SR)
    return mono.float()


def video_frame_count(num_samples: int, fps: float, sample_rate: int = SPEECH_SR) -> int:
    """Video frames covered by the audio, computed like the official code: int(seconds * fps)."""
    if not fps or fps <= 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    return int(num_samples / sample_rate * fps)
