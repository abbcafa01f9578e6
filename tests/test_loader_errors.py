"""Bad model files fail with ModelFileError naming the file and the first offending key, and saying
what would fix it: truncated / not safetensors / pickles with code / missing, unexpected, misshapen
tensors / unknown layouts / a VAE or audio file where a transformer is expected, and vice versa."""
import os
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file
from tiny_files import split_audio, state, tiny_model, write_comfy, write_original, write_sharded

from wanfp4.wan.config import TINY_INFINITETALK
from wanfp4.wan.loader import detect_file, load_transformer, read_vae_state
from wanfp4.wan.safetensors_io import ModelFileError, load_pickle_state

FAKE_VAE = {"encoder.conv1.weight": torch.zeros(4, 3, 3, 3, 3), "conv1.weight": torch.zeros(8, 8, 1, 1, 1),
            "conv2.weight": torch.zeros(4, 4, 1, 1, 1), "decoder.middle.0.residual.0.gamma": torch.zeros(4, 1, 1, 1)}


@pytest.fixture(scope="module")
def sd():
    return state(tiny_model())


def _raises(match, fn, *args, **kw):
    with pytest.raises(ModelFileError, match=match) as e:
        fn(*args, **kw)
    return str(e.value)


def test_truncated_file_names_the_first_incomplete_tensor(tmp_path, sd):
    p = write_original(f"{tmp_path}/cut.safetensors", sd)
    with open(p, "r+b") as fh:
        fh.truncate(os.path.getsize(p) - 1000)
    msg = _raises(r"cut\.safetensors: truncated file .*first incomplete tensor '.+'.*Re-download", load_transformer, p)
    assert "cut.safetensors" in msg


def test_not_a_safetensors_file(tmp_path):
    p = f"{tmp_path}/junk.safetensors"
    with open(p, "wb") as fh:
        fh.write(os.urandom(4096))
    _raises(r"junk\.safetensors: (not a safetensors file|corrupt safetensors header)", load_transformer, p)
    _raises(r"junk\.safetensors", detect_file, p)


def test_missing_tensor(tmp_path, sd):
    bad = {k: v for k, v in sd.items() if k != "blocks.1.ffn.2.bias"}
    _raises(r"m\.safetensors: missing tensor 'blocks\.1\.ffn\.2\.bias'", load_transformer,
            write_comfy(f"{tmp_path}/m.safetensors", bad))


def test_unexpected_tensor_names_its_stored_key(tmp_path, sd):
    bad = {**sd, "blocks.0.mystery.weight": torch.zeros(3)}
    _raises(r"m\.safetensors: unexpected tensor 'model\.diffusion_model\.blocks\.0\.mystery\.weight'",
            load_transformer, write_comfy(f"{tmp_path}/m.safetensors", bad))


def test_wrong_shape_plain_and_quantized(tmp_path, sd):
    from wanfp4.quant import quantize_model
    from wanfp4.quant.capabilities import Environment

    bad = {**sd, "blocks.1.self_attn.q.weight": torch.zeros(32, 16)}
    p = write_comfy(f"{tmp_path}/m.safetensors", bad)
    _raises(r"m\.safetensors: tensor 'model\.diffusion_model\.blocks\.1\.self_attn\.q\.weight' has shape \(32, 16\), "
            r"the .* model expects \(32, 32\)", load_transformer, p, dtype=torch.float32)
    _raises(r"m\.safetensors: blocks\.1\.self_attn\.q\.weight: weight has shape \(32, 16\)", load_transformer, p,
            module_transform=lambda m: quantize_model(m, "fp8_e4m3fn_scaled", env=Environment()))


def test_unknown_layout_and_other_model_kinds(tmp_path, sd):
    p = f"{tmp_path}/what.safetensors"
    save_file({"foo.weight": torch.zeros(2)}, p)
    _raises(r"what\.safetensors: not a Wan2\.1 transformer: this is an unknown layout \(first key 'foo\.weight'",
            load_transformer, p)
    v = f"{tmp_path}/vae.safetensors"
    save_file(FAKE_VAE, v)
    _raises(r"vae\.safetensors: not a Wan2\.1 transformer: this is a wan-vae file; load it with the VAE loader",
            load_transformer, v)
    t = write_original(f"{tmp_path}/dit.safetensors", sd)
    _raises(r"dit\.safetensors: not a Wan VAE: this is a wan2\.1-i2v\+infinitetalk file", read_vae_state, t)
    _, audio = split_audio(sd)
    a = write_original(f"{tmp_path}/patch.safetensors", audio)
    _raises(r"patch\.safetensors: not a Wan2\.1 transformer: this is the InfiniteTalk audio modules only; give it as "
            r"the audio", load_transformer, a)
    base = write_original(f"{tmp_path}/base.safetensors", split_audio(sd)[0])
    _raises(r"vae\.safetensors: no InfiniteTalk audio modules .* it is a wan-vae file", load_transformer, base,
            audio_path=v)


def test_audio_file_for_another_model_size(tmp_path, sd):
    other = state(tiny_model(replace(TINY_INFINITETALK, num_layers=3)))
    a = write_original(f"{tmp_path}/patch3.safetensors", split_audio(other)[1])
    base = write_original(f"{tmp_path}/base.safetensors", split_audio(sd)[0])
    _raises(r"patch3\.safetensors: audio modules are for dim 32 x 3 blocks, the transformer .*base\.safetensors has "
            r"dim 32 x 2", load_transformer, base, audio_path=a)


def test_incomplete_blocks_and_missing_shard(tmp_path, sd):
    bad = {k: v for k, v in sd.items() if not k.startswith("blocks.0.")}
    _raises(r"m\.safetensors: not a usable Wan2\.1 transformer: block indices are not contiguous: 'blocks\.0\.\*' is "
            r"missing", load_transformer, write_original(f"{tmp_path}/m.safetensors", bad))
    idx = write_sharded(f"{tmp_path}/sh", sd, shards=3)
    os.remove(f"{tmp_path}/sh/diffusion_pytorch_model-00002-of-00003.safetensors")
    _raises(r"diffusion_pytorch_model-00002-of-00003\.safetensors: file not found", load_transformer, idx)
    _raises(r"shard .*00002-of-00003\.safetensors of this sharded checkpoint is missing", load_transformer,
            f"{tmp_path}/sh/diffusion_pytorch_model-00001-of-00003.safetensors")


def test_same_tensor_in_two_files(tmp_path, sd):
    a = write_original(f"{tmp_path}/a.safetensors", sd)
    b = write_comfy(f"{tmp_path}/b.safetensors", {"head.head.bias": sd["head.head.bias"]})
    _raises(r"b\.safetensors: tensor 'model\.diffusion_model\.head\.head\.bias' duplicates 'head\.head\.bias' of "
            r".*a\.safetensors", load_transformer, [a, b])


def test_quanto_files_are_explained(tmp_path):
    p = f"{tmp_path}/infinitetalk_single_fp8.safetensors"
    save_file({"audio_proj.proj1.weight._data": torch.zeros(2, 2), "audio_proj.proj1.weight._scale": torch.ones(2)}, p)
    _raises(r"infinitetalk_single_fp8\.safetensors: .*optimum-quanto .*'audio_proj\.proj1\.weight\._data'",
            load_transformer, p)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickles_are_loaded_weights_only(tmp_path):
    good = f"{tmp_path}/good.pth"
    torch.save({"a": torch.arange(3.0)}, good)
    assert torch.equal(load_pickle_state(good)["a"], torch.arange(3.0))
    evil = f"{tmp_path}/evil.pth"
    torch.save({"a": torch.zeros(1), "b": Evil()}, evil)
    _raises(r"evil\.pth: refused to load: the pickle holds more than tensors", load_pickle_state, evil)
    junk = f"{tmp_path}/junk.pth"
    with open(junk, "wb") as fh:
        fh.write(b"not a torch file at all")
    _raises(r"junk\.pth: cannot be read as a PyTorch state dict", load_pickle_state, junk)
