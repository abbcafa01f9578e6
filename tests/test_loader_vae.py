"""Wan VAE files: diffusers AutoencoderKLWan names map to the original names (checked by round trip
through diffusers' own converter), the structure is read from keys, and .pth (weights_only) and
.safetensors copies give identical tensors. Loading into WanVAE is tested once wan/vae.py exists."""
import importlib.util

import pytest
import torch
from safetensors.torch import save_file

from wanfp4.wan.loader import detect_file, read_vae_state
from wanfp4.wan.formats_vae import diffusers_vae_to_original, normalize_vae_keys


@pytest.fixture(scope="module")
def diffusers_vae():
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    m = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                         temperal_downsample=[False, True, True]).eval()
    for p in m.parameters():
        p.data.normal_(0, 0.1)
    return m


def test_diffusers_names_round_trip_through_diffusers_converter(diffusers_vae):
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    dsd = diffusers_vae.state_dict()
    keys, layout = normalize_vae_keys(list(dsd))
    assert layout == "diffusers" and len(keys) == len(dsd)
    original = {k: dsd[v] for k, v in keys.items()}
    assert "decoder.upsamples.4.shortcut.weight" in original and "decoder.upsamples.11.resample.1.weight" in original
    back = convert_wan_vae_to_diffusers(dict(original))
    assert set(back) == set(dsd)
    assert all(back[k] is dsd[k] for k in dsd)


def test_structure_from_keys_and_pth_equals_safetensors(tmp_path, diffusers_vae):
    dsd = diffusers_vae.state_dict()
    keys, _ = normalize_vae_keys(list(dsd))
    original = {k: dsd[v].clone().contiguous() for k, v in keys.items()}
    st = f"{tmp_path}/wan_2.1_vae.safetensors"
    pth = f"{tmp_path}/Wan2.1_VAE.pth"
    save_file(original, st)
    torch.save(original, pth)
    dif = f"{tmp_path}/diffusers_vae.safetensors"
    save_file({k: v.contiguous() for k, v in dsd.items()}, dif)
    want = {"dim": 8, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
            "temporal_downsample": [False, True, True]}
    states = []
    for path, layout in ((st, "original"), (pth, "original"), (dif, "diffusers")):
        structure, s = read_vae_state(path)
        assert {k: structure[k] for k in want} == want and s.detection["layout"] == layout
        states.append({k: s[k] for k in s})
        s.close()
        det = detect_file(path)
        assert (det["kind"], det["dim"], det["z_dim"], det["format"]) == ("wan-vae", 8, 16, "fp32")
        assert det["params"] == sum(v.numel() for v in original.values())
    for other in states[1:]:
        assert set(other) == set(states[0])
        assert all(torch.equal(other[k], states[0][k]) for k in states[0])


def test_generic_decoder_index_mapping():
    assert diffusers_vae_to_original("decoder.up_blocks.2.resnets.1.conv2.weight", 3) == \
        "decoder.upsamples.9.residual.6.weight"
    assert diffusers_vae_to_original("decoder.up_blocks.0.upsamplers.0.time_conv.bias", 3) == \
        "decoder.upsamples.3.time_conv.bias"
    assert diffusers_vae_to_original("decoder.up_blocks.1.upsamplers.0.resample.1.weight", 2) == \
        "decoder.upsamples.5.resample.1.weight"         # num_res_blocks = 1: 2 resnets + 1 upsampler per level
    assert diffusers_vae_to_original("encoder.mid_block.attentions.0.to_qkv.weight", 3) == "encoder.middle.1.to_qkv.weight"
    assert diffusers_vae_to_original("post_quant_conv.bias", 3) == "conv2.bias"


@pytest.mark.skipif(importlib.util.find_spec("wanfp4.wan.vae") is None, reason="wan/vae.py not written yet")
def test_vae_from_safetensors_pth_and_diffusers_gives_identical_outputs(tmp_path, diffusers_vae):
    from wanfp4.wan.loader import load_vae

    dsd = diffusers_vae.state_dict()
    keys, _ = normalize_vae_keys(list(dsd))
    original = {k: dsd[v].clone().contiguous() for k, v in keys.items()}
    save_file(original, f"{tmp_path}/v.safetensors")
    torch.save(original, f"{tmp_path}/v.pth")
    save_file({k: v.contiguous() for k, v in dsd.items()}, f"{tmp_path}/d.safetensors")
    vaes = [load_vae(f"{tmp_path}/{n}", dtype=torch.float32) for n in ("v.safetensors", "v.pth", "d.safetensors")]
    for v in vaes[1:]:
        assert all(torch.equal(a, b) for a, b in zip(vaes[0].state_dict().values(), v.state_dict().values()))
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        outs = [v.encode(x) if hasattr(v, "encode") else None for v in vaes]
    if outs[0] is not None:
        assert all(torch.equal(o, outs[0]) for o in outs[1:])
