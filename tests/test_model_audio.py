"""InfiniteTalk audio path: zero-audio equivalence, AudioProj window indexing, frame locality,
L-RoPE (wan_infinitetalk.md §7.2). No external reference exists, so the expectations are the
hand-derived rules of §3.3/§3.4 and brute-force recomputations."""
import math

import pytest
import torch

from wanfp4.attention import register_mode
from wanfp4.attention import dispatch
from wanfp4.wan.audio_modules import (AudioCrossAttention, AudioProjModel, audio_key_positions, select_window_entries,
                                      speaker_positions, speaker_reference_map)
from wanfp4.wan.audio_windows import gather_audio_window
from wanfp4.wan.config import TINY_I2V, TINY_INFINITETALK
from wanfp4.wan.model import WanModel, build_model
from wanfp4.wan.rope import apply_rope_1d

A = TINY_INFINITETALK.audio


def model_inputs(b=1, f=3, h=8, w=12, speakers=1):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(b, 16, f, h, w, generator=g)
    y = torch.randn(b, 20, f, h, w, generator=g)
    ctx = torch.randn(b, 12, 32, generator=g)
    clip = torch.randn(b, 257, 1280, generator=g)
    audio = torch.randn(b, speakers, 4 * (f - 1) + 1, 5, A.blocks, A.channels, generator=g)
    return x, y, ctx, clip, torch.full((b,), 700.0), audio


def test_zero_audio_projection_reproduces_base_model_exactly():
    full = build_model(TINY_INFINITETALK, "cpu", torch.float32, seed=11)
    with torch.no_grad():
        for blk in full.blocks:
            blk.audio_cross_attn.proj.weight.zero_()
            blk.audio_cross_attn.proj.bias.zero_()
    base = WanModel(TINY_I2V)
    base_sd = {k: v for k, v in full.state_dict().items() if not k.startswith("audio_proj.") and ".audio_cross_attn." not in k and ".norm_x." not in k}
    base.load_state_dict(base_sd, strict=True)
    x, y, ctx, clip, t, audio = model_inputs()
    with torch.no_grad():
        out = full(x, t, ctx, clip_fea=clip, y=y, audio=audio)
        ref = base(x, t, ctx, clip_fea=clip, y=y)
        plain = full(x, t, ctx, clip_fea=clip, y=y, audio=None)
    assert (out - ref).abs().max().item() == 0.0
    assert torch.equal(plain, ref)


def test_audio_changes_output_and_scale_zero_disables_it():
    m = build_model(TINY_INFINITETALK, "cpu", torch.float32, seed=12)
    x, y, ctx, clip, t, audio = model_inputs()
    with torch.no_grad():
        with_audio = m(x, t, ctx, clip_fea=clip, y=y, audio=audio)
        null_audio = m(x, t, ctx, clip_fea=clip, y=y, audio=torch.zeros_like(audio))
        no_audio = m(x, t, ctx, clip_fea=clip, y=y)
        scaled0 = m(x, t, ctx, clip_fea=clip, y=y, audio=audio, audio_scale=0.0)
    assert (with_audio - null_audio).abs().max() > 1e-3  # zeros still run through the modules
    assert (null_audio - no_audio).abs().max() > 1e-3    # ... and are not the same as skipping them
    assert torch.equal(scaled0, no_audio)


def ramp_window(frames=9, start=0, n=1):
    """Per-video-frame windows gathered from features whose value is the audio-frame index."""
    feats = torch.arange(40.0)[:, None, None].expand(40, A.blocks, A.channels).clone()
    feats += torch.arange(A.blocks)[None, :, None] * 1000.0  # tag the layer as well
    win = gather_audio_window(feats, start, frames)  # [frames, 5, blocks, C]
    return win[None].expand(n, -1, -1, -1, -1)


def test_window_entry_selection_ramp():
    first, latter = select_window_entries(ramp_window(frames=13, start=6))
    assert first.shape == (1, 1, 5, A.blocks, A.channels)
    assert latter.shape == (1, 3, 8, A.blocks, A.channels)
    assert first[0, 0, :, 0, 0].tolist() == [4, 5, 6, 7, 8]   # video frame 0 = audio frame 6, offsets -2..2
    for k in range(1, 4):
        v0 = 6 + 4 * k  # last video frame of latent group k
        # frame 4k-3: -2,-1,0 | 4k-2: 0 | 4k-1: 0 | 4k: 0,+1,+2  -> 8 consecutive audio frames
        assert latter[0, k - 1, :, 0, 0].tolist() == list(range(v0 - 5, v0 + 3))
        assert latter[0, k - 1, :, 3, 0].tolist() == [3000 + i for i in range(v0 - 5, v0 + 3)]


def test_window_selection_clamps_at_clip_start():
    first, latter = select_window_entries(ramp_window(frames=5, start=0))
    assert first[0, 0, :, 0, 0].tolist() == [0, 0, 0, 1, 2]
    assert latter[0, 0, :, 0, 0].tolist() == [0, 0, 1, 2, 3, 4, 5, 6]  # frames 1..4: audio -1 clamps to 0


def test_audio_proj_feeds_the_selected_entries_and_shapes():
    proj = AudioProjModel(blocks=A.blocks, channels=A.channels, intermediate_dim=A.intermediate_dim,
                          output_dim=A.output_dim, context_tokens=A.context_tokens)
    per_entry = A.blocks * A.channels
    with torch.no_grad():  # proj1 / proj1_vf output unit i = entry i, layer 0, channel 0 (a selector)
        for lin, n in ((proj.proj1, 5), (proj.proj1_vf, 8)):
            lin.weight.zero_(), lin.bias.zero_()
            for i in range(n):
                lin.weight[i, i * per_entry] = 1.0
    seen = {}
    proj.proj1.register_forward_hook(lambda m, i, o: seen.__setitem__("first", o))
    proj.proj1_vf.register_forward_hook(lambda m, i, o: seen.__setitem__("latter", o))
    out = proj(ramp_window(frames=9, start=10, n=2), torch.float32)
    assert out.shape == (2, 3, A.context_tokens, A.output_dim)
    assert seen["first"][0, 0, :5].tolist() == [8, 9, 10, 11, 12]
    assert seen["latter"][1, 0, :8].tolist() == list(range(9, 17))
    assert seen["latter"][1, 1, :8].tolist() == list(range(13, 21))
    # norm_output_audio: LayerNorm (eps 1e-5) over the token width
    ref = torch.nn.functional.layer_norm(proj.proj3(torch.relu(proj.proj2(torch.relu(torch.cat(
        [seen["first"], seen["latter"]], 1))))).unflatten(-1, (A.context_tokens, A.output_dim)), (A.output_dim,),
        proj.norm.weight, proj.norm.bias, 1e-5)
    assert torch.allclose(out, ref, atol=1e-6)


def test_audio_proj_is_frame_local():
    proj = AudioProjModel(blocks=A.blocks, channels=A.channels, intermediate_dim=A.intermediate_dim,
                          output_dim=A.output_dim, context_tokens=A.context_tokens)
    audio = torch.randn(1, 13, 5, A.blocks, A.channels)
    base = proj(audio, torch.float32)
    bumped = audio.clone()
    bumped[:, 6] += 1.0  # video frame 6 belongs to latent frame 2 (frames 5..8)
    changed = (proj(bumped, torch.float32) - base).abs().amax(dim=(0, 2, 3)) > 0
    assert changed.tolist() == [False, False, True, False]
    unused = audio.clone()
    unused[:, 5, 3:] += 1.0  # first frame of a group: offsets +1, +2 are not used
    unused[:, 8, :2] += 1.0  # last frame of a group: offsets -2, -1 are not used
    assert torch.equal(proj(unused, torch.float32), base)


def test_audio_cross_attention_is_frame_local():
    attn = AudioCrossAttention(dim=32, audio_dim=16, num_heads=2)
    grid, b, s = (4, 2, 3), 2, 6
    x = torch.randn(b, 4 * s, 32)
    audio = torch.randn(b * 4, 8, 16)
    base = attn(x, audio, grid)
    bumped = audio.clone()
    bumped[1 * 4 + 2] += 1.0  # batch item 1, latent frame 2
    diff = (attn(x, bumped, grid) - base).abs().amax(-1).view(b, 4, s).amax(-1) > 0
    assert diff.tolist() == [[False] * 4, [False, False, True, False]]


def test_audio_cross_attention_matches_manual_math():
    attn = AudioCrossAttention(dim=32, audio_dim=16, num_heads=2)
    x, audio = torch.randn(1, 2 * 5, 32), torch.randn(2, 8, 16)
    out = attn(x, audio, (2, 1, 5))
    for f in range(2):
        q = attn.q_linear(x[0, f * 5:(f + 1) * 5]).view(5, 2, 16).transpose(0, 1)
        kv = attn.kv_linear(audio[f])
        k, v = kv[:, :32].view(8, 2, 16).transpose(0, 1), kv[:, 32:].view(8, 2, 16).transpose(0, 1)
        o = torch.softmax(q @ k.transpose(1, 2) / 4.0, -1) @ v
        ref = attn.proj(o.transpose(0, 1).reshape(5, 32))
        assert torch.allclose(out[0, f * 5:(f + 1) * 5], ref, atol=1e-5)


# ------------------------------------------------------------------ L-RoPE (two speakers)
def test_rope_1d_hand_computed():
    x = torch.tensor([1.0, 0.0, 0.0, 1.0]).view(1, 1, 1, 4)
    p = 3.0
    out = apply_rope_1d(x, torch.tensor([p]))[0, 0, 0]
    w1 = p * 10000 ** (-2 / 4)
    assert torch.allclose(out, torch.tensor([math.cos(p), math.sin(p), -math.sin(w1), math.cos(w1)]), atol=1e-6)
    # head_dim 128: position p rotates pair 0 by exactly p radians, pair j by p * 10000^(-2j/128)
    x = torch.randn(2, 5, 3, 128, dtype=torch.float64)
    pos = torch.tensor([0.0, 2.0, 12.0, 21.5, 24.0])
    ang = pos[:, None] * 10000 ** (-torch.arange(64, dtype=torch.float64) * 2 / 128)
    ref = torch.view_as_real(torch.view_as_complex(x.reshape(2, 5, 3, 64, 2)) * torch.polar(torch.ones_like(ang), ang)[None, :, None])
    assert torch.allclose(apply_rope_1d(x, pos), ref.reshape(2, 5, 3, 128), atol=1e-5)


def test_audio_key_positions():
    pos = audio_key_positions(64)
    assert pos[:32].eq(2).all() and pos[32:].eq(22).all()


def test_speaker_position_assignment():
    ref_map = torch.tensor([[[0.9, 0.1, 0.5, 0.2, 0.0],    # speaker 1 scores
                             [0.0, 0.8, 0.1, 0.4, 0.1],    # speaker 2 scores
                             [0.1, 0.1, 0.6, 0.3, 0.5]]])  # background scores
    pos = speaker_positions(ref_map)[0]
    assert pos[0].item() == pytest.approx(4.0, abs=1e-5)        # speaker 1 max -> top of [0, 4]
    assert pos[1].item() == pytest.approx(24.0, abs=1e-5)       # speaker 2 max -> top of [20, 24]
    assert pos[2].item() == 12.0 and pos[4].item() == 12.0      # background wins -> 12
    assert pos[3].item() == pytest.approx(20 + 4 * 0.4 / 0.8, abs=1e-5)  # speaker 2, rescaled


def test_speaker_reference_map_brute_force():
    b, heads, d, grid = 2, 2, 8, (2, 2, 3)
    n, ref = 12, 6
    q, k = torch.randn(b, n, heads, d), torch.randn(b, n, heads, d)
    masks = (torch.rand(3, ref) > 0.4).float()
    out = speaker_reference_map(q, k, masks, grid)
    attn = torch.softmax(torch.einsum("blhd,brhd->bhlr", q, k[:, :ref]) / math.sqrt(d), -1)
    want = torch.stack([(attn * m).sum(-1) / (m.sum() + 1e-6) for m in masks], 1).mean(2)  # [B, 3, L]
    assert out.shape == (b, 3, n)
    assert torch.allclose(out, want, atol=1e-6)


def test_two_speakers_run_and_masks_route_the_audio():
    m = build_model(TINY_INFINITETALK, "cpu", torch.float32, seed=13)
    x, y, ctx, clip, t, audio = model_inputs(speakers=2)
    left = torch.zeros(3, 4, 6)
    left[0, :, :3], left[1, :, 3:], left[2] = 1, 1, 1
    with torch.no_grad():
        out = m(x, t, ctx, clip_fea=clip, y=y, audio=audio, ref_target_masks=left)
        flat = m(x, t, ctx, clip_fea=clip, y=y, audio=audio, ref_target_masks=left.flatten(1))
        swapped = m(x, t, ctx, clip_fea=clip, y=y, audio=audio, ref_target_masks=left[[1, 0, 2]])
        single = m(x, t, ctx, clip_fea=clip, y=y, audio=audio[:, :1])
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert torch.equal(out, flat)
    assert (out - swapped).abs().max() > 1e-4
    assert (out - single).abs().max() > 1e-4
    with pytest.raises(ValueError, match="ref_target_masks"):
        m(x, t, ctx, clip_fea=clip, y=y, audio=audio)


def test_batch_items_are_independent():
    """Batched CFG must equal separate forwards (per-item audio, text, and speaker maps)."""
    m = build_model(TINY_INFINITETALK, "cpu", torch.float32, seed=14)
    x, y, ctx, clip, t, audio = model_inputs(b=2, speakers=2)
    masks = (torch.rand(3, 24) > 0.5).float()
    with torch.no_grad():
        both = m(x, t, ctx, clip_fea=clip, y=y, audio=audio, ref_target_masks=masks)
        one = m(x[1:], t[1:], ctx[1:], clip_fea=clip[1:], y=y[1:], audio=audio[1:], ref_target_masks=masks)
    assert torch.allclose(both[1:], one, atol=1e-5)


def test_attention_modes_are_used_per_role():
    calls = {}

    def counting(name):
        def fn(q, k, v):
            calls[name] = calls.get(name, 0) + 1
            return dispatch.sdpa(q, k, v)
        return fn

    for role in ("self", "cross", "audio"):
        register_mode(f"_test_{role}", counting(role))
    try:
        m = build_model(TINY_INFINITETALK, "cpu", torch.float32, seed=15)
        assert m.set_attention_modes(self_attn="_test_self", cross_attn="_test_cross", audio_attn="_test_audio") == {
            "self": "_test_self", "cross": "_test_cross", "audio": "_test_audio"}
        x, y, ctx, clip, t, audio = model_inputs()
        with torch.no_grad():
            m(x, t, ctx, clip_fea=clip, y=y, audio=audio)
        layers = TINY_INFINITETALK.num_layers
        assert calls == {"self": layers, "cross": 2 * layers, "audio": layers}
    finally:
        for role in ("self", "cross", "audio"):
            dispatch._MODES.pop(f"_test_{role}", None)
