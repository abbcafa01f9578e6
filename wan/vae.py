"""The Wan2.1 VAE: a causal 3-D VAE (8x spatial, 4x temporal, 16 latent channels) with a feature
cache, so video is encoded in chunks of 1, 4, 4, ... frames and decoded one latent frame at a
time (reference doc §2). Module and parameter names are the original ones, so the official
`Wan2.1_VAE.pth` and ComfyUI's `wan_2.1_vae.safetensors` load without renaming.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

CACHE_T = 2
LATENT_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
               0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
LATENT_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
              3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


@dataclass(frozen=True)
class VAEConfig:
    dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temporal_downsample: tuple[bool, ...] = (False, True, True)


class CausalConv3d(nn.Conv3d):
    """Conv3d padded only on the past side in time; `cache` holds the previous chunk's last frames."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        pt, ph, pw = self.padding
        self._pad = (pw, pw, ph, ph, 2 * pt, 0)
        self.padding = (0, 0, 0)

    def forward(self, x: torch.Tensor, cache: torch.Tensor | None = None) -> torch.Tensor:
        pad = list(self._pad)
        if cache is not None and self._pad[4] > 0:
            x = torch.cat([cache.to(x.device, x.dtype), x], dim=2)
            pad[4] -= cache.shape[2]
        return super().forward(F.pad(x, pad))


class RMS_norm(nn.Module):  # noqa: N801 - original class name kept for readability against the reference
    """x / ||x||_channels * sqrt(C) * gamma; gamma is (C,1,1,1) for video, (C,1,1) for 2-D maps."""

    def __init__(self, dim: int, images: bool = True):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones((dim, 1, 1) if images else (dim, 1, 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


class _Upsample(nn.Upsample):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type_as(x)  # nearest-exact in fp32 (bf16 is not supported everywhere)


class _Cache:
    """Per-call feature cache: one slot per causal conv, walked in a fixed order by `idx`."""

    def __init__(self, n: int):
        self.slots: list = [None] * n
        self.idx = 0

    def conv(self, layer: CausalConv3d, x: torch.Tensor) -> torch.Tensor:
        cached = self.slots[self.idx]
        keep = x[:, :, -CACHE_T:].clone()
        if keep.shape[2] < CACHE_T and isinstance(cached, torch.Tensor):
            keep = torch.cat([cached[:, :, -1:].to(keep.device, keep.dtype), keep], dim=2)
        out = layer(x, cached if isinstance(cached, torch.Tensor) else None)
        self.slots[self.idx] = keep
        self.idx += 1
        return out


def _run(layer: nn.Module, x: torch.Tensor, cache: _Cache | None) -> torch.Tensor:
    if isinstance(layer, CausalConv3d) and cache is not None:
        return cache.conv(layer, x)
    if isinstance(layer, (ResidualBlock, Resample)):
        return layer(x, cache)
    return layer(x)


def _frames_2d(fn, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2-D module to every frame of [B, C, T, H, W]."""
    b, c, t, h, w = x.shape
    y = fn(x.transpose(1, 2).reshape(b * t, c, h, w))
    return y.reshape(b, t, *y.shape[1:]).transpose(1, 2)


class Resample(nn.Module):
    def __init__(self, dim: int, mode: str):
        super().__init__()
        self.mode = mode
        if mode == "upsample2d":
            self.resample = nn.Sequential(_Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact"),
                                          nn.Conv2d(dim, dim // 2, 3, padding=1))
        elif mode == "upsample3d":
            self.resample = nn.Sequential(_Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact"),
                                          nn.Conv2d(dim, dim // 2, 3, padding=1))
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample2d":
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=(2, 2)))
        elif mode == "downsample3d":
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=(2, 2)))
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), padding=(0, 0, 0))
        else:
            raise ValueError(f"unknown resample mode {mode}")

    def forward(self, x: torch.Tensor, cache: _Cache | None = None) -> torch.Tensor:
        b, c, t, h, w = x.shape
        if self.mode == "upsample3d" and cache is not None:
            # First chunk: no temporal upsampling (latent frame 0 decodes to exactly one frame).
            slot = cache.slots[cache.idx]
            if slot is None:
                cache.slots[cache.idx] = "first"
            else:
                keep = x[:, :, -CACHE_T:].clone()
                if keep.shape[2] < CACHE_T:
                    prev = torch.zeros_like(keep) if isinstance(slot, str) else slot[:, :, -1:].to(keep.dtype)
                    keep = torch.cat([prev, keep], dim=2)
                x = self.time_conv(x, None if isinstance(slot, str) else slot)
                cache.slots[cache.idx] = keep
                x = x.reshape(b, 2, c, t, h, w)
                x = torch.stack((x[:, 0], x[:, 1]), 3).reshape(b, c, t * 2, h, w)
            cache.idx += 1
        x = _frames_2d(self.resample, x)
        if self.mode == "downsample3d" and cache is not None:
            slot = cache.slots[cache.idx]
            if slot is None:  # first chunk: only remembered
                cache.slots[cache.idx] = x.clone()
            else:
                keep = x[:, :, -1:].clone()
                x = self.time_conv(torch.cat([slot[:, :, -1:].to(x.dtype), x], 2))
                cache.slots[cache.idx] = keep
            cache.idx += 1
        return x


class ResidualBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        self.residual = nn.Sequential(
            RMS_norm(in_dim, images=False), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMS_norm(out_dim, images=False), nn.SiLU(), nn.Dropout(dropout), CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: _Cache | None = None) -> torch.Tensor:
        h = self.shortcut(x)
        for layer in self.residual:
            x = _run(layer, x, cache)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head spatial self-attention within each frame."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMS_norm(dim)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def attend(f: torch.Tensor) -> torch.Tensor:
            n, c, h, w = f.shape
            q, k, v = self.to_qkv(self.norm(f)).reshape(n, 1, c * 3, h * w).permute(0, 1, 3, 2).chunk(3, dim=-1)
            o = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous())
            return self.proj(o.squeeze(1).permute(0, 2, 1).reshape(n, c, h, w))

        return x + _frames_2d(attend, x)


class Encoder3d(nn.Module):
    def __init__(self, c: VAEConfig, out_channels: int):
        super().__init__()
        dims = [c.dim * u for u in (1, *c.dim_mult)]
        scale = 1.0
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(c.num_res_blocks):
                layers.append(ResidualBlock(in_dim, out_dim))
                if scale in c.attn_scales:
                    layers.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if i != len(c.dim_mult) - 1:
                layers.append(Resample(out_dim, "downsample3d" if c.temporal_downsample[i] else "downsample2d"))
                scale /= 2.0
        self.downsamples = nn.Sequential(*layers)
        self.middle = nn.Sequential(ResidualBlock(out_dim, out_dim), AttentionBlock(out_dim), ResidualBlock(out_dim, out_dim))
        self.head = nn.Sequential(RMS_norm(out_dim, images=False), nn.SiLU(), CausalConv3d(out_dim, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, cache: _Cache | None = None) -> torch.Tensor:
        x = _run(self.conv1, x, cache)
        for seq in (self.downsamples, self.middle, self.head):
            for layer in seq:
                x = _run(layer, x, cache)
        return x


class Decoder3d(nn.Module):
    def __init__(self, c: VAEConfig):
        super().__init__()
        dims = [c.dim * u for u in (c.dim_mult[-1], *c.dim_mult[::-1])]
        temporal_upsample = tuple(c.temporal_downsample[::-1])
        scale = 1.0 / 2 ** (len(c.dim_mult) - 2)
        self.conv1 = CausalConv3d(c.z_dim, dims[0], 3, padding=1)
        self.middle = nn.Sequential(ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]), ResidualBlock(dims[0], dims[0]))
        layers: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i in (1, 2, 3):
                in_dim = in_dim // 2  # the previous upsample halved the channels
            for _ in range(c.num_res_blocks + 1):
                layers.append(ResidualBlock(in_dim, out_dim))
                if scale in c.attn_scales:
                    layers.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if i != len(c.dim_mult) - 1:
                layers.append(Resample(out_dim, "upsample3d" if temporal_upsample[i] else "upsample2d"))
                scale *= 2.0
        self.upsamples = nn.Sequential(*layers)
        self.head = nn.Sequential(RMS_norm(out_dim, images=False), nn.SiLU(), CausalConv3d(out_dim, 3, 3, padding=1))

    def forward(self, x: torch.Tensor, cache: _Cache | None = None) -> torch.Tensor:
        x = _run(self.conv1, x, cache)
        for seq in (self.middle, self.upsamples, self.head):
            for layer in seq:
                x = _run(layer, x, cache)
        return x


def _count_convs(m: nn.Module) -> int:
    return sum(isinstance(x, CausalConv3d) for x in m.modules())


class WanVAE(nn.Module):
    """encode(video in [-1, 1]) -> normalized latent mean; decode(normalized latent) -> video in [-1, 1].

    Keys: encoder.*, conv1 (quant conv), conv2 (post-quant conv), decoder.* (original Wan names).
    """

    def __init__(self, config: VAEConfig | None = None):
        super().__init__()
        c = self.config = config or VAEConfig()
        self.encoder = Encoder3d(c, c.z_dim * 2)
        self.conv1 = CausalConv3d(c.z_dim * 2, c.z_dim * 2, 1)
        self.conv2 = CausalConv3d(c.z_dim, c.z_dim, 1)
        self.decoder = Decoder3d(c)
        self.register_buffer("latent_mean", torch.tensor(LATENT_MEAN[: c.z_dim]), persistent=False)
        self.register_buffer("latent_std", torch.tensor(LATENT_STD[: c.z_dim]), persistent=False)
        self.tiling: dict | None = None

    # ------------------------------------------------------------------ checks
    @staticmethod
    def _check_video(video: torch.Tensor) -> None:
        if video.dim() != 5 or video.shape[1] != 3:
            raise ValueError(f"video: expected [B, 3, F, H, W], got shape {tuple(video.shape)}")
        f, h, w = video.shape[2:]
        if (f - 1) % 4:
            raise ValueError(f"video: {f} frames; the Wan VAE needs 4k+1 frames (1, 5, 9, ..., 81); use {4 * round((f - 1) / 4) + 1}")
        if h % 8 or w % 8:
            raise ValueError(f"video: {w}x{h} pixels; width and height must be multiples of 8 (e.g. {w // 8 * 8}x{h // 8 * 8})")

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1, 1, 1, 1)
        mean = self.latent_mean
        std = self.latent_std
        if mean.is_meta:  # built on meta and filled by the loader: constants come from the tables
            mean = torch.tensor(LATENT_MEAN[: self.config.z_dim])
            std = torch.tensor(LATENT_STD[: self.config.z_dim])
        return mean.to(like.device, torch.float32).view(shape), std.to(like.device, torch.float32).view(shape)

    # ------------------------------------------------------------------ public API
    def set_tiling(self, enabled: bool = True, tile_px: int = 256, overlap_px: int = 128) -> None:
        """Spatial tiling for low VRAM: tiles of `tile_px` pixels (latent tiles of tile_px/8) with linear blending."""
        self.tiling = {"tile": tile_px, "overlap": overlap_px} if enabled else None

    @torch.no_grad()
    def encode(self, video: torch.Tensor, tiled: bool | None = None) -> torch.Tensor:
        """[B, 3, F, H, W] in [-1, 1] -> normalized latent mean [B, 16, (F-1)/4+1, H/8, W/8] (fp32)."""
        self._check_video(video)
        video = video.to(self._param_dtype())
        if tiled if tiled is not None else self.tiling is not None:
            t = self.tiling or {"tile": 256, "overlap": 128}
            return _tiled(self._encode, video, t["tile"], t["overlap"], 8, down=True)
        return self._encode(video)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, tiled: bool | None = None) -> torch.Tensor:
        """Normalized latent [B, 16, T, h, w] -> video [B, 3, 4(T-1)+1, 8h, 8w] clamped to [-1, 1]."""
        if z.dim() != 5 or z.shape[1] != self.config.z_dim:
            raise ValueError(f"latent: expected [B, {self.config.z_dim}, T, h, w], got shape {tuple(z.shape)}")
        if tiled if tiled is not None else self.tiling is not None:
            t = self.tiling or {"tile": 256, "overlap": 128}
            out = _tiled(self._decode, z, t["tile"] // 8, t["overlap"] // 8, 8, down=False)
        else:
            out = self._decode(z)
        return out.clamp_(-1, 1)

    # ------------------------------------------------------------------ chunked passes
    def _param_dtype(self) -> torch.dtype:
        return self.conv1.weight.dtype

    def _encode(self, video: torch.Tensor) -> torch.Tensor:
        cache = _Cache(_count_convs(self.encoder))
        t = video.shape[2]
        outs = []
        for i in range(1 + (t - 1) // 4):
            cache.idx = 0
            chunk = video[:, :, :1] if i == 0 else video[:, :, 1 + 4 * (i - 1): 1 + 4 * i]
            outs.append(self.encoder(chunk, cache))
        mu, _ = self.conv1(torch.cat(outs, 2)).chunk(2, dim=1)
        mean, std = self._stats(mu)
        return (mu.float() - mean) / std

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(z)
        x = self.conv2((z.float() * std + mean).to(self._param_dtype()))
        cache = _Cache(_count_convs(self.decoder))
        outs = []
        for i in range(x.shape[2]):
            cache.idx = 0
            outs.append(self.decoder(x[:, :, i: i + 1], cache).float())
        return torch.cat(outs, 2)


def _blend_weights(n: int, overlap: int, first: bool, last: bool, device) -> torch.Tensor:
    w = torch.ones(n, device=device)
    if overlap > 0:
        ramp = (torch.arange(overlap, device=device, dtype=torch.float32) + 0.5) / overlap
        if not first:
            w[:overlap] = ramp
        if not last:
            w[-overlap:] = ramp.flip(0)
    return w


def _tiled(fn, x: torch.Tensor, tile: int, overlap: int, factor: int, down: bool) -> torch.Tensor:
    """Run `fn` on overlapping spatial tiles of x and blend the results linearly.

    Tiles are in x's own pixel units; the output grid is x's divided (down) or multiplied by `factor`.
    """
    h, w = x.shape[-2:]
    if h <= tile and w <= tile:
        return fn(x)
    unit = 8 if down else 1  # encode tiles must stay multiples of 8 pixels
    tile = max(unit, tile // unit * unit)
    overlap = min(overlap // unit * unit, tile * 3 // 4 // unit * unit)
    stride = tile - overlap

    def starts(n: int) -> list[int]:
        if n <= tile:
            return [0]
        s = list(range(0, n - tile, stride)) + [n - tile]
        return sorted(set(s))

    out = weight = None
    for y0 in starts(h):
        for x0 in starts(w):
            th, tw = min(tile, h), min(tile, w)
            part = fn(x[..., y0:y0 + th, x0:x0 + tw]).float()
            scale = (1 / factor) if down else factor
            oy, ox, oh, ow = int(y0 * scale), int(x0 * scale), part.shape[-2], part.shape[-1]
            if out is None:
                oh_total, ow_total = int(h * scale), int(w * scale)
                out = torch.zeros(*part.shape[:-2], oh_total, ow_total, device=part.device)
                weight = torch.zeros(oh_total, ow_total, device=part.device)
            ov = int(overlap * scale)
            wy = _blend_weights(oh, ov, y0 == 0, y0 + th >= h, part.device)
            wx = _blend_weights(ow, ov, x0 == 0, x0 + tw >= w, part.device)
            wgt = wy[:, None] * wx[None, :]
            out[..., oy:oy + oh, ox:ox + ow] += part * wgt
            weight[oy:oy + oh, ox:ox + ow] += wgt
    return out / weight
