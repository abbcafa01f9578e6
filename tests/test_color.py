"""Colour correction: Lab conversion against known values, statistics transfer, blending."""
import torch

from wanfp4.wan.color import lab_to_rgb, match_colors, rgb_to_lab


def test_lab_reference_values():
    # sRGB primaries in CIE Lab (D65), standard published values
    rgb = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]],
                       dtype=torch.float64)
    expected = torch.tensor([[100.0, 0.0, 0.0], [53.24, 80.09, 67.20], [87.73, -86.18, 83.18],
                             [32.30, 79.19, -107.86], [0.0, 0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(rgb_to_lab(rgb), expected, atol=0.05)


def test_lab_roundtrip():
    x = torch.rand(4, 8, 8, 3, dtype=torch.float64)
    assert (lab_to_rgb(rgb_to_lab(x)) - x).abs().max() < 1e-9


def test_transfer_moves_statistics_to_reference():
    torch.manual_seed(1)
    ref = torch.rand(32, 32, 3) * 0.4 + 0.3
    frames = torch.rand(3, 16, 16, 3) * 0.3
    out = match_colors(frames, ref, 1.0)
    lab_o = rgb_to_lab(out.double()).reshape(3, -1, 3)
    lab_r = rgb_to_lab(ref.double()).reshape(-1, 3)
    assert (lab_o.mean(1) - lab_r.mean(0)).abs().max() < 1.0
    assert (lab_o.std(1) - lab_r.std(0)).abs().max() < 1.5


def test_strength_blends_linearly_and_zero_is_identity():
    ref = torch.rand(8, 8, 3)
    frames = torch.rand(2, 8, 8, 3)
    assert match_colors(frames, ref, 0.0) is frames
    full = match_colors(frames, ref, 1.0)
    half = match_colors(frames, ref, 0.5)
    assert torch.allclose(half, 0.5 * frames + 0.5 * full, atol=1e-6)


def test_chunked_matching_equals_whole_video():
    """Frames go through in chunks (VRAM); per-frame statistics make that exact."""
    g = torch.Generator().manual_seed(3)
    frames = torch.rand(7, 12, 10, 3, generator=g) * torch.linspace(0.3, 1.0, 7)[:, None, None, None]
    ref = torch.rand(9, 8, 3, generator=g)
    whole = match_colors(frames, ref, 0.8)
    for chunk in (1, 12 * 10 * 3 * 2, 12 * 10 * 3 * 3 + 5):
        assert torch.allclose(match_colors(frames, ref, 0.8, chunk_elements=chunk), whole, atol=1e-6)


def test_chunked_matching_keeps_the_working_set_small():
    """The float64 Lab temporaries of a whole video were the low-VRAM run's peak on the H200 (3.5 GiB at
    81 x 720 x 640); in chunks the extra memory is a few chunk-sized buffers plus the output."""
    from memory_tracker import PeakTracker

    frames = torch.rand(64, 24, 20, 3)
    ref = torch.rand(32, 32, 3)
    video = frames.numel() * frames.element_size()
    frame = video // frames.shape[0]
    with PeakTracker([frames, ref]) as whole:
        match_colors(frames, ref, 1.0, chunk_elements=frames.numel())
    with PeakTracker([frames, ref]) as chunked:
        match_colors(frames, ref, 1.0, chunk_elements=frames[0].numel())
    assert whole.peak > 10 * video                     # float64 temporaries of every frame at once
    assert chunked.peak < video + 25 * frame, chunked.peak / frame   # the output + one frame's temporaries
