"""InfiniteTalk streaming sampler: lengths, windows, motion-frame continuity, CFG call counts.

Uses the real tiny DiT and a small, exactly invertible stand-in VAE (pixel-unshuffle + frame
subsampling) so the streaming logic can be checked exactly and fast.
"""
import math

import pytest
import torch

from wanfp4.wan.config import TINY_INFINITETALK
from wanfp4.wan.model import build_model
from wanfp4.wan.pipeline import GenerationSettings, combine_guidance, generate, plan_windows, round_to_4k1


class SpyVAE(torch.nn.Module):
    """Causal toy VAE: latent frame 0 <- pixel frame 0, latent k <- pixel frame 4k; 8x8 patches -> 16 ch."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(16, 3 * 64) / 14)
        self.encoded = []

    def encode(self, video):
        self.encoded.append(video.detach().clone())
        b, c, f, h, w = video.shape
        sel = video[:, :, ::4]
        p = sel.unfold(3, 8, 8).unfold(4, 8, 8)  # b c f h/8 w/8 8 8
        p = p.permute(0, 2, 3, 4, 1, 5, 6).reshape(b, sel.shape[2], h // 8, w // 8, c * 64)
        return (p @ self.w.T).permute(0, 4, 1, 2, 3)

    def decode(self, z):
        b, _, f, h, w = z.shape
        pix = (z.permute(0, 2, 3, 4, 1) @ torch.linalg.pinv(self.w).T).tanh()
        pix = pix.reshape(b, f, h, w, 3, 8, 8).permute(0, 4, 1, 2, 5, 3, 6).reshape(b, 3, f, h * 8, w * 8)
        frames = torch.cat([pix[:, :, :1], pix[:, :, 1:].repeat_interleave(4, dim=2)], 2)
        return frames


class CountingModel(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.config = model.config
        self.calls = []

    def forward(self, x, t, ctx, **kw):
        self.calls.append((x.detach().clone(), kw["audio"].detach().clone()))
        return self.inner(x, t, ctx, **kw)


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    model = build_model(TINY_INFINITETALK, device="cpu", dtype=torch.float32)
    model.init_weights(seed=0)
    return model


def _run(model, frames, audio_frames, cfg=7.0, steps=2, batch_cfg=True, w=32, h=32, decode_hooks=None):
    torch.manual_seed(1)
    cm = CountingModel(model)
    vae = SpyVAE()
    a = TINY_INFINITETALK.audio
    feats = torch.randn(audio_frames, a.blocks, a.channels)
    s = GenerationSettings(width=w, height=h, frames=frames, fps=16, steps=steps, cfg=cfg, audio_cfg=4.0, shift=7.0,
                           seed=3, batch_cfg=batch_cfg)
    res = generate(cm, vae, torch.randn(1, 7, TINY_INFINITETALK.text_dim), torch.randn(1, 5, TINY_INFINITETALK.text_dim),
                   torch.randn(1, 257, 1280), torch.rand(40, 50, 3), feats, s, decode_hooks=decode_hooks)
    return res, cm, vae


def test_plan_windows_cover_the_length():
    assert plan_windows(81, 81, 9) == [0]
    assert plan_windows(200, 81, 9) == [0, 72, 144]
    for total in (82, 153, 154, 500):
        starts = plan_windows(total, 81, 9)
        assert starts[-1] + 81 >= total > starts[-1] + 9
        assert len(starts) == 1 + math.ceil((total - 81) / 72)
    assert [round_to_4k1(n) for n in (1, 2, 3, 80, 81, 83)] == [1, 1, 5, 81, 81, 85]


def test_short_clip_gives_short_video(parts):
    res, cm, _ = _run(parts, frames=81, audio_frames=32)
    assert res.frames.shape == (32, 32, 32, 3) and res.windows == 1
    assert cm.calls[0][0].shape[2] == 9  # one 33-frame window -> 9 latent frames
    assert 0 <= res.frames.min() and res.frames.max() <= 1


def test_frames_cap_and_three_calls_per_step(parts):
    res, cm, _ = _run(parts, frames=21, audio_frames=100, steps=3)
    assert res.num_frames == 21
    assert res.model_calls == 9 and len(cm.calls) == 3  # batched: 3 branches in one forward per step
    x, audio = cm.calls[0]
    assert x.shape[0] == 3 and audio[2].abs().max() == 0 and audio[0].abs().max() > 0


def test_cfg_one_uses_two_calls_unbatched(parts):
    res, cm, _ = _run(parts, frames=21, audio_frames=100, steps=2, cfg=1.0, batch_cfg=False)
    assert res.model_calls == 4 and len(cm.calls) == 4
    assert cm.calls[1][1].abs().max() == 0  # second branch: null audio


def test_multi_window_length_and_continuity(parts):
    res, cm, vae = _run(parts, frames=201, audio_frames=205, steps=1, w=16, h=16)
    assert res.windows == 3 and res.num_frames == 201 and res.frames.shape[0] == 201
    # encodes: y-condition, reference frame, then the 9 motion frames of windows 1 and 2
    motion_inputs = [v for v in vae.encoded if v.shape[2] == 9]
    assert len(motion_inputs) == 2
    # motion frames of window 2 are the frames 72..80 of the output (last 9 of window 1)
    first_tail = (motion_inputs[0][0].permute(1, 2, 3, 0) + 1) / 2
    assert torch.allclose(first_tail, res.frames[72:81], atol=1e-5)
    # every model call of windows 2 and 3 sees the clean motion latents in its first 3 latent frames
    per_window = len(cm.calls) // 3
    for k, z in ((1, vae.encode(motion_inputs[0])), (2, vae.encode(motion_inputs[1]))):
        for x, _ in cm.calls[k * per_window:(k + 1) * per_window]:
            assert torch.allclose(x[:1, :, :3], z, atol=1e-5)


def test_decode_hooks_wrap_every_decode(parts):
    # the DiT-leaves-VRAM hooks run right around each window's decode, never during sampling
    events = []
    h = parts.register_forward_hook(lambda *a: events.append("call"))
    try:
        res, _, _ = _run(parts, frames=201, audio_frames=205, steps=1, w=16, h=16,
                         decode_hooks=(lambda: events.append("leave"), lambda: events.append("back")))
    finally:
        h.remove()
    per_window = events.count("call") // res.windows      # batched CFG: one forward per step
    assert res.windows == 3 and per_window >= 1
    assert events == (["call"] * per_window + ["leave", "back"]) * res.windows


def test_guidance_formula():
    c, nt, u = torch.tensor(3.0), torch.tensor(2.0), torch.tensor(0.5)
    assert combine_guidance([c, nt, u], 5.0, 4.0) == 0.5 + 5 * 1 + 4 * 1.5
    assert combine_guidance([c, u], 1.0, 2.0) == 0.5 + 2 * 2.5


def test_seed_reproducible(parts):
    a, _, _ = _run(parts, frames=9, audio_frames=20, steps=1)
    b, _, _ = _run(parts, frames=9, audio_frames=20, steps=1)
    assert torch.equal(a.frames, b.frames)


def test_bad_settings(parts):
    with pytest.raises(ValueError, match="multiples of 16"):
        _run(parts, frames=9, audio_frames=20, w=40)
