"""umT5 streamed on a CUDA GPU (skipped without one): bit-equal to the resident encode, and its GPU
peak is one block plus activations (the plan's t5_streamed_bytes), not the whole encoder."""
import pytest
import torch

from wanfp4.bench.seed_models import build_text_encoder
from wanfp4.wan import hw_tuning as hw
from wanfp4.wan import memory_sizes as ms

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
PROMPTS = ["A woman is talking to the camera, natural light.", "worst quality, blurred details, subtitles"]


def _peak_of(fn):
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    return out, torch.cuda.max_memory_allocated() - base


def test_streamed_equals_resident_with_a_one_block_peak(monkeypatch):
    from wanfp4.bench import seed_models as sm

    monkeypatch.setattr(sm, "UMT5_TINY", dict(vocab_size=256, d_model=1024, d_kv=64, num_heads=16, d_ff=2816,
                                              num_layers=8))
    t5 = build_text_encoder("cuda", torch.bfloat16, tiny=True)
    t5.offload()
    want, _ = _peak_of(lambda: t5.encode(PROMPTS)[0].clone())
    t5.offload()
    sz = t5.sizes()
    got, peak = _peak_of(lambda: t5.encode(PROMPTS, stream=True)[0].clone())
    assert torch.equal(got, want)
    assert all(p.device.type == "cpu" for p in t5.model.encoder.block.parameters())
    c = t5.model.config
    predicted = ms.t5_streamed_bytes(sz["largest_block"] + sz["norm"], d_model=c.d_model, inner=c.num_heads * c.d_kv,
                                     heads=c.num_heads, d_ff=c.d_ff)
    assert peak <= predicted * 1.2 and peak < sz["blocks"] / 2, (peak, predicted, sz)
