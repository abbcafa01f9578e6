"""Spatial tiling for the Wan VAE: run encode/decode on overlapping tiles and blend them linearly.

Why: at 720p the decoder's full-resolution activations (96-192 channels x 4 frames) dominate VRAM;
tiles bound that peak by the tile size instead of the frame size. The VAE is causal in time only,
so every tile is processed over all frames with its own feature cache and the seams are purely
spatial. Tiles are equal-sized (the last one is aligned to the border) and their overlaps are
cross-faded with linear ramps; the result is normalised by the summed weights, so any overlap
pattern (including overlaps wider than the stride) blends to a partition of unity.
"""
from __future__ import annotations

from typing import Callable

import torch


def tile_starts(size: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of equal tiles of `tile` covering [0, size), about `overlap` apart, multiples of `align`."""
    if size <= tile:
        return [0]
    stride = max(align, (tile - overlap) // align * align)
    starts = list(range(0, size - tile, stride))
    last = (size - tile) // align * align
    if last + tile < size:  # size - tile is not aligned: the caller guarantees aligned sizes, keep it safe
        last = size - tile
    if not starts or starts[-1] != last:
        starts.append(last)
    return starts


def _ramp(n: int, before: int, after: int, device) -> torch.Tensor:
    """1 inside, rising over the first `before` and falling over the last `after` entries (never 0)."""
    w = torch.ones(n, device=device)
    if before > 0:
        w[:before] = (torch.arange(before, device=device, dtype=torch.float32) + 0.5) / before
    if after > 0:
        w[n - after:] = torch.minimum(w[n - after:], (torch.arange(after, 0, -1, device=device, dtype=torch.float32) - 0.5) / after)
    return w


def _axis_weights(starts: list[int], tile: int, scale: float, device) -> list[torch.Tensor]:
    """Per-tile output-space weights along one axis; the ramps span the real overlap with each neighbour."""
    n_out = int(tile * scale)
    out = []
    for i, s in enumerate(starts):
        before = int((starts[i - 1] + tile - s) * scale) if i > 0 else 0
        after = int((s + tile - starts[i + 1]) * scale) if i + 1 < len(starts) else 0
        out.append(_ramp(n_out, min(before, n_out), min(after, n_out), device))
    return out


def run_tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, overlap: int,
              scale: float, align: int = 1) -> torch.Tensor:
    """Apply `fn` to overlapping spatial tiles of x [..., H, W] and blend the outputs (returned in fp32).

    `scale`: output pixels per input pixel (8 for decode, 1/8 for encode); `align`: tile offsets and
    sizes stay multiples of it in input units (8 for encode so each tile maps to whole latents).
    """
    h, w = x.shape[-2:]
    tile = max(align, tile // align * align)
    overlap = max(0, min(overlap // align * align, tile - align))
    th, tw = min(tile, h), min(tile, w)
    ys, xs = tile_starts(h, th, overlap, align), tile_starts(w, tw, overlap, align)
    if len(ys) == 1 and len(xs) == 1:
        return fn(x).float()
    wy = _axis_weights(ys, th, scale, x.device)
    wx = _axis_weights(xs, tw, scale, x.device)
    out = weight = None
    for iy, y0 in enumerate(ys):
        for ix, x0 in enumerate(xs):
            part = fn(x[..., y0:y0 + th, x0:x0 + tw])
            if out is None:
                out = torch.zeros(*part.shape[:-2], int(h * scale), int(w * scale), device=part.device)
                weight = torch.zeros(out.shape[-2:], device=part.device)
            oy, ox = int(y0 * scale), int(x0 * scale)
            oh, ow = part.shape[-2:]
            wgt = wy[iy][:, None].to(part.device) * wx[ix][None, :].to(part.device)
            out[..., oy:oy + oh, ox:ox + ow].add_(part.float() * wgt)
            weight[oy:oy + oh, ox:ox + ow].add_(wgt)
            del part
    return out.div_(weight)


# Peak extra memory of an untiled decode, measured on an H200 with the real config in bf16
# (81 frames; 480x832: 4.27 GiB, 720x1280: 9.85 GiB): about 10.5 KB per output pixel for the
# activations and caches (one latent frame at a time, so independent of the frame count) plus the
# fp32 output video. Encode peaks lower (8.6 KB per pixel). Other dtypes are scaled by item size.
_DECODE_BYTES_PER_PIXEL_BF16 = 10_500


def decode_peak_bytes(height: int, width: int, frames: int, itemsize: int = 2) -> int:
    """Estimated extra memory of an untiled decode to `frames` x `height` x `width` pixels."""
    pixels = height * width
    return int(pixels * _DECODE_BYTES_PER_PIXEL_BF16 * itemsize / 2 + pixels * frames * 3 * 4)


def should_tile(height: int, width: int, frames: int, free_bytes: int, itemsize: int = 2,
                fraction: float = 0.8) -> bool:
    """For an "auto" tiling setting: tile when the untiled decode would use more than `fraction` of free memory."""
    return decode_peak_bytes(height, width, frames, itemsize) > fraction * free_bytes
