"""ComfyUI AUDIO handling: validation, mono/resampling, loudness, short-audio padding, windows."""
import logging
import math

import numpy as np
import pytest
import pyloudnorm
import torch

from wanfp4.wan.audio_encoder import InfiniteTalkAudioEncoder, build_wav2vec2
from wanfp4.wan.audio_input import (
    AudioInputError,
    audio_from_comfy,
    loudness_normalize,
    speech_waveform,
    video_frame_count,
)
from wanfp4.wan.audio_resample import resample
from wanfp4.wan.audio_windows import gather_audio_window, mirror_pad_features, pad_short_features, window_indices


def tone(sr, seconds, freqs=(220.0, 1300.0), amp=0.2):
    t = torch.arange(int(round(sr * seconds)), dtype=torch.float64) / sr
    x = sum(torch.sin(2 * math.pi * f * t) for f in freqs) * amp
    x = x * (0.6 + 0.4 * torch.sin(2 * math.pi * 1.5 * t))  # speech-like loudness movement
    return x.float(), t


# ----------------------------------------------------------------------------- resampler

@pytest.mark.parametrize("orig,new", [(44100, 16000), (48000, 16000), (22050, 16000), (8000, 16000), (16000, 44100), (44101, 16000)])
def test_resampler_reproduces_band_limited_sines(orig, new):
    x, _ = tone(orig, 1.0)
    y = resample(x, orig, new)
    assert y.shape[-1] == math.ceil(x.numel() * new / orig)
    ty = torch.arange(y.numel(), dtype=torch.float64) / new
    ref = sum(torch.sin(2 * math.pi * f * ty) for f in (220.0, 1300.0)) * 0.2 * (0.6 + 0.4 * torch.sin(2 * math.pi * 1.5 * ty))
    inner = slice(new // 20, -new // 20)  # away from the zero-padded edges
    assert (y - ref.float())[inner].abs().max() < 1e-4


def test_resampler_removes_content_above_the_new_nyquist_and_paths_agree():
    x, _ = tone(44100, 0.5, freqs=(10000.0,), amp=0.5)  # 10 kHz > 8 kHz Nyquist of 16 kHz
    y = resample(x, 44100, 16000)
    assert y[800:-800].abs().max() < 1e-3
    z, _ = tone(44100, 0.5)
    torch.testing.assert_close(resample(z, 44100, 16000), resample(z, 44100, 16000, force_direct=True), atol=2e-6, rtol=0)


def test_resampler_matches_scipy_resample_poly_when_available():
    signal = pytest.importorskip("scipy.signal")
    x, _ = tone(44100, 1.0)
    ours = resample(x, 44100, 16000).numpy()
    ref = signal.resample_poly(x.numpy().astype(np.float64), 160, 441)
    assert np.abs(ours[800:-800] - ref[800:-800]).max() < 2e-3


# ----------------------------------------------------------------------------- AUDIO dict and loudness

def comfy_audio(wave, sr):
    return {"waveform": wave, "sample_rate": sr}


def test_stereo_44k_gives_same_waveform_as_mono_16k():
    x44, _ = tone(44100, 2.0)
    stereo = torch.stack([x44 * 0.5, x44 * 1.5])[None]           # mean of channels == x44
    mono16 = resample(x44, 44100, 16000)[None, None]
    a = speech_waveform(comfy_audio(stereo, 44100))
    b = speech_waveform(comfy_audio(mono16, 16000))
    assert a.shape == b.shape
    assert (a - b).abs().max() < 1e-5


def test_stereo_44k_gives_same_features_as_mono_16k():
    from transformers import Wav2Vec2Config

    cfg = Wav2Vec2Config(hidden_size=48, num_hidden_layers=12, num_attention_heads=4, intermediate_size=96,
                         feat_extract_norm="group", conv_bias=False, do_stable_layer_norm=False,
                         num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, conv_dim=(32,) * 7)
    enc = InfiniteTalkAudioEncoder(build_wav2vec2(cfg))
    x16, _ = tone(16000, 3.3)
    # an independently made 44.1 kHz stereo version of the same band-limited signal
    x44, _ = tone(44100, 3.3)
    stereo = torch.stack([x44, x44])[None]
    f_stereo = enc.encode_audio(comfy_audio(stereo, 44100), fps=25)
    f_mono = enc.encode_audio(comfy_audio(x16[None, None], 16000), fps=25)
    assert f_stereo.shape == f_mono.shape == (82, 12, 48)
    rel = (f_stereo - f_mono).abs().amax(dim=(1, 2)) / f_mono.abs().max()
    # resampling tolerance: the clip edges ring (band-limited resampling of a cut signal), the interior does not
    assert rel.max() < 1e-2
    assert rel[10:-10].max() < 1e-4  # beyond the 16-frame positional conv reach of the edges


def test_loudness_normalised_to_minus_23_lufs_and_silence_untouched():
    x, _ = tone(16000, 3.0, amp=0.02)
    y = loudness_normalize(x, 16000)
    meter = pyloudnorm.Meter(16000)
    before = meter.integrated_loudness(x.double().numpy())
    after = meter.integrated_loudness(y.double().numpy())
    assert abs(before + 23) > 5
    assert abs(after + 23) < 0.5
    silence = torch.zeros(48000)
    assert torch.equal(loudness_normalize(silence, 16000), silence)


def test_speech_waveform_is_normalised_at_16k():
    x, _ = tone(44100, 2.0, amp=0.5)
    wav = speech_waveform(comfy_audio(x[None, None].repeat(1, 2, 1), 44100))
    assert abs(pyloudnorm.Meter(16000).integrated_loudness(wav.double().numpy()) + 23) < 0.5
    raw = speech_waveform(comfy_audio(x[None, None], 44100), normalize_loudness=False)
    assert (raw - resample(x, 44100, 16000)).abs().max() < 1e-6


@pytest.mark.parametrize(
    "audio,match",
    [
        (None, "expected a ComfyUI AUDIO dict"),
        ({"waveform": torch.zeros(1, 1, 0), "sample_rate": 16000}, "empty"),
        ({"waveform": torch.zeros(1, 0, 100), "sample_rate": 16000}, "empty"),
        ({"waveform": torch.zeros(1, 1, 100), "sample_rate": 0}, "invalid sample_rate"),
        ({"waveform": torch.zeros(1, 1, 100), "sample_rate": 44100.5}, "invalid sample_rate"),
        ({"waveform": torch.zeros(1, 1, 100), "sample_rate": "44100"}, "invalid sample_rate"),
        ({"waveform": torch.zeros(1, 1, 1, 100), "sample_rate": 16000}, "batch, channels, samples"),
        ({"waveform": torch.full((1, 1, 100), float("nan")), "sample_rate": 16000}, "NaN"),
    ],
)
def test_bad_audio_inputs_raise_clear_errors_naming_the_input(audio, match):
    with pytest.raises(AudioInputError, match=match) as e:
        audio_from_comfy(audio, name="speech_audio")
    assert "speech_audio" in str(e.value)


def test_audio_shapes_accepted():
    w, sr = audio_from_comfy({"waveform": torch.zeros(100), "sample_rate": 8000})
    assert w.shape == (1, 1, 100) and sr == 8000


def test_short_audio_gets_no_loudness_crash():
    x, _ = tone(16000, 0.2)
    assert torch.equal(loudness_normalize(x, 16000), x)


# ----------------------------------------------------------------------------- frames, windows, padding

def test_video_frame_count():
    assert video_frame_count(51840, 25) == 81
    assert video_frame_count(51840, 16) == 51
    assert video_frame_count(16000 * 10 - 1, 25) == 249


def test_window_indices_clamp_and_gather():
    T, L, C = 100, 12, 3
    feats = torch.arange(T, dtype=torch.float32)[:, None, None].expand(T, L, C).clone()
    win = gather_audio_window(feats, start=0)
    assert win.shape == (81, 5, L, C)
    assert win[0, :, 0, 0].tolist() == [0, 0, 0, 1, 2]
    assert win[40, :, 0, 0].tolist() == [38, 39, 40, 41, 42]
    last = gather_audio_window(feats, start=60)
    assert last[-1, :, 0, 0].tolist() == [99, 99, 99, 99, 99]  # 140 + offsets clamped to T-1
    assert window_indices(72, T)[0].tolist() == [70, 71, 72, 73, 74]


def test_mirror_padding_matches_official_formula():
    feats = torch.arange(100, dtype=torch.float32)[:, None, None]
    end_idx = 72 + 81  # second window of a 100-frame clip
    out = mirror_pad_features(feats, end_idx)
    miss = end_idx - 100 + 3
    expected = torch.cat([feats, torch.flip(feats[-miss:], dims=[0])])
    assert torch.equal(out, expected)


def test_short_audio_is_padded_with_reversed_tail_and_warns(caplog):
    logger = logging.getLogger("wanfp4")
    logger.addHandler(caplog.handler)
    try:
        feats = torch.arange(30, dtype=torch.float32)[:, None, None].expand(30, 12, 2).clone()
        padded, n = pad_short_features(feats, 81, name="speech_audio")
    finally:
        logger.removeHandler(caplog.handler)
    assert n == 30 and padded.shape[0] >= 84
    assert padded[30:60, 0, 0].tolist() == list(range(29, -1, -1))   # time-reversed tail
    assert padded[60:84, 0, 0].tolist() == list(range(0, 24))         # reflected back
    assert any("[WARN]" in r.getMessage() and "speech_audio" in r.getMessage() for r in caplog.records)
    long = torch.zeros(200, 12, 2)
    same, n2 = pad_short_features(long)
    assert same is long and n2 == 200
    with pytest.raises(ValueError, match="no audio frames"):
        pad_short_features(torch.zeros(0, 12, 2))
