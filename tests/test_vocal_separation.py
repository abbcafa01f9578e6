"""MelBand RoFormer vocal isolation on tiny random models written in the real (Kim / Kijai) key layout."""
import math

import pytest
import torch
from safetensors.torch import save_file

bs_roformer = pytest.importorskip("bs_roformer")

from wanfp4.wan.safetensors_io import ModelFileError  # noqa: E402
from wanfp4.wan.vocal_separation import (  # noqa: E402
    MelBandConfig,
    VocalSeparator,
    detect_melband_config,
    find_model_file,
    load_vocal_separator,
)

TINY = dict(dim=8, depth=2, heads=2, dim_head=4, num_bands=60, time_transformer_depth=1, freq_transformer_depth=1,
            mask_estimator_depth=2, stereo=True)


def package_model(**kw):
    """The reference network straight from the package, with Kim's STFT settings."""
    cfg = MelBandConfig(**{**TINY, **kw})
    torch.manual_seed(0)
    m = bs_roformer.MelBandRoformer(**cfg.model_kwargs()).eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if not name.endswith("rotary_embed.freqs"):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return m, cfg


def write(tmp_path, model, name="MelBandRoformer_fp16.safetensors", dtype=torch.float16, drop_rotary=False):
    sd = {k: v.to(dtype).clone().contiguous() for k, v in model.state_dict().items()
          if not (drop_rotary and k.endswith("rotary_embed.freqs"))}
    path = tmp_path / name
    save_file(sd, str(path))
    return path


def identity_mask(model):
    """Mask estimators output the complex mask 1 + 0i for every bin: vocals == input."""
    with torch.no_grad():
        for est in model.mask_estimators:
            for mlp in est.to_freqs:
                last = mlp[0][-1]
                half = last.out_features // 2
                last.weight.zero_()
                bias = torch.zeros(last.out_features)
                bias[0:half:2] = 1.0          # real parts of the GLU value half
                bias[half:] = 30.0             # sigmoid(gate) ~ 1
                last.bias.copy_(bias)
    return model


def music(sr, seconds, channels=2, seed=0, noise=0.01):
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(round(sr * seconds))) / sr
    x = 0.3 * torch.sin(2 * math.pi * 330 * t) + 0.1 * torch.sin(2 * math.pi * 2500 * t)
    x = x * (0.5 + 0.5 * torch.sin(2 * math.pi * 0.7 * t))
    return torch.stack([x * (1 + 0.2 * c) for c in range(channels)]) + noise * torch.randn(channels, t.numel(), generator=g)


def test_config_detected_from_shapes_and_output_equals_package_model(tmp_path):
    ref, cfg = package_model()
    path = write(tmp_path, ref, drop_rotary=True)
    sep = load_vocal_separator(path.name, folders=[tmp_path / "empty", tmp_path])
    assert sep.config == cfg
    x = music(44100, 1.5)
    ours = sep._run(x, stem=0)
    with torch.no_grad():
        ref16 = bs_roformer.MelBandRoformer(**cfg.model_kwargs()).eval()
        ref16.load_state_dict({k: v.to(torch.float16).float() for k, v in ref.state_dict().items()})
        expected = ref16(x[None])[0]
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_real_kim_shapes_are_detected():
    """Kim's vocals model (dim 384, depth 6, 60 bands, stereo) built on the meta device: shapes -> config."""
    cfg = MelBandConfig()
    with torch.device("meta"):
        sd = bs_roformer.MelBandRoformer(**cfg.model_kwargs()).state_dict()
    assert detect_melband_config(sd) == cfg


@pytest.mark.parametrize("sr,channels,seconds", [(44100, 2, 1.6), (16000, 1, 1.37), (48000, 2, 0.01)])
def test_output_has_input_length_rate_and_channels(tmp_path, sr, channels, seconds):
    ref, _ = package_model()
    sep = load_vocal_separator(str(write(tmp_path, ref)))
    wave = music(sr, seconds, channels)[None]
    out = sep.isolate_vocals({"waveform": wave, "sample_rate": sr}, chunk_seconds=0.5, overlap_seconds=0.15)
    assert out["sample_rate"] == sr
    assert out["waveform"].shape == wave.shape
    assert torch.isfinite(out["waveform"]).all()


def test_identity_mask_returns_the_input_through_resampling_chunking_and_stft(tmp_path):
    ref, _ = package_model()
    sep = load_vocal_separator(str(write(tmp_path, identity_mask(ref), dtype=torch.float32)))
    wave = music(44100, 1.6)[None]
    out = sep.isolate_vocals({"waveform": wave, "sample_rate": 44100}, chunk_seconds=0.5, overlap_seconds=0.15)
    assert (out["waveform"] - wave).abs().max() < 1e-4
    wave16 = music(16000, 1.6, channels=1, noise=0.0)[None]  # band-limited: no content at the band edge
    out16 = sep.isolate_vocals({"waveform": wave16, "sample_rate": 16000}, chunk_seconds=0.5, overlap_seconds=0.15)
    # 16k -> 44.1k -> 16k round trip: exact inside the band, edges ring
    assert (out16["waveform"] - wave16)[..., 400:-400].abs().max() < 1e-3


def test_chunked_equals_unchunked_for_a_frame_local_model(tmp_path):
    """Without time attention every STFT frame is processed on its own, so chunking must not change
    the result: chunk starts sit on hop multiples and chunk edges get zero weight. Tolerance 1e-5."""
    ref, _ = package_model(time_transformer_depth=0)
    sep = load_vocal_separator(str(write(tmp_path, ref, dtype=torch.float32)))
    x = music(44100, 1.6)
    whole = sep.separate(x, chunk_seconds=10.0, overlap_seconds=1.0)
    chunked = sep.separate(x, chunk_seconds=0.5, overlap_seconds=0.15)
    assert whole.abs().max() > 1e-2
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)


def test_chunk_memory_is_fixed(tmp_path, monkeypatch):
    ref, _ = package_model()
    sep = VocalSeparator(ref, MelBandConfig(**TINY))
    seen = []
    real_run = sep._run
    monkeypatch.setattr(sep, "_run", lambda piece, stem: seen.append(piece.shape[-1]) or real_run(piece, stem))
    sep.separate(music(44100, 4.0), chunk_seconds=0.5, overlap_seconds=0.15)
    chunk = round(0.5 * 44100 / 441) * 441
    assert len(seen) > 4 and max(seen) == chunk


def test_missing_file_names_folders_and_bad_files_fail_clearly(tmp_path):
    a, b = tmp_path / "models" / "MelBandRoFormer", tmp_path / "models" / "audio_encoders"
    with pytest.raises(ModelFileError) as e:
        find_model_file("MelBandRoformer_fp16.safetensors", [a, b])
    assert str(a) in str(e.value) and str(b) in str(e.value)
    ref, _ = package_model()
    sd = {k: v.clone() for k, v in ref.state_dict().items()}
    sd.pop("layers.1.1.layers.0.1.net.1.weight")
    path = tmp_path / "broken.safetensors"
    save_file(sd, str(path))
    with pytest.raises(ModelFileError, match=r"broken\.safetensors.*layers\.1\.1\.layers\.0\.1\.net\.1\.weight"):
        load_vocal_separator(str(path))
    save_file({"encoder.layer_norm.weight": torch.ones(4)}, str(tmp_path / "w2v.safetensors"))
    with pytest.raises(ModelFileError, match="not a MelBand RoFormer"):
        load_vocal_separator(str(tmp_path / "w2v.safetensors"))
    sep = VocalSeparator(ref, MelBandConfig(**TINY))
    with pytest.raises(ValueError, match="overlap_seconds"):
        sep.separate(music(44100, 3.0), chunk_seconds=0.5, overlap_seconds=0.05)
