"""Optional vocal isolation before the audio encoder: MelBand RoFormer (Kim's vocals model).

Network: `MelBandRoformer` from the PyPI `bs-roformer` package (0.3.x; its module layout is the
one the Kim / Kijai checkpoints were saved from: `layers.{i}.{0 time | 1 freq}.layers.{j}.{0 attn | 1 ff}`).
Ours: finding the file, detecting the config from tensor shapes, checking the keys, and chunked
inference whose working memory does not grow with the clip length.

Chunking: fixed chunks on the model's 44.1 kHz grid, starts on STFT-hop multiples. Neighbouring
chunks overlap; inside each overlap the first and last n_fft samples (where a chunk's STFT sees its
own edge) get weight 0, and in between complementary sin^2 / cos^2 ramps cross-fade. The weights
sum to exactly 1 everywhere, so each chunk is added straight into the output buffer.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict, dataclass

import torch

from ..log import info, load
from .audio_input import audio_from_comfy
from .audio_resample import resample
from .safetensors_io import ModelFileError, load_tensors

MODEL_SR = 44100
DEFAULT_FILES = ("MelBandRoformer_fp16.safetensors", "MelBandRoformer_fp32.safetensors")
_PREFIXES = ("module.", "model.")


@dataclass(frozen=True)
class MelBandConfig:
    """MelBandRoformer constructor arguments. Defaults = Kim's vocals model (dim 384, depth 6)."""

    dim: int = 384
    depth: int = 6
    stereo: bool = True
    num_stems: int = 1
    time_transformer_depth: int = 1
    freq_transformer_depth: int = 1
    num_bands: int = 60
    dim_head: int = 64
    heads: int = 8
    mask_estimator_depth: int = 2
    sample_rate: int = MODEL_SR
    stft_n_fft: int = 2048
    stft_hop_length: int = 441   # not visible in the weights; Kim's config
    stft_win_length: int = 2048

    def model_kwargs(self) -> dict:
        kw = asdict(self)
        kw.update(
            attn_dropout=0.0,
            ff_dropout=0.0,
            dim_freqs_in=self.stft_n_fft // 2 + 1,
            flash_attn=hasattr(torch.backends.cuda, "sdp_kernel"),  # the package's SDPA path needs it
            match_input_audio_length=True,
        )
        return kw


def _build(**kwargs):
    """The package model; its constructor runs a window-less torch.stft that warns, harmlessly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return _melband_class()(**kwargs)


def _melband_class():
    try:
        from bs_roformer import MelBandRoformer
    except ImportError as e:
        raise ImportError(
            "vocal isolation needs the 'bs-roformer' package (pip install \"bs-roformer>=0.3.10,<0.4\"); "
            f"import failed: {e}"
        ) from None
    return MelBandRoformer


# ----------------------------------------------------------------------------- finding and reading the file

def find_model_file(name: str, folders) -> str:
    """A path as given if it exists, else `name` looked up in each folder in order."""
    if os.path.isfile(name):
        return name
    folders = [os.fspath(f) for f in (folders or [])]
    for folder in folders:
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            return candidate
    searched = ", ".join(folders) if folders else "(no folders given)"
    raise ModelFileError(
        f"MelBand RoFormer model '{name}' not found; searched: {searched}. Download "
        f"{' or '.join(DEFAULT_FILES)} (Kijai/MelBandRoFormer_comfy) into one of these folders"
    )


def _strip_prefix(sd: dict) -> dict:
    for p in _PREFIXES:
        if sd and all(k.startswith(p) for k in sd):
            return {k[len(p):]: v for k, v in sd.items()}
    return dict(sd)


def _count(sd: dict, prefix: str) -> int:
    n = len(prefix.split("."))
    idx = {int(k.split(".")[n - 1]) for k in sd if k.startswith(prefix) and k.split(".")[n - 1].isdigit()}
    return max(idx) + 1 if idx else 0


def _band_freq_counts(num_bands: int, n_fft: int, sample_rate: int) -> list[int]:
    """Frequencies per mel band as the package computes them (a throwaway 1-wide mono model)."""
    probe = _build(
        dim=1, depth=0, stereo=False, num_bands=num_bands, stft_n_fft=n_fft, stft_win_length=n_fft,
        dim_freqs_in=n_fft // 2 + 1, sample_rate=sample_rate, mask_estimator_depth=1,
    )
    return probe.num_freqs_per_band.tolist()


def detect_melband_config(sd: dict, source: str = "MelBand RoFormer weights", **stft) -> MelBandConfig:
    """Architecture from tensor shapes; STFT settings (not in the weights) from `stft` or Kim's defaults."""
    sd = _strip_prefix(sd)
    if "band_split.to_features.0.1.weight" not in sd:
        raise ModelFileError(
            f"{source}: key 'band_split.to_features.0.1.weight' not found; this is not a MelBand RoFormer checkpoint"
        )
    num_bands = _count(sd, "band_split.to_features.")
    dim = sd["band_split.to_features.0.1.weight"].shape[0]
    depth = _count(sd, "layers.")
    time_depth = _count(sd, "layers.0.0.layers.")
    freq_depth = _count(sd, "layers.0.1.layers.")
    attn = next((f"layers.0.{t}.layers.0.0." for t, d in ((0, time_depth), (1, freq_depth)) if d), None)
    if depth == 0 or attn is None:
        raise ModelFileError(f"{source}: no transformer layers ('layers.0.0.layers.0.0.to_qkv.weight') found")
    heads = sd[attn + "to_gates.weight"].shape[0]
    dim_head = sd[attn + "to_qkv.weight"].shape[0] // 3 // heads
    mlp = [int(k.split(".")[5]) for k in sd if k.startswith("mask_estimators.0.to_freqs.0.0.") and k.endswith(".weight")]
    if not mlp:
        raise ModelFileError(f"{source}: mask estimator weights 'mask_estimators.0.to_freqs.0.0.0.weight' not found")
    base = MelBandConfig()
    kw = dict(
        dim=dim, depth=depth, num_stems=_count(sd, "mask_estimators."), time_transformer_depth=time_depth,
        freq_transformer_depth=freq_depth, num_bands=num_bands, dim_head=dim_head, heads=heads,
        mask_estimator_depth=max(mlp) // 2,
    )
    for k in ("sample_rate", "stft_n_fft", "stft_hop_length", "stft_win_length"):
        kw[k] = stft.get(k, getattr(base, k))
    counts = _band_freq_counts(num_bands, kw["stft_n_fft"], kw["sample_rate"])
    widths = [sd[f"band_split.to_features.{b}.1.weight"].shape[1] for b in range(num_bands)]
    channels = {w / (2 * c) for w, c in zip(widths, counts)}
    if channels not in ({1.0}, {2.0}):
        raise ModelFileError(
            f"{source}: band widths {widths[:4]}... do not fit {num_bands} mel bands of an n_fft={kw['stft_n_fft']} "
            f"STFT at {kw['sample_rate']} Hz; the STFT settings differ from Kim's model (pass stft_n_fft=..., sample_rate=...)"
        )
    kw["stereo"] = channels == {2.0}
    return MelBandConfig(**kw)


class VocalSeparator:
    """A loaded MelBand RoFormer and the chunked inference around it."""

    def __init__(self, model, config: MelBandConfig, device="cpu"):
        self.model = model.eval().requires_grad_(False)
        self.config = config
        self.device = torch.device(device)

    # ------------------------------------------------------------------ raw model at 44.1 kHz
    @torch.no_grad()
    def _run(self, x: torch.Tensor, stem: int) -> torch.Tensor:
        """[channels, T] at the model rate -> [channels, T] of the chosen stem."""
        n = x.shape[-1]
        short = n <= self.config.stft_n_fft // 2  # torch.stft's reflect padding needs more samples
        if short:
            x = torch.nn.functional.pad(x, (0, self.config.stft_n_fft - n))
        p = next(self.model.parameters())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the package's sdp_kernel context manager is deprecated
            y = self.model(x[None].to(p.device, p.dtype)).float()
        y = y[0, stem] if self.config.num_stems > 1 else y[0]
        return y[..., :n].to(x.device)

    def separate(self, x: torch.Tensor, chunk_seconds: float = 8.0, overlap_seconds: float = 2.0, stem: int = 0) -> torch.Tensor:
        """[channels, T] at 44.1 kHz -> the stem, same shape; fixed-size chunks, weights summing to one."""
        cfg = self.config
        hop, guard = cfg.stft_hop_length, cfg.stft_n_fft
        chunk = max(1, round(chunk_seconds * cfg.sample_rate / hop)) * hop
        overlap = max(1, round(overlap_seconds * cfg.sample_rate / hop)) * hop
        if overlap < 2 * guard + hop:
            raise ValueError(
                f"overlap_seconds={overlap_seconds} is too short: the cross-fade needs more than "
                f"{(2 * guard + hop) / cfg.sample_rate:.3f} s"
            )
        if chunk < 2 * overlap:
            raise ValueError(f"chunk_seconds={chunk_seconds} must be at least twice overlap_seconds={overlap_seconds}")
        if not 0 <= stem < cfg.num_stems:
            raise ValueError(f"stem {stem} out of range: this model has {cfg.num_stems} stem(s)")
        model_in = self._to_model_channels(x)
        n = model_in.shape[-1]
        if n <= chunk:
            return self._from_model_channels(self._run(model_in, stem), x.shape[0])
        step = chunk - overlap
        starts = [0]
        while starts[-1] + chunk < n:
            starts.append(starts[-1] + step)
        ramp = overlap - 2 * guard
        up = torch.sin(0.5 * math.pi * (torch.arange(ramp) + 0.5) / ramp) ** 2
        out = torch.zeros(model_in.shape[0], n)
        for k, s in enumerate(starts):
            piece = model_in[:, s:s + chunk]
            length = piece.shape[-1]
            w = torch.ones(length)
            if k > 0:
                w[:guard] = 0
                w[guard:guard + ramp] = up
            if k < len(starts) - 1:
                w[length - overlap + guard:length - guard] = 1 - up
                w[length - guard:] = 0
            out[:, s:s + length] += self._run(piece, stem) * w
        return self._from_model_channels(out, x.shape[0])

    def _to_model_channels(self, x: torch.Tensor) -> torch.Tensor:
        want = 2 if self.config.stereo else 1
        if x.shape[0] == want:
            return x
        mono = x.mean(0, keepdim=True)
        return mono.expand(want, -1).contiguous()

    @staticmethod
    def _from_model_channels(y: torch.Tensor, channels: int) -> torch.Tensor:
        if y.shape[0] == channels:
            return y
        return y.mean(0, keepdim=True).expand(channels, -1).contiguous()

    # ------------------------------------------------------------------ ComfyUI AUDIO in, AUDIO out
    def isolate_vocals(self, audio, chunk_seconds: float = 8.0, overlap_seconds: float = 2.0, name: str = "audio", stem: int = 0) -> dict:
        """AUDIO dict -> AUDIO dict of the vocals at the input's sample rate, channels and length."""
        wave, sr = audio_from_comfy(audio, name)
        outs = []
        for item in wave:                                                # [C, T] per batch entry
            x = resample(item, sr, self.config.sample_rate)
            y = self.separate(x, chunk_seconds, overlap_seconds, stem)
            y = resample(y, self.config.sample_rate, sr)
            t = item.shape[-1]
            y = y[..., :t] if y.shape[-1] >= t else torch.nn.functional.pad(y, (0, t - y.shape[-1]))
            outs.append(y)
        info(f"vocal isolation: {wave.shape[0]} clip(s), {wave.shape[-1] / sr:.2f} s at {sr} Hz")
        return {"waveform": torch.stack(outs), "sample_rate": sr}


def load_vocal_separator(name_or_path: str, folders=None, device="cpu", dtype: torch.dtype = torch.float32, **stft) -> VocalSeparator:
    """Find, check and load a MelBand RoFormer safetensors file (Kijai's fp16/fp32 or any of the same layout)."""
    path = find_model_file(name_or_path, folders)
    sd = _strip_prefix(load_tensors(path))
    config = detect_melband_config(sd, source=path, **stft)
    model = _build(**config.model_kwargs())
    expected = model.state_dict()
    for key in sd:
        if key not in expected:
            raise ModelFileError(f"{path}: unexpected key '{key}' for a MelBand RoFormer of the detected shape")
    for key, ref in expected.items():
        if key.endswith("rotary_embed.freqs") and key not in sd:
            sd[key] = ref  # fixed rotary frequencies; some exports leave them out
        if key not in sd:
            raise ModelFileError(f"{path}: weight '{key}' missing; the file is incomplete")
        if tuple(sd[key].shape) != tuple(ref.shape):
            raise ModelFileError(f"{path}: '{key}' has shape {tuple(sd[key].shape)}, expected {tuple(ref.shape)}")
    model.load_state_dict({k: v.to(torch.float32) for k, v in sd.items()}, strict=True)
    model.to(device=device, dtype=dtype)
    load(
        f"MelBand RoFormer {os.path.basename(path)}: dim {config.dim}, depth {config.depth}, {config.num_bands} bands, "
        f"{'stereo' if config.stereo else 'mono'}, {config.num_stems} stem(s), {dtype} on {device}"
    )
    return VocalSeparator(model, config, device)
