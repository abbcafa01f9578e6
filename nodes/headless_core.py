"""Minimal stand-ins for the core nodes the example workflow uses (LoadImage, LoadAudio), so the
headless runner executes it without ComfyUI. Inside ComfyUI the real core nodes run instead.
"""
from __future__ import annotations

import os

import numpy as np
import torch

_state = {"input_dirs": []}
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
AUDIO_EXTS = (".wav", ".mp3", ".flac", ".ogg", ".m4a", ".aac", ".opus")


def set_input_dirs(dirs: list[str]) -> None:
    _state["input_dirs"] = [d for d in dirs if d]


def _list(exts) -> list[str]:
    out = set()
    for d in _state["input_dirs"]:
        if os.path.isdir(d):
            out.update(f for f in os.listdir(d) if f.lower().endswith(exts))
    return sorted(out)


def resolve_input(name: str) -> str:
    if os.path.isabs(name) and os.path.exists(name):
        return name
    for d in _state["input_dirs"]:
        p = os.path.join(d, name)
        if os.path.exists(p):
            return p
    raise FileNotFoundError(
        f"Input file not found: '{name}'. Searched: {', '.join(_state['input_dirs']) or '(none)'}. "
        f"Pass --input DIR or put the file next to the workflow."
    )


def load_image_file(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Image file -> (IMAGE [1, H, W, 3] 0..1, MASK [1, H, W]) like core LoadImage (first frame)."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        has_alpha = "A" in im.getbands()
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
    image = torch.from_numpy(rgba[..., :3].copy())[None]
    mask = 1.0 - torch.from_numpy(rgba[..., 3].copy())[None] if has_alpha else torch.zeros(1, *rgba.shape[:2])
    return image, mask


def load_audio_file(path: str) -> dict:
    """Audio file -> AUDIO {'waveform': [1, C, T] float32, 'sample_rate'} decoded with PyAV."""
    import av

    chunks, rate = [], None
    with av.open(path) as c:
        if not c.streams.audio:
            raise ValueError(f"audio: {path} has no audio stream")
        stream = c.streams.audio[0]
        for frame in c.decode(stream):
            arr = frame.to_ndarray()
            if arr.dtype.kind in "iu":
                arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
            if frame.format.is_packed:
                arr = arr.reshape(-1, len(frame.layout.channels)).T
            chunks.append(arr.astype(np.float32))
            rate = frame.sample_rate
    if not chunks:
        raise ValueError(f"audio: {path} decodes to no samples")
    wav = torch.from_numpy(np.concatenate(chunks, axis=1))[None]
    return {"waveform": wav, "sample_rate": int(rate)}


class LoadImage:
    CATEGORY = "image"
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load_image"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": (_list(IMAGE_EXTS), {"image_upload": True})}}

    def load_image(self, image, upload=None):
        return load_image_file(resolve_input(image))


class LoadAudio:
    CATEGORY = "audio"
    RETURN_TYPES = ("AUDIO",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"audio": (_list(AUDIO_EXTS), {"audio_upload": True})}}

    def load(self, audio, audioUI=None, upload=None):
        return (load_audio_file(resolve_input(audio)),)


CORE_NODES = {"LoadImage": LoadImage, "LoadAudio": LoadAudio}
