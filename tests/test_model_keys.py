"""Meta builds of the real configs: exact original key set and shapes (§1.5, §3.5), parameter
counts, build time, buffer/dtype policy, meta -> assign loading, and clear input errors."""
import time

import pytest
import torch

from wanfp4.wan.config import (INFINITETALK_14B, TINY_I2V, TINY_INFINITETALK, TINY_T2V, WAN21_I2V_14B,
                               WAN21_T2V_1_3B)
from wanfp4.wan.model import WanModel, apply_dtype_policy, build_model, count_params, expected_keys, keeps_fp32

BASE_SHAPES_14B = {
    "patch_embedding.weight": (5120, 36, 1, 2, 2), "patch_embedding.bias": (5120,),
    "text_embedding.0.weight": (5120, 4096), "text_embedding.2.weight": (5120, 5120),
    "time_embedding.0.weight": (5120, 256), "time_embedding.2.weight": (5120, 5120),
    "time_projection.1.weight": (30720, 5120), "time_projection.1.bias": (30720,),
    "img_emb.proj.0.weight": (1280,), "img_emb.proj.1.weight": (1280, 1280),
    "img_emb.proj.3.weight": (5120, 1280), "img_emb.proj.4.bias": (5120,),
    "blocks.39.modulation": (1, 6, 5120), "blocks.0.self_attn.q.weight": (5120, 5120),
    "blocks.0.self_attn.o.bias": (5120,), "blocks.0.self_attn.norm_q.weight": (5120,),
    "blocks.0.norm3.weight": (5120,), "blocks.0.norm3.bias": (5120,),
    "blocks.0.cross_attn.k_img.weight": (5120, 5120), "blocks.0.cross_attn.v_img.bias": (5120,),
    "blocks.0.cross_attn.norm_k_img.weight": (5120,), "blocks.0.ffn.0.weight": (13824, 5120),
    "blocks.0.ffn.2.weight": (5120, 13824), "head.modulation": (1, 2, 5120), "head.head.weight": (64, 5120),
    "head.head.bias": (64,),
}
AUDIO_SHAPES_14B = {
    "audio_proj.proj1.weight": (512, 46080), "audio_proj.proj1.bias": (512,),
    "audio_proj.proj1_vf.weight": (512, 73728), "audio_proj.proj1_vf.bias": (512,),
    "audio_proj.proj2.weight": (512, 512), "audio_proj.proj2.bias": (512,),
    "audio_proj.proj3.weight": (24576, 512), "audio_proj.proj3.bias": (24576,),
    "audio_proj.norm.weight": (768,), "audio_proj.norm.bias": (768,),
}
AUDIO_BLOCK_SHAPES = {
    "audio_cross_attn.q_linear.weight": (5120, 5120), "audio_cross_attn.q_linear.bias": (5120,),
    "audio_cross_attn.kv_linear.weight": (10240, 768), "audio_cross_attn.kv_linear.bias": (10240,),
    "audio_cross_attn.proj.weight": (5120, 5120), "audio_cross_attn.proj.bias": (5120,),
    "norm_x.weight": (5120,), "norm_x.bias": (5120,),
}


def test_infinitetalk_14b_meta_build_keys_shapes_counts_and_time():
    t0 = time.perf_counter()
    with torch.device("meta"):
        model = WanModel(INFINITETALK_14B)
    assert time.perf_counter() - t0 < 5.0
    keys = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    base = expected_keys(WAN21_I2V_14B)
    assert len(base) == 1303 and len(keys) == 1303 + 330
    assert all(keys[k] == s for k, s in base.items())
    extra = {k: s for k, s in keys.items() if k not in base}
    want_extra = dict(AUDIO_SHAPES_14B)
    for i in range(40):
        want_extra.update({f"blocks.{i}.{k}": s for k, s in AUDIO_BLOCK_SHAPES.items()})
    assert extra == want_extra
    for k, s in BASE_SHAPES_14B.items():
        assert base[k] == s, k
    assert sum(1 for k in base if k.startswith("blocks.7.")) == 32
    n_base = sum(torch.Size(s).numel() for s in base.values())
    n_audio = sum(torch.Size(s).numel() for s in extra.values())
    assert round(n_base / 1e9, 3) == 16.395
    assert round(n_audio / 1e9, 4) == 2.4872
    assert count_params(model) == n_base + n_audio
    assert list(model.buffers()) == []  # nothing but checkpoint tensors in the state dict


def test_t2v_1_3b_counts():
    keys = expected_keys(WAN21_T2V_1_3B)
    assert len(keys) == 825
    assert round(sum(torch.Size(s).numel() for s in keys.values()) / 1e9, 3) == 1.419
    assert not any("img" in k for k in keys)


def test_meta_build_then_assign_load_reproduces_source_model():
    src = build_model(TINY_INFINITETALK, "cpu", torch.float32, seed=21)
    with torch.device("meta"):
        dst = WanModel(TINY_INFINITETALK)
    dst.load_state_dict({k: v.clone() for k, v in src.state_dict().items()}, strict=True, assign=True)
    x, y = torch.randn(1, 16, 2, 4, 4), torch.randn(1, 20, 2, 4, 4)
    ctx, clip = torch.randn(1, 7, 32), torch.randn(1, 257, 1280)
    audio = torch.randn(1, 1, 5, 5, 12, 16)
    with torch.no_grad():
        a = src(x, torch.tensor([3.0]), ctx, clip_fea=clip, y=y, audio=audio)
        b = dst(x, torch.tensor([3.0]), ctx, clip_fea=clip, y=y, audio=audio)
    assert torch.equal(a, b)


def test_build_model_dtype_policy_and_random_init():
    m = build_model(TINY_INFINITETALK, "cpu", torch.bfloat16, seed=0)
    p = dict(m.named_parameters())
    assert p["blocks.0.self_attn.q.weight"].dtype == torch.bfloat16
    assert p["blocks.0.audio_cross_attn.kv_linear.weight"].dtype == torch.bfloat16
    for name in ("blocks.0.modulation", "head.modulation", "head.head.weight", "time_projection.1.weight",
                 "blocks.0.norm3.weight", "blocks.1.self_attn.norm_k.weight", "img_emb.proj.0.weight",
                 "audio_proj.norm.bias", "blocks.0.norm_x.weight"):
        assert p[name].dtype == torch.float32 and keeps_fp32(name), name
    assert not keeps_fp32("blocks.0.ffn.0.weight") and not keeps_fp32("img_emb.proj.1.weight")
    assert m.compute_dtype() == torch.bfloat16
    assert p["head.head.weight"].abs().sum() > 0  # not Wan's zero-init head: outputs are non-degenerate
    again = build_model(TINY_INFINITETALK, "cpu", torch.bfloat16, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(m.parameters(), again.parameters()))
    with torch.device("meta"):
        meta = WanModel(TINY_I2V)
    with pytest.raises(RuntimeError, match="meta"):
        meta.init_weights()


def test_disabled_norms_have_no_keys():
    from dataclasses import replace
    cfg = replace(TINY_T2V, qk_norm=False, cross_attn_norm=False)
    keys = expected_keys(cfg)
    assert not any("norm" in k for k in keys)
    m = build_model(cfg, "cpu", torch.float32)
    out = m(torch.randn(1, 16, 1, 4, 4), torch.tensor([1.0]), torch.randn(1, 3, 32))
    assert out.shape == (1, 16, 1, 4, 4)


@pytest.fixture(scope="module")
def tiny():
    return build_model(TINY_INFINITETALK, "cpu", torch.float32, seed=1)


def _args(**over):
    a = dict(x=torch.randn(1, 16, 2, 4, 4), timestep=torch.tensor([5.0]), context=torch.randn(1, 7, 32),
             clip_fea=torch.randn(1, 257, 1280), y=torch.randn(1, 20, 2, 4, 4), audio=torch.randn(1, 1, 5, 5, 12, 16))
    a.update(over)
    return a


@pytest.mark.parametrize("over, match", [
    (dict(clip_fea=None), "clip_fea: required"),
    (dict(y=None), "y: required"),
    (dict(y=torch.randn(1, 4, 2, 4, 4)), "y: expected shape"),
    (dict(context=torch.randn(1, 513, 32)), "exceed text_len"),
    (dict(context=torch.randn(1, 7, 16)), "context: expected"),
    (dict(audio=torch.randn(1, 1, 9, 5, 12, 16)), r"audio: expected window features of shape \[1, '1\|2', 5"),
    (dict(audio=torch.randn(1, 3, 5, 5, 12, 16)), "audio: expected"),
    (dict(x=torch.randn(1, 16, 2, 5, 4), y=torch.randn(1, 20, 2, 5, 4)), "not divisible by the patch size"),
    (dict(timestep=torch.tensor([1.0, 2.0])), "timestep: expected 1"),
])
def test_clear_input_errors(tiny, over, match):
    with pytest.raises(ValueError, match=match):
        tiny(**_args(**over))


def test_audio_on_base_model_and_clip_on_t2v_are_rejected():
    base = build_model(TINY_I2V, "cpu", torch.float32)
    with pytest.raises(ValueError, match="without InfiniteTalk"):
        base(**_args())
    t2v = build_model(TINY_T2V, "cpu", torch.float32)
    with pytest.raises(ValueError, match="t2v"):
        t2v(torch.randn(1, 16, 1, 4, 4), torch.tensor([1.0]), torch.randn(1, 3, 32), clip_fea=torch.randn(1, 257, 1280))
