"""WanModel vs diffusers' WanTransformer3DModel (the independent reference), both key directions,
plus bf16-vs-fp32 numerics (wan_infinitetalk.md §7.1)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

from wanfp4.wan.config import TINY_I2V, TINY_INFINITETALK, WanConfig
from wanfp4.wan.model import WanModel, apply_dtype_policy, build_model, expected_keys

# diffusers' own transformer unit-test shapes (head_dim 12 -> RoPE split 4/4/4), as a T2V model.
TINY_T2V_DIFFUSERS = WanConfig(model_type="t2v", dim=24, ffn_dim=32, num_heads=2, num_layers=2, in_dim=4, out_dim=4,
                               text_dim=16, rope_max_len=32)


def diffusers_model(cfg: WanConfig) -> WanTransformer3DModel:
    kw = dict(image_dim=cfg.image_dim, added_kv_proj_dim=cfg.dim) if cfg.is_i2v else {}
    return WanTransformer3DModel(
        patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
        in_channels=cfg.in_dim, out_channels=cfg.out_dim, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=cfg.cross_attn_norm,
        qk_norm="rms_norm_across_heads", eps=cfg.eps, rope_max_seq_len=cfg.rope_max_len, **kw,
    ).eval()


def inputs(cfg: WanConfig, b=2, f=3, h=8, w=12, text=20):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, cfg.out_dim, f, h, w, generator=g)
    y = torch.randn(b, cfg.in_dim - cfg.out_dim, f, h, w, generator=g) if cfg.in_dim > cfg.out_dim else None
    ctx = torch.randn(b, text, cfg.text_dim, generator=g)
    clip = torch.randn(b, cfg.image_tokens, cfg.image_dim, generator=g) if cfg.is_i2v else None
    t = torch.tensor([637.5, 21.0])[:b]
    return x, y, ctx, clip, t


def run_diffusers(dm, cfg, x, y, ctx, clip, t):
    hidden = torch.cat([x, y], 1) if y is not None else x
    ctx512 = F.pad(ctx, (0, 0, 0, cfg.text_len - ctx.shape[1]))  # ours pads internally; diffusers expects 512
    with torch.no_grad():
        return dm(hidden, t, ctx512, encoder_hidden_states_image=clip, return_dict=False)[0]


def rel_max_diff(a, ref):
    return ((a - ref).abs().max() / ref.abs().max()).item()


def inverse_key_map(cfg) -> dict[str, str]:
    """diffusers key -> original key, by converting the identity map {k: k}."""
    return convert_wan_transformer_to_diffusers({k: k for k in expected_keys(cfg)})


@pytest.mark.parametrize("cfg", [TINY_I2V, TINY_T2V_DIFFUSERS], ids=["i2v", "t2v"])
def test_ours_to_diffusers_matches(cfg):
    ours = build_model(cfg, "cpu", torch.float32, seed=3).eval()
    dm = diffusers_model(cfg)
    dm.load_state_dict(convert_wan_transformer_to_diffusers(dict(ours.state_dict())), strict=True)
    x, y, ctx, clip, t = inputs(cfg)
    with torch.no_grad():
        out = ours(x, t, ctx, clip_fea=clip, y=y)
    ref = run_diffusers(dm, cfg, x, y, ctx, clip, t)
    assert out.dtype == torch.float32 and out.shape == ref.shape == x.shape
    assert ref.std() > 0.1  # a degenerate (e.g. zero-head) model would make the comparison vacuous
    assert rel_max_diff(out, ref) < 1e-5


@pytest.mark.parametrize("cfg", [TINY_I2V, TINY_T2V_DIFFUSERS], ids=["i2v", "t2v"])
def test_diffusers_to_ours_matches(cfg):
    dm = diffusers_model(cfg)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # randomize every tensor: norms ~ 1 + 0.1 N, vectors ~ 0.1 N, matrices ~ N(0, 1/fan_in)
        for name, p in dm.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if ".norm" in name or name.startswith("norm"):
                p.copy_(1.0 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
            else:
                p.copy_(noise * (0.1 if p.dim() < 2 else p[0].numel() ** -0.5))
    inv = inverse_key_map(cfg)
    sd = {inv[k]: v for k, v in dm.state_dict().items()}
    with torch.device("meta"):
        ours = WanModel(cfg)
    ours.load_state_dict(sd, strict=True, assign=True)
    x, y, ctx, clip, t = inputs(cfg)
    with torch.no_grad():
        out = ours(x, t, ctx, clip_fea=clip, y=y)
    ref = run_diffusers(dm, cfg, x, y, ctx, clip, t)
    assert ref.std() > 0.1
    assert rel_max_diff(out, ref) < 1e-5


def test_text_padding_is_internal():
    """Passing 20 tokens or the same 20 zero-padded to 512 gives the same result (upstream pads with zeros)."""
    ours = build_model(TINY_I2V, "cpu", torch.float32, seed=3)
    x, y, ctx, clip, t = inputs(TINY_I2V)
    with torch.no_grad():
        a = ours(x, t, ctx, clip_fea=clip, y=y)
        b = ours(x, t, F.pad(ctx, (0, 0, 0, 492)), clip_fea=clip, y=y)
        c = ours(x, t, ctx[:, :10], clip_fea=clip, y=y)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("cfg", [TINY_I2V, TINY_INFINITETALK], ids=["i2v", "infinitetalk"])
def test_bf16_forward_close_to_fp32(cfg):
    ref_model = build_model(cfg, "cpu", torch.float32, seed=5)
    bf = apply_dtype_policy(copy.deepcopy(ref_model), torch.bfloat16)
    assert bf.blocks[0].self_attn.q.weight.dtype == torch.bfloat16
    x, y, ctx, clip, t = inputs(cfg)
    audio = torch.randn(2, 1, 9, 5, cfg.audio.blocks, cfg.audio.channels) if cfg.audio else None
    with torch.no_grad():
        ref = ref_model(x, t, ctx, clip_fea=clip, y=y, audio=audio)
        out = bf(x.bfloat16(), t, ctx.bfloat16(), clip_fea=clip.bfloat16(), y=y.bfloat16(),
                 audio=None if audio is None else audio.bfloat16())
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert rel_max_diff(out, ref) <= 2e-2
    assert F.cosine_similarity(out.flatten(), ref.flatten(), dim=0) >= 0.999
    assert not torch.equal(out, ref)  # it really ran in bf16
