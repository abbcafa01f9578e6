"""MP4 output: h264 yuv420p video with AAC audio, metadata, and never-overwrite naming.

PyAV (libav bundled in its wheels) encodes everything in-process, so no ffmpeg binary is
needed. The file is written under a temporary name in the target folder and only then
linked to its final `prefix_00001.mp4` name, so a failed encode never leaves a half-written
file and an existing file is never replaced.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch


class OutputError(OSError):
    """The output folder cannot take the video (missing, read-only, full)."""


@dataclass
class VideoInfo:
    path: str
    frames: int
    fps: float
    width: int
    height: int
    has_audio: bool
    audio_seconds: float


def frames_to_uint8(images: torch.Tensor) -> np.ndarray:
    """ComfyUI IMAGE [N, H, W, C] float 0..1 -> uint8 [N, H, W, 3] (alpha dropped, gray expanded)."""
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images: expected a non-empty IMAGE batch [N, H, W, C], got shape {tuple(images.shape)}")
    c = images.shape[-1]
    if c == 1:
        images = images.expand(-1, -1, -1, 3)
    elif c >= 3:
        images = images[..., :3]
    else:
        raise ValueError(f"images: expected 1, 3 or 4 channels, got {c}")
    arr = (images.detach().float().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()
    return np.ascontiguousarray(arr)


def _even(n: int) -> int:
    return n - (n % 2)


def next_output_path(folder: str, prefix: str, ext: str = "mp4") -> str:
    """First free `<folder>/<prefix>_NNNNN.<ext>`, counting after the highest existing number."""
    sub = os.path.dirname(prefix)
    base = os.path.basename(prefix) or "WanFP4"
    target_dir = os.path.join(folder, sub) if sub else folder
    pattern = re.compile(re.escape(base) + r"_(\d{5,})\." + re.escape(ext) + r"$")
    highest = 0
    if os.path.isdir(target_dir):
        for name in os.listdir(target_dir):
            m = pattern.match(name)
            if m:
                highest = max(highest, int(m.group(1)))
    return os.path.join(target_dir, f"{base}_{highest + 1:05d}.{ext}")


def _claim_final_name(tmp_path: str, folder: str, prefix: str, ext: str) -> str:
    """Hard-link the finished temp file to the next free name; retry if another writer won the race."""
    for _ in range(1000):
        final = next_output_path(folder, prefix, ext)
        try:
            os.link(tmp_path, final)
            return final
        except FileExistsError:
            continue
    raise OutputError(f"output folder {folder}: could not find a free name for prefix {prefix!r}")


def write_mp4(
    images: torch.Tensor,
    folder: str,
    prefix: str = "WanFP4",
    fps: float = 16.0,
    crf: int = 19,
    audio: dict | None = None,
    metadata: dict | None = None,
) -> VideoInfo:
    """Encode IMAGE frames (+ optional ComfyUI AUDIO dict) to a new MP4 in `folder`; returns its info.

    Odd widths/heights are cropped by one pixel (yuv420p needs even sizes). Audio longer than the
    video is trimmed to it; metadata values are stored as MP4 tags (dicts as JSON strings).
    """
    frames = frames_to_uint8(images)
    n, h, w, _ = frames.shape
    he, we = _even(h), _even(w)
    if he < 2 or we < 2:
        raise ValueError(f"images: frames of {w}x{h} are too small to encode")
    frames = frames[:, :he, :we]
    if not (0 <= int(crf) <= 51):
        raise ValueError(f"crf: must be within 0..51, got {crf}")
    if fps <= 0:
        raise ValueError(f"frame_rate: must be > 0, got {fps}")

    sub = os.path.dirname(prefix)
    target_dir = os.path.join(folder, sub) if sub else folder
    try:
        os.makedirs(target_dir, exist_ok=True)
        fd, tmp_path = tempfile.mkstemp(prefix=".wanfp4_", suffix=".mp4.part", dir=target_dir)
        os.close(fd)
    except OSError as e:
        raise OutputError(f"output folder {target_dir} cannot be written ({e.strerror}); choose another folder") from e

    import av

    audio_seconds = 0.0
    try:
        with av.open(tmp_path, mode="w", format="mp4", options={"movflags": "use_metadata_tags"}) as container:
            for key, value in (metadata or {}).items():
                container.metadata[str(key)] = value if isinstance(value, str) else json.dumps(value)
            rate = Fraction(fps).limit_denominator(1001)
            vstream = container.add_stream("libx264", rate=rate)
            vstream.width, vstream.height = we, he
            vstream.pix_fmt = "yuv420p"
            vstream.options = {"crf": str(int(crf)), "preset": "medium"}
            # Frame threads, as the ffmpeg CLI uses (PyAV defaults to slice threads): 1.25 s instead of 1.6 s
            # for the seed's 81 frames of 640x720 on 16 cores (bench/RESULTS.md, session 4).
            vstream.codec_context.thread_type = "FRAME"
            astream = None
            wav = None
            if audio is not None:
                wav, sr = _audio_for_video(audio, n / float(fps))
                if wav is not None:
                    astream = container.add_stream("aac", rate=sr)
                    astream.layout = "stereo" if wav.shape[0] == 2 else "mono"
                    audio_seconds = wav.shape[1] / sr
            for frame in frames:
                for packet in vstream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in vstream.encode():
                container.mux(packet)
            if astream is not None:
                _encode_audio(container, astream, wav, sr)
        final = _claim_final_name(tmp_path, folder, prefix, "mp4")
    except OSError as e:
        raise OutputError(f"writing the video to {target_dir} failed ({e.strerror or e}); free space or choose another folder") from e
    finally:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
    return VideoInfo(final, n, float(fps), we, he, audio_seconds > 0, audio_seconds)


def _audio_for_video(audio: dict, video_seconds: float) -> tuple[np.ndarray | None, int]:
    """AUDIO dict -> float32 [C<=2, T] trimmed to the video length."""
    wav = audio.get("waveform")
    sr = int(audio.get("sample_rate", 0))
    if wav is None or sr <= 0:
        raise ValueError("audio: expected a ComfyUI AUDIO dict with 'waveform' [B, C, T] and 'sample_rate' > 0")
    wav = torch.as_tensor(wav).detach().float().cpu()
    if wav.ndim == 3:
        wav = wav[0]
    if wav.ndim == 1:
        wav = wav[None]
    wav = wav[:2]
    keep = min(wav.shape[1], int(round(video_seconds * sr)))
    if keep <= 0:
        return None, sr
    return np.ascontiguousarray(wav[:, :keep].clamp(-1, 1).numpy()), sr


def _encode_audio(container, stream, wav: np.ndarray, sr: int) -> None:
    import av

    layout = "stereo" if wav.shape[0] == 2 else "mono"
    chunk = 1024 * 16
    pts = 0
    for start in range(0, wav.shape[1], chunk):
        part = np.ascontiguousarray(wav[:, start : start + chunk])
        frame = av.AudioFrame.from_ndarray(part, format="fltp", layout=layout)
        frame.sample_rate = sr
        frame.pts = pts
        pts += part.shape[1]
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def probe_mp4(path: str) -> dict:
    """Read an MP4 back: frame count, fps, size, audio duration, metadata (used by tests and the runner)."""
    import av

    with av.open(path) as c:
        v = c.streams.video[0]
        frames = sum(1 for _ in c.decode(video=0))
        info = {
            "frames": frames,
            "fps": float(v.average_rate) if v.average_rate else 0.0,
            "width": v.codec_context.width,
            "height": v.codec_context.height,
            "codec": v.codec_context.name,
            "pix_fmt": v.codec_context.pix_fmt,
            "metadata": dict(c.metadata),
            "audio_seconds": 0.0,
            "audio_codec": None,
        }
    with av.open(path) as c:
        if c.streams.audio:
            a = c.streams.audio[0]
            samples = sum(f.samples for f in c.decode(audio=0))
            info["audio_seconds"] = samples / a.codec_context.sample_rate
            info["audio_codec"] = a.codec_context.name
    return info
