"""MP4 writing: read back with PyAV (frames, fps, audio, metadata), naming never overwrites, errors."""
import os
import stat

import pytest
import torch

from wanfp4.wan.video_io import OutputError, next_output_path, probe_mp4, write_mp4


def _audio(seconds, sr=16000, channels=1):
    t = torch.arange(int(seconds * sr)) / sr
    return {"waveform": (0.3 * torch.sin(2 * torch.pi * 440 * t)).repeat(1, channels, 1), "sample_rate": sr}


def test_mp4_roundtrip_with_audio_and_metadata(tmp_path):
    frames = torch.rand(33, 48, 64, 3)
    info = write_mp4(frames, str(tmp_path), "clip", fps=16, crf=20, audio=_audio(3.0, channels=2),
                     metadata={"prompt": {"1": {"class_type": "X"}}, "workflow": {"nodes": []}})
    assert os.path.basename(info.path) == "clip_00001.mp4"
    got = probe_mp4(info.path)
    assert got["frames"] == 33 and got["fps"] == 16.0
    assert (got["width"], got["height"]) == (64, 48)
    assert got["codec"] == "h264" and got["pix_fmt"] == "yuv420p" and got["audio_codec"] == "aac"
    # audio trimmed to the video (33/16 s), AAC adds at most one frame of padding
    assert abs(got["audio_seconds"] - 33 / 16) < 0.08
    assert got["metadata"]["prompt"] == '{"1": {"class_type": "X"}}'
    assert got["metadata"]["workflow"] == '{"nodes": []}'


def test_frames_are_encoded_faithfully(tmp_path):
    # smooth content survives crf 0 nearly exactly
    x = torch.linspace(0, 1, 64)
    img = torch.stack([x[None, :].expand(32, 64), x[:32, None].expand(32, 64), torch.full((32, 64), 0.5)], -1)
    info = write_mp4(img[None].repeat(5, 1, 1, 1), str(tmp_path), "q", fps=8, crf=0)
    import av
    import numpy as np

    with av.open(info.path) as c:
        first = next(c.decode(video=0)).to_ndarray(format="rgb24").astype(np.float32) / 255
    assert abs(first - img.numpy()).mean() < 0.02


def test_never_overwrites_and_counts_up(tmp_path):
    f = torch.rand(5, 16, 16, 3)
    a = write_mp4(f, str(tmp_path), "sub/v", fps=8).path
    b = write_mp4(f, str(tmp_path), "sub/v", fps=8).path
    assert a != b and os.path.basename(b) == "v_00002.mp4"
    (tmp_path / "sub" / "v_00007.mp4").write_bytes(b"user file")
    c = write_mp4(f, str(tmp_path), "sub/v", fps=8).path
    assert os.path.basename(c) == "v_00008.mp4"
    assert (tmp_path / "sub" / "v_00007.mp4").read_bytes() == b"user file"
    assert not [p for p in os.listdir(tmp_path / "sub") if p.endswith(".part")]
    assert next_output_path(str(tmp_path), "sub/v") .endswith("v_00009.mp4")


def test_alpha_gray_and_odd_sizes(tmp_path):
    assert write_mp4(torch.rand(3, 15, 17, 4), str(tmp_path), "a", fps=8).width == 16
    assert write_mp4(torch.rand(3, 16, 16, 1), str(tmp_path), "g", fps=8).height == 16


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="images"):
        write_mp4(torch.rand(0, 16, 16, 3), str(tmp_path), "x")
    with pytest.raises(ValueError, match="crf"):
        write_mp4(torch.rand(2, 16, 16, 3), str(tmp_path), "x", crf=99)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_unwritable_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    with pytest.raises(OutputError, match="cannot be written"):
        write_mp4(torch.rand(2, 16, 16, 3), str(ro), "x")


def test_output_path_that_is_a_file(tmp_path):
    (tmp_path / "blocker").write_text("x")
    with pytest.raises(OutputError, match="cannot be written"):
        write_mp4(torch.rand(2, 16, 16, 3), str(tmp_path / "blocker"), "x")
