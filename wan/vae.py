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

from .vae_tiling import run_tiled

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
    """Conv3d that sees only the past in time: 2*pad_t frames on the left (zeros, or the previous
    chunk's last frames passed as `cache`), none on the right. Spatial padding stays symmetric and is
    done by the convolution itself (no padded copy of the activation)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        pt, ph, pw = self.padding
        self.time_pad = 2 * pt
        self.padding = (0, ph, pw)

    def forward(self, x: torch.Tensor, cache: torch.Tensor | None = None) -> torch.Tensor:
        if self.time_pad:
            past = [] if cache is None else [cache.to(x.device, x.dtype)]
            zeros = self.time_pad - (0 if cache is None else cache.shape[2])
            if zeros > 0:
                past.insert(0, x.new_zeros(*x.shape[:2], zeros, *x.shape[3:]))
            x = torch.cat([*past, x], dim=2)
        return super().forward(x)


class RMS_norm(nn.Module):  # noqa: N801 - original class name kept for readability against the reference
    """x / ||x||_channels * sqrt(C) * gamma; gamma is (C,1,1,1) for video, (C,1,1) for 2-D maps."""

    def __init__(self, dim: int, images: bool = True):
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones((dim, 1, 1) if images else (dim, 1, 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1).mul_(self.gamma * self.scale)  # one full-size temporary, not three


class _Upsample(nn.Upsample):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # nearest-exact only copies values, so the native dtype gives the same result as the original's
        # fp32 detour without a fp32 copy of the activation (the largest one at full resolution)
        try:
            return super().forward(x)
        except (RuntimeError, NotImplementedError):  # a backend without this dtype
            return super().forward(x.float()).type_as(x)


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
    if isinstance(layer, nn.SiLU):  # always follows an RMS_norm, whose output is a fresh tensor
        return F.silu(x, inplace=True)
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
        return x.add_(h)


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


# Tiling defaults (real use, 480-720p): 256-px tiles with 64-px overlaps, as diffusers and ComfyUI
# do for this VAE. 480x832 then decodes as 3x4 tiles, 720x1280 as 4x7; encode tiles the same way.
# Measured on an H200, bf16, 81 frames (random weights): decode peak 4.3 -> 1.1 GiB (480x832) and
# 9.9 -> 1.5 GiB (720x1280), encode 3.2 -> 0.5 and 7.4 -> 0.5 GiB; tiled runs take 1.5-2.5x longer.
TILE_PX, OVERLAP_PX = 256, 64
TILE_LATENT, OVERLAP_LATENT = TILE_PX // 8, OVERLAP_PX // 8


class WanVAE(nn.Module):
    """encode(video in [-1, 1]) -> normalized latent mean; decode(normalized latent) -> video in [-1, 1].

    Keys: encoder.*, conv1 (quant conv), conv2 (post-quant conv), decoder.* (original Wan names).
    The latent mean/std are constants (not in the state dict, not buffers), so a model built on the
    meta device and filled by the loader can be moved and cast freely.
    Compute runs in the parameters' dtype and device; results come back in fp32 (as the official wrapper).
    """

    def __init__(self, config: VAEConfig | None = None):
        super().__init__()
        c = self.config = config or VAEConfig()
        if len(c.dim_mult) != len(c.temporal_downsample) + 1:
            raise ValueError(f"VAEConfig: temporal_downsample needs {len(c.dim_mult) - 1} entries "
                             f"(one per downsample), got {c.temporal_downsample}")
        self.encoder = Encoder3d(c, c.z_dim * 2)
        self.conv1 = CausalConv3d(c.z_dim * 2, c.z_dim * 2, 1)
        self.conv2 = CausalConv3d(c.z_dim, c.z_dim, 1)
        self.decoder = Decoder3d(c)
        self.tiling: dict | None = None
        self.time_factor = 2 ** sum(bool(t) for t in c.temporal_downsample)
        self.space_factor = 2 ** (len(c.dim_mult) - 1)

    # ------------------------------------------------------------------ checks
    def _check_video(self, video: torch.Tensor) -> None:
        if video.dim() != 5 or video.shape[1] != 3:
            raise ValueError(f"video: expected [B, 3, F, H, W] in [-1, 1], got shape {tuple(video.shape)}")
        f, h, w = video.shape[2:]
        tf, sf = self.time_factor, self.space_factor
        if f < 1 or (f - 1) % tf:
            fix = tf * max(0, round((f - 1) / tf)) + 1
            raise ValueError(f"video: {f} frames (shape {tuple(video.shape)}); the Wan VAE needs {tf}k+1 frames "
                             f"(1, 5, 9, ..., 81): trim or pad to {fix}")
        if h % sf or w % sf:
            raise ValueError(f"video: {w}x{h} pixels (shape {tuple(video.shape)}); width and height must be "
                             f"multiples of {sf}: resize or crop to {max(sf, w // sf * sf)}x{max(sf, h // sf * sf)}")

    def _check_latent(self, z: torch.Tensor) -> None:
        if z.dim() != 5 or z.shape[1] != self.config.z_dim or min(z.shape[2:], default=0) < 1:
            raise ValueError(f"latent: expected [B, {self.config.z_dim}, T, h, w] (T, h, w >= 1), "
                             f"got shape {tuple(z.shape)}")

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel latent mean/std (§2.3) as fp32 [1, C, 1, 1, 1] on `like`'s device."""
        z = self.config.z_dim
        if z > len(LATENT_MEAN):
            raise ValueError(f"VAEConfig: z_dim {z} has no latent statistics (only the 16-channel Wan VAE does)")
        shape = (1, z, 1, 1, 1)
        mean = torch.tensor(LATENT_MEAN[:z], device=like.device).view(shape)
        std = torch.tensor(LATENT_STD[:z], device=like.device).view(shape)
        return mean, std

    # ------------------------------------------------------------------ public API
    def set_tiling(self, enabled: bool = True, tile_px: int = TILE_PX, overlap_px: int = OVERLAP_PX,
                   tile_latent: int | None = None, overlap_latent: int | None = None) -> None:
        """Default tiling for encode/decode calls that do not pass `tiled` (e.g. from the pipeline).

        Encode uses `tile_px`/`overlap_px` pixels; decode uses `tile_latent`/`overlap_latent` latent
        pixels (default: the pixel values / 8). `enabled=False` switches it off.
        """
        if not enabled:
            self.tiling = None
            return
        self.tiling = {"tile_px": tile_px, "overlap_px": overlap_px,
                       "tile_latent": tile_latent if tile_latent is not None else tile_px // self.space_factor,
                       "overlap_latent": overlap_latent if overlap_latent is not None else overlap_px // self.space_factor}

    def _tiling(self, tiled: bool | None) -> dict | None:
        if tiled is None:
            return self.tiling
        if not tiled:
            return None
        return self.tiling or {"tile_px": TILE_PX, "overlap_px": OVERLAP_PX,
                               "tile_latent": TILE_LATENT, "overlap_latent": OVERLAP_LATENT}

    @torch.no_grad()
    def encode(self, video: torch.Tensor, tiled: bool | None = None, tile_px: int | None = None,
               overlap_px: int | None = None) -> torch.Tensor:
        """[B, 3, F, H, W] in [-1, 1] (F = 4k+1, H, W multiples of 8) -> normalized latent mean
        [B, 16, (F-1)/4+1, H/8, W/8] in fp32. `tiled=None` follows set_tiling()."""
        self._check_video(video)
        p = self.conv1.weight
        video = video.to(p.device, p.dtype)
        t = self._tiling(tiled)
        if t is None:
            return self._encode(video)
        sf = self.space_factor
        return run_tiled(self._encode, video, tile_px or t["tile_px"],
                         overlap_px if overlap_px is not None else t["overlap_px"], 1 / sf, align=sf)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, tiled: bool | None = None, tile_latent: int | None = None,
               overlap_latent: int | None = None) -> torch.Tensor:
        """Normalized latent [B, 16, T, h, w] -> video [B, 3, 4(T-1)+1, 8h, 8w] in fp32, clamped to [-1, 1].
        `tiled=None` follows set_tiling()."""
        self._check_latent(z)
        t = self._tiling(tiled)
        if t is None:
            out = self._decode(z)
        else:
            out = run_tiled(self._decode, z, tile_latent or t["tile_latent"],
                            overlap_latent if overlap_latent is not None else t["overlap_latent"], self.space_factor)
        return out.clamp_(-1, 1)

    # ------------------------------------------------------------------ chunked passes
    def _encode(self, video: torch.Tensor) -> torch.Tensor:
        """Chunks of 1, 4, 4, ... frames through the cached encoder; each yields one latent frame."""
        b, _, f, h, w = video.shape
        tf, sf, zc = self.time_factor, self.space_factor, self.config.z_dim
        cache = _Cache(_count_convs(self.encoder))
        mean, std = self._stats(video)
        out = torch.empty(b, zc, (f - 1) // tf + 1, h // sf, w // sf, device=video.device)
        done = 0
        for start in range(0, f, tf):
            chunk = video[:, :, :1] if start == 0 else video[:, :, start - tf + 1: start + 1]
            cache.idx = 0
            feats = self.encoder(chunk, cache)
            mu = self.conv1(feats)[:, :zc]  # 1x1x1 quant conv; logvar (the other half) is unused
            out[:, :, done: done + mu.shape[2]] = (mu.float() - mean) / std
            done += mu.shape[2]
            del feats, mu
        return out

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        """One latent frame at a time through the cached decoder (the first gives 1 frame, later ones 4)."""
        b, _, t, h, w = z.shape
        p = self.conv2.weight
        mean, std = self._stats(p)
        x = self.conv2((z.to(p.device).float() * std + mean).to(p.dtype))
        cache = _Cache(_count_convs(self.decoder))
        out = torch.empty(b, 3, (t - 1) * self.time_factor + 1, h * self.space_factor, w * self.space_factor,
                          device=p.device)
        done = 0
        for i in range(t):
            cache.idx = 0
            frames = self.decoder(x[:, :, i: i + 1], cache)
            out[:, :, done: done + frames.shape[2]] = frames
            done += frames.shape[2]
            del frames
        return out
