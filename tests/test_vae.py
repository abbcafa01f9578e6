"""Wan VAE: parity with diffusers' AutoencoderKLWan, causality, chunked == full-sequence (an
independent non-cached forward written here), frame-by-frame decode, tiling, real-config size."""
import time

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

from wanfp4.wan.vae import AttentionBlock, CausalConv3d, Resample, ResidualBlock, VAEConfig, WanVAE


def randomized(vae, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in vae.named_parameters():
            r = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.1 * r if n.endswith("gamma") else r * 0.5 / max(1, p[0].numel()) ** 0.5)
    return vae.eval()


@pytest.fixture(scope="module")
def pair():
    ours = randomized(WanVAE(VAEConfig(dim=8)))
    dv = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                          temperal_downsample=[False, True, True]).eval()
    missing, unexpected = dv.load_state_dict(convert_wan_vae_to_diffusers(ours.state_dict()), strict=True)
    assert not missing and not unexpected
    mean = torch.tensor(dv.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(dv.config.latents_std).view(1, -1, 1, 1, 1)
    return ours, dv, mean, std


@pytest.mark.parametrize("frames", [9, 13])
def test_parity_with_diffusers(pair, frames):
    ours, dv, mean, std = pair
    torch.manual_seed(frames)
    x = torch.rand(1, 3, frames, 32, 48) * 2 - 1
    z = ours.encode(x)
    with torch.no_grad():
        z_ref = (dv.encode(x).latent_dist.mode() - mean) / std
        assert z.shape == (1, 16, (frames - 1) // 4 + 1, 4, 6)
        assert (z - z_ref).abs().max() <= 1e-5
        v = ours.decode(z)
        v_ref = dv.decode(z * std + mean).sample
    assert v.shape == x.shape and (v - v_ref).abs().max() <= 1e-5
    assert v.abs().max() <= 1.0


def test_causality(pair):
    ours = pair[0]
    x = torch.rand(1, 3, 9, 16, 16) * 2 - 1
    y = x.clone()
    y[:, :, 1:] = torch.rand_like(y[:, :, 1:])
    za, zb = ours.encode(x), ours.encode(y)
    assert torch.equal(za[:, :, 0], zb[:, :, 0]) and not torch.equal(za[:, :, 1:], zb[:, :, 1:])
    # decoding: latent frame 0 alone fixes pixel frame 0
    za2 = za.clone()
    za2[:, :, 1:] = torch.randn_like(za2[:, :, 1:])
    assert torch.equal(ours.decode(za)[:, :, 0], ours.decode(za2)[:, :, 0])


# ---- an independent full-sequence (non-cached) forward of the same modules ------------------------
def _full(layer, x):
    if isinstance(layer, CausalConv3d):
        return layer(x)  # causal padding over the whole clip
    if isinstance(layer, ResidualBlock):
        h = layer.shortcut(x)
        for sub in layer.residual:
            x = _full(sub, x)
        return x + h
    if isinstance(layer, AttentionBlock):
        return layer(x)
    if isinstance(layer, Resample):
        def per_frame(v):
            b, c, t, hh, ww = v.shape
            out = layer.resample(v.transpose(1, 2).reshape(b * t, c, hh, ww))
            return out.reshape(b, t, *out.shape[1:]).transpose(1, 2)
        if layer.mode == "upsample3d":  # frame 0 once; later frames doubled by a causal temporal conv
            rest = layer.time_conv(x[:, :, 1:])
            b, c2, t, hh, ww = rest.shape
            rest = rest.reshape(b, 2, c2 // 2, t, hh, ww)
            rest = torch.stack((rest[:, 0], rest[:, 1]), 3).reshape(b, c2 // 2, 2 * t, hh, ww)
            x = torch.cat([x[:, :, :1], rest], 2)
        x = per_frame(x)
        if layer.mode == "downsample3d":  # frame 0 kept; stride-2 temporal conv over the whole clip
            x = torch.cat([x[:, :, :1], layer.time_conv(x)], 2)
        return x
    return layer(x)


def full_encode(vae, x):
    e = vae.encoder
    h = _full(e.conv1, x)
    for seq in (e.downsamples, e.middle, e.head):
        for layer in seq:
            h = _full(layer, h)
    mu = vae.conv1(h).chunk(2, dim=1)[0]
    mean, std = vae._stats(mu)
    return (mu - mean) / std


def full_decode(vae, z):
    mean, std = vae._stats(z)
    d = vae.decoder
    h = _full(d.conv1, vae.conv2(z * std + mean))
    for seq in (d.middle, d.upsamples, d.head):
        for layer in seq:
            h = _full(layer, h)
    return h.clamp(-1, 1)


def test_chunked_equals_full_sequence(pair):
    ours = pair[0]
    x = torch.rand(1, 3, 13, 16, 24) * 2 - 1
    with torch.no_grad():
        z = ours.encode(x)
        assert (z - full_encode(ours, x)).abs().max() < 1e-5
        assert (ours.decode(z) - full_decode(ours, z)).abs().max() < 1e-5


def test_decode_frame_by_frame_equals_all_at_once(pair):
    ours = pair[0]
    z = torch.randn(1, 16, 4, 4, 4)
    whole = ours.decode(z)
    # the first latent frame decodes to exactly one frame, each further one to four
    assert whole.shape[2] == 13
    assert torch.allclose(ours.decode(z[:, :, :1]), whole[:, :, :1], atol=1e-6)
    assert torch.allclose(ours.decode(z[:, :, :2]), whole[:, :, :5], atol=1e-6)


def test_tiled_matches_untiled(pair):
    ours = pair[0]
    x = torch.rand(1, 3, 5, 128, 160) * 2 - 1
    z = ours.encode(x)
    v = ours.decode(z)
    # decode: latent 16x20 in 12-latent tiles, 6 overlap -> 2 x 3 tiles; encode: 96-px tiles, 48 overlap
    vt = ours.decode(z, tiled=True, tile_latent=12, overlap_latent=6)
    zt = ours.encode(x, tiled=True, tile_px=96, overlap_px=48)
    assert vt.shape == v.shape and zt.shape == z.shape
    assert 0 < (vt - v).abs().max() < 1e-2                        # video output, in [-1, 1] (measured 6e-3)
    assert 0 < (zt - z).abs().max() / z.abs().max() < 3e-2         # latents, relative (measured 1.5e-2)
    # set_tiling() is what calls without `tiled` (the pipeline) follow
    ours.set_tiling(True, tile_px=96, overlap_px=48)
    try:
        assert torch.equal(ours.decode(z), vt) and torch.equal(ours.encode(x), zt)
        assert torch.equal(ours.decode(z, tiled=False), v)
    finally:
        ours.set_tiling(False)
    assert torch.equal(ours.decode(z), v)


@pytest.mark.parametrize("size, tile, overlap", [(40, 16, 8), (37, 12, 5), (64, 16, 12), (10, 16, 4)])
def test_tiles_reassemble_the_input(size, tile, overlap):
    from wanfp4.wan.vae_tiling import run_tiled, tile_starts

    starts = tile_starts(size, min(tile, size), overlap)
    assert starts[0] == 0 and starts[-1] + min(tile, size) == size and starts == sorted(set(starts))
    x = torch.randn(1, 2, 3, size, size + 5)
    calls = []

    def ident(t):
        calls.append(t.shape[-2:])
        return t * 1.0

    assert torch.allclose(run_tiled(ident, x, tile, overlap, 1.0), x, atol=1e-6)
    assert len(calls) == len(starts) * len(tile_starts(size + 5, min(tile, size + 5), overlap))
    up = lambda t: F.interpolate(t.flatten(0, 1), scale_factor=8, mode="nearest").unflatten(0, t.shape[:2])
    assert torch.allclose(run_tiled(up, x, tile, overlap, 8.0), up(x), atol=1e-6)


def test_overlaps_cross_fade_linearly():
    from wanfp4.wan.vae_tiling import run_tiled

    calls = []

    def tile_id(t):  # tile k returns the constant k
        calls.append(len(calls))
        return torch.full_like(t, float(len(calls) - 1))

    out = run_tiled(tile_id, torch.zeros(1, 1, 1, 4, 24), 16, 8, 1.0)  # tiles at x = 0 and 8
    assert len(calls) == 2
    row = out[0, 0, 0, 0]
    assert torch.equal(row[:8], torch.zeros(8)) and torch.equal(row[16:], torch.ones(8))
    assert torch.allclose(row[8:16], (torch.arange(8) + 0.5) / 8)


def test_tiled_encode_offsets_stay_on_the_latent_grid():
    from wanfp4.wan.vae_tiling import run_tiled

    x = torch.randn(1, 1, 1, 72, 104)
    pool = lambda t: F.avg_pool2d(t.flatten(0, 1), 8).unflatten(0, t.shape[:2])
    seen = []
    out = run_tiled(lambda t: (seen.append(t.shape[-2:]), pool(t))[1], x, 36, 20, 1 / 8, align=8)
    assert all(h % 8 == 0 and w % 8 == 0 for h, w in seen) and len(seen) > 4
    assert torch.allclose(out, pool(x), atol=1e-6)


def test_real_config_on_meta_is_fast_and_exact():
    t0 = time.perf_counter()
    with torch.device("meta"):
        vae = WanVAE()
    sd = vae.state_dict()
    assert time.perf_counter() - t0 < 5
    assert len(sd) == 194 and sum(p.numel() for p in vae.parameters()) == 126_892_531
    assert tuple(sd["encoder.conv1.weight"].shape) == (96, 3, 3, 3, 3)
    assert tuple(sd["decoder.upsamples.4.shortcut.weight"].shape) == (384, 192, 1, 1, 1)
    assert tuple(sd["decoder.upsamples.3.time_conv.weight"].shape) == (768, 384, 3, 1, 1)
    assert tuple(sd["encoder.middle.1.to_qkv.weight"].shape) == (1152, 384, 1, 1)
    assert tuple(sd["conv1.weight"].shape) == (32, 32, 1, 1, 1) and tuple(sd["conv2.weight"].shape) == (16, 16, 1, 1, 1)
    assert not list(vae.buffers())  # latent mean/std are constants: nothing left on meta after loading


def test_meta_built_and_assigned_model_moves_and_runs(pair):
    """What the loader does: build on meta, assign tensors; the model must then cast/move like any module."""
    ours = pair[0]
    with torch.device("meta"):
        vae = WanVAE(VAEConfig(dim=8))
    vae.load_state_dict(ours.state_dict(), assign=True)
    vae = vae.to(torch.float64).to("cpu").eval()
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    z = vae.encode(x)
    assert z.dtype == torch.float32 and (z - ours.encode(x)).abs().max() < 1e-5


@pytest.mark.parametrize("shape, msg", [((1, 3, 8, 16, 16), "8 frames.*4k\\+1.*pad to 9"),
                                        ((1, 3, 9, 12, 16), "16x12 pixels.*multiples of 8.*16x8"),
                                        ((1, 4, 9, 16, 16), "\\[B, 3, F, H, W\\].*\\(1, 4, 9, 16, 16\\)"),
                                        ((3, 9, 16, 16), "\\[B, 3, F, H, W\\]")])
def test_bad_video_shapes(pair, shape, msg):
    with pytest.raises(ValueError, match=msg):
        pair[0].encode(torch.zeros(shape))


@pytest.mark.parametrize("shape", [(1, 4, 2, 4, 4), (16, 2, 4, 4), (1, 16, 0, 4, 4)])
def test_bad_latent_shapes(pair, shape):
    with pytest.raises(ValueError, match=r"latent: expected \[B, 16, T, h, w\]"):
        pair[0].decode(torch.zeros(shape))


def test_bf16_close_to_fp32(pair):
    ours = pair[0]
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    z = ours.encode(x)
    half = WanVAE(VAEConfig(dim=8))
    half.load_state_dict(ours.state_dict())
    half = half.to(torch.bfloat16).eval()
    zh = half.encode(x)
    assert (zh - z).abs().max() / z.abs().max() < 5e-2


def test_auto_tiling_estimate_matches_the_h200_measurements():
    from wanfp4.wan.vae_tiling import decode_peak_bytes, should_tile

    gib = 2**30
    assert abs(decode_peak_bytes(480, 832, 81) / gib - 4.27) < 0.2   # measured 4.27 GiB (bf16)
    assert abs(decode_peak_bytes(720, 1280, 81) / gib - 9.85) < 0.4  # measured 9.85 GiB (bf16)
    assert decode_peak_bytes(480, 832, 81, itemsize=4) > decode_peak_bytes(480, 832, 81)
    assert should_tile(720, 1280, 81, free_bytes=8 * gib) and not should_tile(480, 832, 81, free_bytes=24 * gib)
