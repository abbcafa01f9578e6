"""quantize_model on the tiny InfiniteTalk model, the loader contract (meta + assign, every raw
layout), pre-quantized save/load, and exact sizes of the 14B I2V + InfiniteTalk model."""
import json

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from wanfp4.quant import (KEEP_IN_BASE_PRECISION, QuantFormatError, QuantLinear, WEIGHT_MODES, load_quantized,
                          quantize_model, quantized_size_bytes, read_quantized_metadata, save_quantized)
from wanfp4.quant.capabilities import Environment
from wanfp4.wan.config import INFINITETALK_14B, TINY_INFINITETALK
from wanfp4.wan.model import WanModel
from wanfp4.wan.safetensors_io import ModelFileError

CPU = Environment()
E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])
BLOCK_LINEARS = {"self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                 "cross_attn.v", "cross_attn.o", "cross_attn.k_img", "cross_attn.v_img", "ffn.0", "ffn.2",
                 "audio_cross_attn.q_linear", "audio_cross_attn.kv_linear", "audio_cross_attn.proj"}


def _bits(t):
    """Raw bytes of a tensor (compares fp8 / NaN payloads exactly)."""
    return t.reshape(-1).contiguous().view(torch.uint8)


def tiny_model():
    return WanModel(TINY_INFINITETALK).init_weights(seed=1).float()


def tiny_inputs():
    g = torch.Generator().manual_seed(3)
    c = TINY_INFINITETALK
    return dict(x=torch.randn(1, 16, 5, 4, 4, generator=g), timestep=torch.tensor([500.0]),
                context=torch.randn(1, 8, c.text_dim, generator=g), clip_fea=torch.randn(1, 257, c.image_dim, generator=g),
                y=torch.randn(1, 20, 5, 4, 4, generator=g),
                audio=torch.randn(1, 1, 17, 5, c.audio.blocks, c.audio.channels, generator=g))


def test_quantize_model_swaps_exactly_the_block_linears():
    m = quantize_model(tiny_model(), "fp4_scaled", compute_dtype=torch.float32, env=CPU)
    quant = {n for n, mod in m.named_modules() if isinstance(mod, QuantLinear)}
    expect = {f"blocks.{i}.{s}" for i in range(TINY_INFINITETALK.num_layers) for s in BLOCK_LINEARS}
    assert quant == expect
    kept = [n for n, mod in m.named_modules() if isinstance(mod, nn.Linear)]
    assert kept and all(n.split(".")[0] in ("text_embedding", "time_embedding", "time_projection", "img_emb",
                                             "head", "audio_proj") for n in kept)
    assert m.wanfp4_quant["mode"] == "fp4_scaled" and m.wanfp4_quant["layers"] == len(expect)
    assert set(KEEP_IN_BASE_PRECISION) >= {"patch_embedding", "audio_proj", "head", "img_emb", "modulation", "norm"}


def test_quantized_model_runs_and_stays_close():
    ref = tiny_model()
    with torch.no_grad():
        want = ref(**tiny_inputs())
        for mode, bound in (("fp8_e4m3fn_scaled", 0.05), ("fp4_scaled", 0.25)):
            got = quantize_model(tiny_model(), mode, compute_dtype=torch.float32, env=CPU)(**tiny_inputs())
            assert ((got - want).norm() / want.norm()).item() < bound


@pytest.mark.parametrize("mode", ["disabled", "fp8_e4m3fn", "fp8_e4m3fn_scaled", "fp4_experimental", "fp4_scaled"])
def test_meta_build_then_assign_equals_quantizing_a_real_model(mode):
    src = tiny_model()
    state = src.state_dict()
    direct = quantize_model(tiny_model(), mode, compute_dtype=torch.float32, env=CPU)
    with torch.device("meta"):
        m = WanModel(TINY_INFINITETALK)
    quantize_model(m, mode, compute_dtype=torch.float32, env=CPU)
    assert m.blocks[0].ffn[0].weight.is_meta
    m.load_state_dict(state, strict=True, assign=True)       # quantize on load
    assert not any(t.is_meta for t in m.state_dict().values())
    for k, v in direct.state_dict().items():
        assert torch.equal(_bits(m.state_dict()[k]), _bits(v)), k
    with torch.no_grad():
        assert torch.equal(m(**tiny_inputs()), direct(**tiny_inputs()))


def test_prequantized_round_trip_is_bit_exact_and_matches_quantize_on_load(tmp_path):
    m = quantize_model(tiny_model(), "fp4_scaled", compute_dtype=torch.float32, env=CPU)
    path = tmp_path / "tiny_nvfp4.safetensors"
    save_quantized(m, str(path))
    meta = read_quantized_metadata(str(path))
    assert meta["quant_mode"] == "fp4_scaled" and json.loads(meta["config"])["dim"] == TINY_INFINITETALK.dim
    assert "low nibble" in meta["fp4_packing"] and meta["nvfp4_block_size"] == "16"
    loaded = load_quantized(str(path), env=CPU)
    a, b = m.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(_bits(a[k]), _bits(b[k])), k
    with torch.no_grad():
        assert torch.equal(loaded(**tiny_inputs()), m(**tiny_inputs()))
    # re-quantize to another mode while loading
    other = load_quantized(str(path), mode="fp8_e4m3fn_scaled", env=CPU)
    assert other.blocks[0].self_attn.q.weight.dtype == torch.float8_e4m3fn


def test_load_quantized_rejects_plain_files(tmp_path):
    p = tmp_path / "plain.safetensors"
    save_file({"a": torch.zeros(2)}, str(p))
    with pytest.raises(ModelFileError, match="not a WanFP4 pre-quantized"):
        load_quantized(str(p))


# ----------------------------------------------------------------------------- raw layouts
def _load_into(mode, sd, n=32, k=64):
    q = QuantLinear(k, n, True, mode, torch.float32, device="meta")
    q.load_state_dict(sd, strict=True, assign=True)
    return q


def test_legacy_scaled_fp8_layout():
    w = torch.randn(32, 64)
    scale = w.abs().max() / 448
    sd = {"weight": (w / scale).to(torch.float8_e4m3fn), "scale_weight": scale.reshape(1), "scale_input": torch.ones(()),
          "bias": torch.randn(32)}
    q = _load_into("fp8_e4m3fn_scaled", sd)
    assert torch.equal(q.weight.view(torch.uint8), sd["weight"].view(torch.uint8))   # bits kept
    torch.testing.assert_close(q.dequantize_weight(), sd["weight"].float() * scale)


def test_comfy_quant_fp8_and_nvfp4_layouts():
    w = torch.randn(32, 64)
    fmt = lambda f: torch.tensor(list(json.dumps({"format": f}).encode()), dtype=torch.uint8)  # noqa: E731
    s = w.abs().max() / 448
    q = _load_into("fp8_e4m3fn_fast", {"weight": (w / s).to(torch.float8_e4m3fn), "weight_scale": s,
                                       "comfy_quant": fmt("float8_e4m3fn"), "bias": torch.zeros(32)})
    torch.testing.assert_close(q.dequantize_weight(), (w / s).to(torch.float8_e4m3fn).float() * s)
    # ComfyUI nvfp4, built here: high nibble first, scales in the 128x4 swizzle (rows padded to 128)
    codes = torch.randint(0, 16, (32, 64), dtype=torch.uint8)
    packed = (codes[:, 0::2] << 4) | codes[:, 1::2]
    bs = (torch.rand(32, 4) * 4 + 0.5).to(torch.float8_e4m3fn)
    sw = torch.zeros(128 * 4, dtype=torch.uint8)
    for r in range(32):
        for c in range(4):
            sw[(r % 32) * 16 + (r // 32) * 4 + c] = bs[r, c].view(torch.uint8)
    ts = torch.tensor(0.01)
    sd = {"weight": packed, "weight_scale": sw.view(torch.float8_e4m3fn).reshape(128, 4), "weight_scale_2": ts,
          "comfy_quant": fmt("nvfp4"), "bias": torch.zeros(32)}
    q = _load_into("fp4_scaled", sd)
    want = (E2M1[codes.long()].view(32, 4, 16) * (bs.float() * ts)[..., None]).view(32, 64)
    assert torch.equal(q.dequantize_weight(), want)
    # same file into an fp8 mode: dequantized then re-quantized
    q8 = _load_into("fp8_e4m3fn_scaled", sd)
    assert ((q8.dequantize_weight() - want).norm() / want.norm()).item() < 0.03


def test_bad_layouts_raise_clear_errors():
    with pytest.raises(QuantFormatError, match=r"blocks\.0\.ffn\.0\.weight: weight has shape \(16, 64\)"):
        lin = QuantLinear(64, 32, True, "fp4_scaled", device="meta")
        lin._load_from_state_dict({"blocks.0.ffn.0.weight": torch.zeros(16, 64)}, "blocks.0.ffn.0.", {}, True, [], [], [])
    with pytest.raises(QuantFormatError, match="format 'int8_tensorwise' is not supported"):
        _load_into("fp4_scaled", {"weight": torch.zeros(32, 64, dtype=torch.int8), "bias": torch.zeros(32),
                                  "comfy_quant": torch.tensor(list(b'{"format": "int8_tensorwise"}'), dtype=torch.uint8)})
    with pytest.raises(QuantFormatError, match="without block scales"):
        _load_into("fp4_scaled", {"weight": torch.zeros(32, 32, dtype=torch.uint8), "bias": torch.zeros(32)})
    with pytest.raises(RuntimeError, match="Unexpected key.*weight_mystery"):
        _load_into("fp4_scaled", {"weight": torch.zeros(32, 64), "bias": torch.zeros(32), "weight_mystery": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="Missing key.*bias"):
        _load_into("fp4_scaled", {"weight": torch.zeros(32, 64)})


# ----------------------------------------------------------------------------- sizes
def test_exact_sizes_of_14b_infinitetalk_every_mode():
    sizes = {mode: quantized_size_bytes(INFINITETALK_14B, mode) for mode in WEIGHT_MODES}
    # Independent count: 40 blocks x 15 Linears (d = 5120, f = 13824, audio 768 -> 2d) quantized,
    # everything else bf16. Params outside the quantized weights (all kept in bf16):
    d, f, L = 5120, 13824, 40
    lin = [(d, d)] * 10 + [(f, d), (d, f)] + [(d, d), (2 * d, 768), (d, d)]      # (N, K)
    qparams = L * sum(n * k for n, k in lin)
    with torch.device("meta"):
        total_params = sum(p.numel() for p in WanModel(INFINITETALK_14B).parameters())
    other = 2 * (total_params - qparams)
    rows = L * sum(n for n, _ in lin)
    blocks16 = L * sum(n * k // 16 for n, k in lin)
    blocks32 = L * sum(n * k // 32 for n, k in lin)
    assert sizes["disabled"] == 2 * total_params
    for m in ("fp8_e4m3fn", "fp8_e5m2", "fp8_e4m3fn_scaled", "fp8_e4m3fn_fast"):
        assert sizes[m] == other + qparams + 4 * rows
    assert sizes["fp4_scaled"] == sizes["fp4_scaled_fast"] == other + qparams // 2 + blocks16 + 4 * L * len(lin)
    assert sizes["fp4_experimental"] == other + qparams // 2 + blocks32
    assert 10e9 <= sizes["fp4_scaled"] <= 11.5e9
    assert sizes == {"disabled": 37764093568, "fp8_e4m3fn": 19218798208, "fp8_e5m2": 19218798208,
                     "fp8_e4m3fn_scaled": 19218798208, "fp8_e4m3fn_fast": 19218798208,
                     "fp4_experimental": 10504394368, "fp4_scaled": 11084390368, "fp4_scaled_fast": 11084390368}


def test_size_formula_matches_real_quantized_storage():
    for mode in WEIGHT_MODES:
        m = quantize_model(tiny_model(), mode, compute_dtype=torch.bfloat16, env=CPU).to(torch.bfloat16)
        actual = sum(t.numel() * t.element_size() for t in m.state_dict().values())
        assert actual == quantized_size_bytes(tiny_model(), mode), mode
