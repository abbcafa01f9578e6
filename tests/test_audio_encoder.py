"""wav2vec2 InfiniteTalk features: key mapping from ComfyUI / HF files, parity with transformers,
interpolation before the transformer, frame counts, silence and the CFG null input."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import Wav2Vec2Config, Wav2Vec2Model

from wanfp4.wan.audio_encoder import (
    InfiniteTalkAudioEncoder,
    build_wav2vec2,
    detect_wav2vec2_config,
    load_audio_encoder,
)
from wanfp4.wan.audio_windows import null_audio_features
from wanfp4.wan.safetensors_io import ModelFileError

HEADS = 4


def tiny_config(**kw):
    """§7.5 tiny config (conv width 32 instead of 512 to keep the conv stack cheap)."""
    base = dict(
        hidden_size=48, num_hidden_layers=12, num_attention_heads=HEADS, intermediate_size=96,
        feat_extract_norm="group", conv_bias=False, do_stable_layer_norm=False,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, conv_dim=(32,) * 7,
        mask_time_prob=0.0,
    )
    base.update(kw)
    return Wav2Vec2Config(**base)


def reference_model(config, sd=None):
    """transformers' model, eager attention, with `sd` loaded if given."""
    config._attn_implementation = "eager"
    m = Wav2Vec2Model(config).eval()
    if sd is not None:
        m.load_state_dict(sd)
    return m


def randomized(model):
    """Give norms and biases non-trivial values so a wrong mapping cannot go unnoticed."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def comfy_layout(sd):
    """ComfyUI file: fp16, legacy weight-norm names weight_g / weight_v, no prefix."""
    out = {}
    for k, v in sd.items():
        k = k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1", "weight_v")
        out[k] = v.to(torch.float16).contiguous()
    return out


def fp16_rounded(sd):
    return {k: v.to(torch.float16).to(torch.float32) for k, v in sd.items()}


def official_features(model, wav, num_frames):
    """Independent reference 1: transformers' own top-level forward with output_hidden_states, the
    conv features interpolated by a hook on the feature extractor (conv -> interp -> projection -> encoder)."""
    hook = model.feature_extractor.register_forward_hook(
        lambda mod, inp, out: F.interpolate(out, size=num_frames, mode="linear", align_corners=True)
    )
    try:
        with torch.no_grad():
            out = model(wav[None], output_hidden_states=True)
    finally:
        hook.remove()
    return torch.stack(out.hidden_states[1:], dim=2)[0]


def manual_features(model, wav, num_frames):
    """Independent reference 2: the submodules called by hand in the official order."""
    with torch.no_grad():
        conv = model.feature_extractor(wav[None]).transpose(1, 2)                      # [1, T50, C]
        conv = F.interpolate(conv.transpose(1, 2), size=num_frames, mode="linear", align_corners=True).transpose(1, 2)
        h, _ = model.feature_projection(conv)
        enc = model.encoder
        h = enc.layer_norm(h + enc.pos_conv_embed(h))
        outs = []
        for layer in enc.layers:
            h = layer(h)
            h = h[0] if isinstance(h, tuple) else h
            outs.append(h)
    return torch.stack(outs, dim=2)[0]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = randomized(build_wav2vec2(tiny_config()).eval())
    return model


def speech(seconds, sr=16000, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = int(round(seconds * sr))
    t = torch.arange(n) / sr
    return (0.3 * torch.sin(2 * math.pi * 220 * t) * torch.sin(2 * math.pi * 3 * t) + 0.05 * torch.randn(n, generator=g)).float()


def test_features_match_transformers_own_path_and_manual_order(tiny):
    enc = InfiniteTalkAudioEncoder(tiny)
    wav = speech(3.24)
    feats = enc.encode(wav)
    assert feats.shape == (81, 12, 48)
    ref_official = official_features(tiny, wav, 81)
    ref_manual = manual_features(tiny, wav, 81)
    torch.testing.assert_close(ref_official, ref_manual, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(feats, ref_official, atol=1e-5, rtol=1e-5)


def test_interpolation_happens_before_the_transformer(tiny):
    """ComfyUI native runs the transformer at 50 Hz and interpolates the layer outputs afterwards: different numbers."""
    enc = InfiniteTalkAudioEncoder(tiny)
    wav = speech(2.0, seed=3)
    ours = enc.encode(wav, fps=25)
    with torch.no_grad():
        hs = tiny(wav[None], output_hidden_states=True).hidden_states[1:]
    native = torch.stack(hs, dim=2)[0]                                        # [T50, 12, C]
    native = F.interpolate(native.permute(1, 2, 0), size=ours.shape[0], mode="linear", align_corners=True).permute(2, 0, 1)
    assert native.shape == ours.shape
    assert (native - ours).abs().max() > 1e-2


@pytest.mark.parametrize("fps", [25, 16])
@pytest.mark.parametrize("seconds", [0.5, 1.0, 3.24, 4.37])
def test_frame_count_is_int_seconds_times_fps(tiny, fps, seconds):
    enc = InfiniteTalkAudioEncoder(tiny)
    wav = torch.zeros(int(round(seconds * 16000)))
    feats = enc.encode(wav, fps=fps)
    assert feats.shape == (int(wav.numel() / 16000 * fps), 12, 48)


def test_comfyui_file_loads_with_weight_g_v_and_matches_transformers(tmp_path, tiny):
    path = tmp_path / "wav2vec2-chinese-base_fp16.safetensors"
    save_file(comfy_layout(tiny.state_dict()), str(path))
    enc = load_audio_encoder(str(path), num_attention_heads=HEADS)
    ref = reference_model(tiny_config(), fp16_rounded(tiny.state_dict()))
    wav = speech(2.5, seed=5)
    n = int(2.5 * 25)
    torch.testing.assert_close(enc.encode(wav), official_features(ref, wav, n), atol=1e-5, rtol=1e-5)
    assert enc.model.config.num_conv_pos_embeddings == 16 and enc.model.config.num_conv_pos_embedding_groups == 4
    assert enc.model.config.feat_extract_norm == "group" and not enc.model.config.do_stable_layer_norm


def test_hf_folder_with_prefix_and_pretraining_heads(tmp_path, tiny):
    folder = tmp_path / "chinese-wav2vec2-base"
    folder.mkdir()
    cfg = tiny_config()
    cfg.to_json_file(str(folder / "config.json"))
    sd = {f"wav2vec2.{k}": v.clone() for k, v in tiny.state_dict().items()}
    sd["quantizer.codevectors"] = torch.zeros(1, 4, 8)
    sd["project_q.weight"] = torch.zeros(8, 8)
    save_file(sd, str(folder / "model.safetensors"))
    enc = load_audio_encoder(str(folder))
    wav = speech(3.0, seed=7)
    torch.testing.assert_close(enc.encode(wav), official_features(tiny, wav, 75), atol=1e-5, rtol=1e-5)
    # unprefixed keys and parametrization names work too
    save_file({k: v.clone() for k, v in tiny.state_dict().items()}, str(folder / "model.safetensors"))
    enc2 = load_audio_encoder(str(folder))
    torch.testing.assert_close(enc2.encode(wav), official_features(tiny, wav, 75), atol=1e-5, rtol=1e-5)


def test_sdpa_attention_gives_the_same_features(tiny, tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({k: v.clone() for k, v in tiny.state_dict().items()}, str(path))
    wav = speech(2.0, seed=9)
    a = load_audio_encoder(str(path), num_attention_heads=HEADS).encode(wav)
    b = load_audio_encoder(str(path), num_attention_heads=HEADS, attn_implementation="sdpa").encode(wav)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_config_detection_from_shapes_for_real_sizes():
    """Real chinese-wav2vec2-base shapes on the meta device: base config recovered, 12 heads."""
    real = Wav2Vec2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                          feat_extract_norm="group", conv_bias=False, do_stable_layer_norm=False)
    with torch.device("meta"):
        sd = Wav2Vec2Model(real).state_dict()
    sd = comfy_layout({k: v for k, v in sd.items()})
    cfg = detect_wav2vec2_config(sd)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (768, 12, 12, 3072)
    assert cfg.conv_dim == (512,) * 7 and cfg.conv_stride == (5, 2, 2, 2, 2, 2, 2) and cfg.conv_kernel == (10, 3, 3, 3, 3, 2, 2)
    assert (cfg.num_conv_pos_embeddings, cfg.num_conv_pos_embedding_groups) == (128, 16)
    assert cfg.feat_extract_norm == "group" and cfg.conv_bias is False and cfg.do_stable_layer_norm is False


def test_silence_features_are_wav2vec2_of_zeros_and_null_is_zeros(tiny):
    enc = InfiniteTalkAudioEncoder(tiny)
    sil = enc.silence_features(40, fps=25)
    assert sil.shape == (40, 12, 48)
    torch.testing.assert_close(sil, official_features(tiny, torch.zeros(25600), 40), atol=1e-5, rtol=1e-5)
    assert sil.abs().max() > 0  # biases and norms make wav2vec2(zeros) non-zero
    null = null_audio_features(40, 12, 48)
    assert null.shape == sil.shape and torch.count_nonzero(null) == 0


def test_errors_name_the_file_and_key(tmp_path, tiny):
    with pytest.raises(ModelFileError, match="file not found"):
        load_audio_encoder(str(tmp_path / "nope.safetensors"))
    sd = {k: v.clone() for k, v in tiny.state_dict().items()}
    sd.pop("encoder.layers.3.attention.q_proj.weight")
    bad = tmp_path / "bad.safetensors"
    save_file(sd, str(bad))
    with pytest.raises(ModelFileError, match=r"bad\.safetensors.*encoder\.layers\.3\.attention\.q_proj\.weight"):
        load_audio_encoder(str(bad), num_attention_heads=HEADS)
    sd = {k: v.clone() for k, v in tiny.state_dict().items()}
    sd["model.diffusion_model.blocks.0.x"] = torch.zeros(1)
    odd = tmp_path / "odd.safetensors"
    save_file(sd, str(odd))
    with pytest.raises(ModelFileError, match="unexpected key 'model.diffusion_model.blocks.0.x'"):
        load_audio_encoder(str(odd), num_attention_heads=HEADS)
    empty = tmp_path / "folder"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({}))
    with pytest.raises(ModelFileError, match="no model.safetensors"):
        load_audio_encoder(str(empty))
    with pytest.raises(ValueError, match="at least one frame"):
        InfiniteTalkAudioEncoder(tiny).encode(torch.zeros(300), fps=25)
