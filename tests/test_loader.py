"""Transformer loading from every real layout and weight dtype: the loaded model must reproduce the
source model exactly (lossless layouts) or the fp8-round-tripped source exactly (fp8 files loaded
in fp32), and quantized layers must receive the stored bits untouched."""
import os

import pytest
import torch
from tiny_files import (COMFY_PREFIX, cast, comfy_quant_entry, split_audio, state, tiny_inputs, tiny_model,
                        to_comfy_quant_fp8, to_fp8, to_scaled_fp8, write_comfy, write_diffusers, write_kijai_audio,
                        write_original, write_sharded)

from wanfp4.wan.config import TINY_I2V, TINY_INFINITETALK, TINY_T2V
from wanfp4.wan.loader import load_transformer, read_transformer_state
from wanfp4.wan.model import WanModel, keeps_fp32


@pytest.fixture(scope="module")
def source():
    m = tiny_model()
    with torch.no_grad():
        out = m(**tiny_inputs())
    return m, state(m), out


def _forward(model, config=TINY_INFINITETALK):
    with torch.no_grad():
        return model(**tiny_inputs(config))


def _assert_state_equal(model, ref: dict):
    got = model.state_dict()
    assert set(got) == set(ref)
    for k, v in ref.items():
        assert got[k].dtype == torch.float32, k
        assert torch.equal(got[k], v.float()), k


def _ref_model(sd):
    m = WanModel(TINY_INFINITETALK)
    m.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return m.eval()


# ----------------------------------------------------------------------------- layouts (lossless)
def _layout(name, tmp, sd):
    base, audio = split_audio(sd)
    if name == "original":
        return dict(path_or_paths=write_original(f"{tmp}/m.safetensors", sd))
    if name == "comfy_prefix":
        return dict(path_or_paths=write_comfy(f"{tmp}/m.safetensors", sd))
    if name == "diffusion_model_prefix":
        return dict(path_or_paths=write_comfy(f"{tmp}/m.safetensors", sd, prefix="diffusion_model."))
    if name == "diffusers":
        return dict(path_or_paths=write_diffusers(f"{tmp}/m.safetensors", sd))
    if name == "sharded_index":
        return dict(path_or_paths=write_sharded(f"{tmp}/shards", sd, shards=3))
    if name == "sharded_one_shard":
        write_sharded(f"{tmp}/shards", sd, shards=3)
        return dict(path_or_paths=f"{tmp}/shards/diffusion_pytorch_model-00002-of-00003.safetensors")
    if name == "sharded_diffusers":
        from tiny_files import to_diffusers
        return dict(path_or_paths=write_sharded(f"{tmp}/dshards", to_diffusers(sd), shards=4))
    if name == "file_list":
        return dict(path_or_paths=[write_original(f"{tmp}/base.safetensors", base),
                                   write_original(f"{tmp}/audio.safetensors", audio)])
    if name == "separate_audio":
        return dict(path_or_paths=write_comfy(f"{tmp}/base.safetensors", base),
                    audio_path=write_original(f"{tmp}/patch.safetensors", audio))
    if name == "kijai_audio":
        return dict(path_or_paths=write_original(f"{tmp}/base.safetensors", base),
                    audio_path=write_kijai_audio(f"{tmp}/kijai.safetensors", audio))
    if name == "merged_plus_audio_override":
        return dict(path_or_paths=write_original(f"{tmp}/merged.safetensors", sd),
                    audio_path=write_original(f"{tmp}/patch.safetensors", audio))
    raise AssertionError(name)


LAYOUTS = ["original", "comfy_prefix", "diffusion_model_prefix", "diffusers", "sharded_index", "sharded_one_shard",
           "sharded_diffusers", "file_list", "separate_audio", "kijai_audio", "merged_plus_audio_override"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_loads_the_exact_model(layout, tmp_path, source):
    model, sd, want = source
    m = load_transformer(**_layout(layout, tmp_path, sd), dtype=torch.float32)
    assert m.config == TINY_INFINITETALK
    _assert_state_equal(m, sd)
    assert torch.equal(_forward(m), want)


def test_separate_audio_file_overrides_stale_audio_of_a_merged_file(tmp_path, source):
    _, sd, want = source
    base, audio = split_audio(sd)
    stale = {**base, **{k: torch.zeros_like(v) for k, v in audio.items()}}
    m = load_transformer(write_original(f"{tmp_path}/m.safetensors", stale), dtype=torch.float32,
                         audio_path=write_original(f"{tmp_path}/a.safetensors", audio))
    assert torch.equal(_forward(m), want)


@pytest.mark.parametrize("config", [TINY_T2V, TINY_I2V], ids=["t2v", "i2v"])
def test_base_models_without_audio(config, tmp_path):
    src = tiny_model(config)
    m = load_transformer(write_comfy(f"{tmp_path}/m.safetensors", state(src)), dtype=torch.float32)
    assert m.config == config
    assert torch.equal(_forward(m, config), _forward(src, config))


# ----------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_files_load_exactly(dtype, tmp_path, source):
    _, sd, _ = source
    ref = cast(sd, dtype)
    m = load_transformer(write_comfy(f"{tmp_path}/m.safetensors", sd, dtype=dtype), dtype=torch.float32)
    _assert_state_equal(m, ref)
    assert torch.equal(_forward(m), _forward(_ref_model(ref)))


def _fp8_file(kind, tmp, sd):
    meta = None
    if kind in ("fp8_e4m3fn", "fp8_e5m2"):
        fsd, ref = to_fp8(sd, getattr(torch, kind.replace("fp8_", "float8_")))
    elif kind == "scaled_fp8":
        fsd, ref = to_scaled_fp8(sd)
    elif kind == "scaled_fp8_per_channel":
        fsd, ref = to_scaled_fp8(sd, per_channel=True, scale_input=False)
    elif kind == "scaled_fp8_e5m2":
        fsd, ref = to_scaled_fp8(sd, fp8=torch.float8_e5m2)
    elif kind == "comfy_quant":
        fsd, ref, meta = to_comfy_quant_fp8(sd)
    else:
        fsd, ref, meta = to_comfy_quant_fp8(sd, as_metadata=True)
    return write_comfy(f"{tmp}/{kind}.safetensors", fsd, metadata=meta), ref


FP8_KINDS = ["fp8_e4m3fn", "fp8_e5m2", "scaled_fp8", "scaled_fp8_per_channel", "scaled_fp8_e5m2", "comfy_quant",
             "comfy_quant_metadata"]


@pytest.mark.parametrize("kind", FP8_KINDS)
def test_fp8_files_dequantize_exactly_to_the_rounded_source(kind, tmp_path, source):
    _, sd, want = source
    path, ref = _fp8_file(kind, tmp_path, sd)
    m = load_transformer(path, dtype=torch.float32)
    _assert_state_equal(m, ref)
    got = _forward(m)
    assert torch.equal(got, _forward(_ref_model(ref)))
    # and the fp8 model is close to, but not identical with, the full-precision source (e5m2: 2 mantissa bits)
    rel = ((got - want).norm() / want.norm()).item()
    assert 0 < rel < (0.3 if "e5m2" in kind else 0.1)


@pytest.mark.parametrize("kind", ["scaled_fp8", "comfy_quant", "fp8_e4m3fn"])
def test_raw_state_modules_receive_stored_fp8_bits(kind, tmp_path, source):
    """Quantization contract: module_transform runs on meta; QuantLinear gets the file's tensors as stored."""
    from wanfp4.quant import QuantLinear, quantize_model
    from wanfp4.quant.capabilities import Environment

    _, sd, _ = source
    path, ref = _fp8_file(kind, tmp_path, sd)
    seen = {}

    def transform(model):
        assert model.blocks[0].ffn[0].weight.is_meta
        seen["called"] = True
        return quantize_model(model, "fp8_e4m3fn_scaled", compute_dtype=torch.float32, env=Environment())

    m = load_transformer(path, dtype=torch.float32, module_transform=transform)
    assert seen["called"]
    q = m.blocks[1].self_attn.k
    assert isinstance(q, QuantLinear)
    stored = to_scaled_fp8(sd)[0] if kind == "scaled_fp8" else None
    if stored is not None:
        assert torch.equal(q.weight.view(torch.uint8), stored["blocks.1.self_attn.k.weight"].view(torch.uint8))
    torch.testing.assert_close(q.dequantize_weight(), ref["blocks.1.self_attn.k.weight"], rtol=0.07, atol=1e-6)
    got, want = _forward(m), _forward(_ref_model(ref))
    assert ((got - want).norm() / want.norm()).item() < 1e-5


def test_dtype_policy_and_device(tmp_path, source):
    _, sd, _ = source
    m = load_transformer(write_original(f"{tmp_path}/m.safetensors", sd), dtype=torch.bfloat16, device="cpu")
    for k, p in m.named_parameters():
        assert p.dtype == (torch.float32 if keeps_fp32(k) else torch.bfloat16), k
        assert p.device.type == "cpu" and not p.is_meta
    assert m.compute_dtype() == torch.bfloat16


def test_loaded_tensors_do_not_alias_the_file(tmp_path, source):
    """Loaded parameters are copies: rewriting the file afterwards cannot change (or crash) the model."""
    _, sd, want = source
    path = write_original(f"{tmp_path}/m.safetensors", sd)
    m = load_transformer(path, dtype=torch.float32)
    os.remove(path)
    write_original(path, {k: torch.zeros_like(v) for k, v in sd.items()})
    assert torch.equal(_forward(m), want)


def test_read_transformer_state_is_lazy_and_normalized(tmp_path, source):
    _, sd, _ = source
    base, audio = split_audio(sd)
    cfg, st = read_transformer_state(write_diffusers(f"{tmp_path}/m.safetensors", base),
                                     audio_path=write_kijai_audio(f"{tmp_path}/a.safetensors", audio))
    assert cfg == TINY_INFINITETALK
    assert set(st) == set(sd) and len(st) == len(sd)
    assert torch.equal(st["blocks.0.norm3.weight"], sd["blocks.0.norm3.weight"])      # diffusers norm2 swap
    assert torch.equal(st["head.modulation"], sd["head.modulation"])
    assert st.where("audio_proj.proj1.weight").endswith("a.safetensors")
    assert st.detection["kind"] == "wan2.1-i2v+infinitetalk"
    st.close()


def test_loras_are_merged_after_loading(tmp_path, source):
    from safetensors.torch import save_file

    _, sd, _ = source
    down, up = torch.randn(4, 32), torch.randn(64, 4)
    lora = f"{tmp_path}/lora.safetensors"
    save_file({"diffusion_model.blocks.0.ffn.0.lora_down.weight": down,
               "diffusion_model.blocks.0.ffn.0.lora_up.weight": up}, lora)
    m = load_transformer(write_original(f"{tmp_path}/m.safetensors", sd), dtype=torch.float32, loras=[(lora, 0.5)])
    torch.testing.assert_close(m.blocks[0].ffn[0].weight, sd["blocks.0.ffn.0.weight"] + 0.5 * up @ down)


def test_comfy_quant_entry_format_is_comfyui_json():
    assert bytes(comfy_quant_entry("nvfp4").tolist()).decode() == '{"format": "nvfp4"}'
    assert COMFY_PREFIX == "model.diffusion_model."


def test_prequantized_nvfp4_file_plain_and_quantized(tmp_path, source):
    """Our pre-quantized NVFP4 file: into plain Linears (dequantized) and into QuantLinear (bits kept)."""
    from wanfp4.quant import quantize_model, save_quantized
    from wanfp4.quant.capabilities import Environment
    from wanfp4.wan.loader import detect_file

    model, _, _ = source
    env = Environment()
    q = quantize_model(tiny_model(), "fp4_scaled", compute_dtype=torch.float32, env=env)
    path = f"{tmp_path}/q.safetensors"
    save_quantized(q, path, config=TINY_INFINITETALK)
    det = detect_file(path)
    assert (det["format"], det["kind"]) == ("nvfp4", "wan2.1-i2v+infinitetalk")
    assert det["quant_layout"].startswith("wanfp4 pre-quantized")
    plain = load_transformer(path, dtype=torch.float32)
    want = q.blocks[0].ffn[0].dequantize_weight()
    assert torch.equal(plain.blocks[0].ffn[0].weight, want)
    back = load_transformer(path, dtype=torch.float32, module_transform=lambda m: quantize_model(
        m, "fp4_scaled", compute_dtype=torch.float32, env=env))
    for k, v in q.state_dict().items():
        got = back.state_dict()[k]
        bits = lambda t: t.reshape(-1).view(torch.uint8)  # noqa: E731
        assert got.dtype == v.dtype and torch.equal(bits(got), bits(v)), k
    assert torch.equal(_forward(back), _forward(q))
    torch.testing.assert_close(_forward(plain), _forward(q), rtol=1e-4, atol=1e-5)
