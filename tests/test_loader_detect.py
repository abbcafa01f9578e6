"""Detection from key names and shapes alone: every layout, the real 14B key sets (meta, no data),
and the weight storage formats (plain, fp8, scaled fp8, ComfyUI comfy_quant fp8 / NVFP4, mixed)."""
import pytest
import torch
from tiny_files import (meta_infos, split_audio, state, tiny_model, to_comfy_quant_fp8, to_diffusers, to_scaled_fp8,
                        write_comfy, write_diffusers, write_kijai_audio, write_original, write_sharded)

from wanfp4.wan.config import (INFINITETALK_14B, TINY_INFINITETALK, TINY_T2V, WAN21_I2V_14B, WAN21_T2V_1_3B,
                               AudioConfig)
from wanfp4.wan.detect import detect_infos, detect_wan_config, register_detector, detectors
from wanfp4.wan.loader import detect_file
from wanfp4.wan.model import expected_keys


def _params(config):
    n = 0
    for shape in expected_keys(config).values():
        p = 1
        for d in shape:
            p *= d
        n += p
    return n


def test_infinitetalk_14b_meta_key_set():
    det = detect_infos(meta_infos(INFINITETALK_14B))
    assert det["kind"] == "wan2.1-i2v+infinitetalk"
    assert det["config"] == INFINITETALK_14B
    assert (det["dim"], det["layers"], det["heads"], det["in_dim"], det["ffn_dim"]) == (5120, 40, 40, 36, 13824)
    assert det["audio"] == AudioConfig().__dict__
    assert det["tensors"] == 1303 + 330
    assert det["params"] == _params(INFINITETALK_14B)
    assert 18.8e9 < det["params"] < 18.95e9
    assert det["format"] == "bf16" and det["layout"] == "original"


def test_audio_only_14b_key_set_has_330_tensors_and_2_49_b_params():
    infos = {k: v for k, v in meta_infos(INFINITETALK_14B).items() if k.startswith("audio_proj.")
             or ".audio_cross_attn." in k or ".norm_x." in k}
    det = detect_infos(infos)
    assert det["kind"] == "infinitetalk-audio"
    assert (det["dim"], det["layers"], det["heads"]) == (5120, 40, 40)
    assert det["tensors"] == 330 and round(det["params"] / 1e9, 4) == 2.4872
    assert det["audio"] == AudioConfig().__dict__


@pytest.mark.parametrize("config", [WAN21_T2V_1_3B, WAN21_I2V_14B], ids=["t2v-1.3b", "i2v-14b"])
def test_released_base_configs_in_comfy_and_diffusers_names(config):
    infos = meta_infos(config)
    comfy = {"model.diffusion_model." + k: v for k, v in infos.items()}
    det = detect_infos(comfy)
    assert det["config"] == config and det["layout"] == "comfyui"
    assert det["kind"] == ("wan2.1-i2v" if config.is_i2v else "wan2.1-t2v")
    diff = to_diffusers({k: torch.empty(shape, device="meta") for k, (_, shape) in infos.items()})
    assert "condition_embedder.time_proj.weight" in diff and "blocks.0.attn1.to_q.weight" in diff
    det = detect_infos({k: (torch.bfloat16, tuple(v.shape)) for k, v in diff.items()})
    assert det["config"] == config and det["layout"] == "diffusers"


def test_storage_formats_from_keys_alone():
    infos = meta_infos(TINY_INFINITETALK, torch.bfloat16)
    lin = [k for k, (_, s) in infos.items() if k.startswith("blocks.") and k.endswith(".weight") and len(s) == 2]
    fp8 = dict(infos)
    for k in lin:
        fp8[k] = (torch.float8_e4m3fn, infos[k][1])
        fp8[k[:-6] + "scale_weight"] = (torch.float32, ())
    fp8["scaled_fp8"] = (torch.float8_e4m3fn, (0,))
    det = detect_infos(fp8)
    assert (det["format"], det["quant_layout"], det["config"]) == ("fp8_e4m3fn_scaled", "scaled_fp8", TINY_INFINITETALK)
    assert det["markers"] == ["scaled_fp8"] and det["tensors"] == len(infos)
    nv = dict(infos)
    for k in lin:
        n, kk = infos[k][1]
        nv[k] = (torch.uint8, (n, kk // 2))
        nv[k[:-6] + "weight_scale"] = (torch.float8_e4m3fn, (128, 4))
        nv[k[:-6] + "weight_scale_2"] = (torch.float32, ())
        nv[k[:-6] + "comfy_quant"] = (torch.uint8, (19,))
    det = detect_infos(nv)
    assert (det["format"], det["quant_layout"], det["config"]) == ("nvfp4", "comfy_quant", TINY_INFINITETALK)
    assert det["params"] == detect_infos(infos)["params"]        # packed 4-bit weights count 2 per byte
    mixed = dict(infos)
    mixed[lin[0]] = (torch.float8_e5m2, infos[lin[0]][1])
    det = detect_infos(mixed)
    assert det["format"] == "mixed" and det["formats"] == {"fp8_e5m2": 1, "bf16": len(lin) - 1}


def test_tiny_head_count_and_metadata_config_override():
    infos = meta_infos(TINY_T2V)
    assert detect_wan_config(infos) == TINY_T2V                  # width 32 -> head_dim 16 -> 2 heads
    odd = TINY_T2V.__class__(**{**TINY_T2V.__dict__, "num_heads": 4})
    assert detect_wan_config(infos, {"config": __import__("json").dumps(odd.to_dict())}) == odd


@pytest.fixture(scope="module")
def tiny_sd():
    return state(tiny_model())


def test_detect_file_for_each_layout(tmp_path, tiny_sd):
    base, audio = split_audio(tiny_sd)
    cases = {
        write_original(f"{tmp_path}/o.safetensors", tiny_sd): ("wan2.1-i2v+infinitetalk", "original", "fp32"),
        write_comfy(f"{tmp_path}/c.safetensors", base, torch.bfloat16): ("wan2.1-i2v", "comfyui", "bf16"),
        write_diffusers(f"{tmp_path}/d.safetensors", base, torch.float16): ("wan2.1-i2v", "diffusers", "fp16"),
        write_original(f"{tmp_path}/a.safetensors", audio): ("infinitetalk-audio", "original", "fp32"),
        write_kijai_audio(f"{tmp_path}/k.safetensors", audio): ("infinitetalk-audio", "original (kijai audio prefix)",
                                                               "fp32"),
        write_comfy(f"{tmp_path}/s.safetensors", to_scaled_fp8(tiny_sd)[0]): ("wan2.1-i2v+infinitetalk", "comfyui",
                                                                              "fp8_e4m3fn_scaled"),
        write_comfy(f"{tmp_path}/q.safetensors", to_comfy_quant_fp8(tiny_sd)[0]): ("wan2.1-i2v+infinitetalk",
                                                                                  "comfyui", "fp8_e4m3fn_scaled"),
    }
    for path, (kind, layout, fmt) in cases.items():
        det = detect_file(path)
        assert (det["kind"], det["layout"], det["format"]) == (kind, layout, fmt), path
    fsd, _, meta = to_comfy_quant_fp8(tiny_sd, as_metadata=True)
    det = detect_file(write_comfy(f"{tmp_path}/m.safetensors", fsd, metadata=meta))
    assert det["quant_layout"] == "comfy_quant" and det["format"] == "fp8_e4m3fn_scaled"
    idx = write_sharded(f"{tmp_path}/sh", tiny_sd, shards=3)
    for p in (idx, f"{tmp_path}/sh/diffusion_pytorch_model-00003-of-00003.safetensors"):
        det = detect_file(p)
        assert det["kind"] == "wan2.1-i2v+infinitetalk" and det["shards"] == 3 and det["dim"] == 32


def test_detector_registry_accepts_new_detectors(tmp_path):
    from safetensors.torch import save_file

    path = f"{tmp_path}/x.safetensors"
    save_file({"my_encoder.layers.0.weight": torch.zeros(8, 4), "my_encoder.layers.1.weight": torch.zeros(8, 8)}, path)
    with pytest.raises(Exception, match="unknown model layout.*my_encoder.layers.0.weight"):
        detect_file(path)

    @register_detector
    def mine(infos, metadata):
        if any(k.startswith("my_encoder.") for k in infos):
            return {"kind": "my-encoder", "dim": 8, "layers": 2, "heads": 1, "in_dim": 4}
        return None

    try:
        det = detect_file(path)
        assert det["kind"] == "my-encoder" and det["format"] == "fp32" and det["params"] == 96
    finally:
        detectors_list = detectors()
        assert mine in detectors_list
        from wanfp4.wan import detect as d
        d._DETECTORS.remove(mine)
