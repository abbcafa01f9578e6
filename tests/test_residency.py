"""Encoders leave the GPU by re-binding their kept host weights (no copy back, no new host memory):
checked with the meta device standing in for the GPU, on a plain module and on the real umT5 / CLIP
wrappers, whose outputs stay the same."""
import torch
import torch.nn as nn

from wanfp4.bench.seed_models import build_clip_vision, build_text_encoder
from wanfp4.wan.residency import HostResidency


def _ptrs(m):
    return [t.data_ptr() for t in list(m.parameters()) + list(m.buffers())]


def test_round_trip_rebinds_the_same_host_tensors():
    m = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
    before = _ptrs(m)
    r = HostResidency([m])
    r.to("meta")
    assert all(t.is_meta for t in list(m.parameters()) + list(m.buffers()))
    r.to("cpu")
    assert _ptrs(m) == before and r.device.type == "cpu"


def test_text_and_clip_encoders_offload_without_copies():
    t5 = build_text_encoder("cpu", torch.float32, tiny=True)
    want, _ = t5.encode(["a person talks"])
    body = t5._body()
    before = [p.data_ptr() for m in body for p in m.parameters()]
    t5.to("meta")
    assert all(p.is_meta for m in body for p in m.parameters())
    t5.offload()
    assert [p.data_ptr() for m in body for p in m.parameters()] == before
    got, _ = t5.encode(["a person talks"])
    assert torch.equal(got, want)

    clip = build_clip_vision("cpu", tiny=True)
    img = torch.rand(1, 40, 30, 3)
    want = clip.encode_image(img)
    before = _ptrs(clip.model)
    clip._residency.to("meta")
    clip.offload()
    assert _ptrs(clip.model) == before and torch.equal(clip.encode_image(img), want)
