"""umT5 streamed one block at a time (wan/residency.py StreamedBlocks): the same output as the resident
encoder, one block off the host at a time (the meta device stands in for the GPU), the kept host
tensors re-bound afterwards, the activation formula of the plan against tracked block calls, and the
decision without a whole-run plan (free VRAM)."""
import pytest
import torch
import torch.nn as nn

from wanfp4.bench.seed_models import build_text_encoder
from wanfp4.wan import hw_tuning as hw
from wanfp4.wan import memory_sizes as ms
from wanfp4.wan import services
from wanfp4.wan.residency import HostResidency, StreamedBlocks

transformers = pytest.importorskip("transformers")
PROMPTS = ["a person talks to the camera", "worst quality, blurred details"]
GiB = hw.GiB


def _ptrs(modules):
    return [p.data_ptr() for m in modules for p in m.parameters()]


def _hooks(modules):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in modules)


def test_streamed_encode_equals_resident_and_rebinds_host_tensors(monkeypatch):
    t5 = build_text_encoder("cpu", torch.float32, tiny=True)
    blocks = list(t5.model.encoder.block)
    want, lengths = t5.encode(PROMPTS)
    before = _ptrs(blocks)
    moves = []
    real_to = HostResidency.to
    monkeypatch.setattr(HostResidency, "to", lambda self, d: (moves.append((id(self.modules[0]), str(d))),
                                                              real_to(self, d))[1])
    got, got_lengths = t5.encode(PROMPTS, stream=True)
    assert torch.equal(got, want) and got_lengths == lengths
    # each block visits the device and goes back before the next one comes
    visits = [(m, d) for m, d in moves if m in {id(b) for b in blocks}]
    assert visits[: 2 * len(blocks)] == [(id(b), d) for b in blocks for d in ("cpu", "cpu")]
    assert _ptrs(blocks) == before and _hooks(blocks) == 0 and t5._residency.device.type == "cpu"
    again, _ = t5.encode(PROMPTS, stream=True)                   # the streamer is reused
    assert torch.equal(again, want) and _hooks(blocks) == 0


def test_streamed_blocks_put_one_block_on_the_device_at_a_time():
    torch.manual_seed(0)
    seq = nn.Sequential(*[nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8)) for _ in range(4)])
    before = _ptrs(seq)
    sb = StreamedBlocks(list(seq))
    seen = []
    for blk in seq:   # registered before the streamer's hooks: runs while the block is still there
        blk.register_forward_hook(lambda m, _i, _o: seen.append((sb.on_device(), next(m.parameters()).is_meta)))
    with sb.streaming("meta"):
        out = seq(torch.randn(2, 8, device="meta"))
    assert out.is_meta and seen == [(1, True)] * 4
    assert sb.on_device() == 0 and _ptrs(seq) == before and all(p.device.type == "cpu" for p in seq.parameters())
    with pytest.raises(RuntimeError):
        with sb.streaming("meta"):
            seq[0](torch.randn(2, 8, device="meta"))
            raise RuntimeError("interrupted")
    assert sb.on_device() == 0 and _ptrs(seq) == before and sum(len(b._forward_hooks) for b in seq) == 4


@pytest.mark.parametrize("d,heads,d_kv,d_ff,tokens,batch", [
    (256, 8, 32, 640, 256, 2),      # attention-bound
    (256, 16, 16, 640, 512, 2),     # long prompts: scores dominate
    (128, 4, 32, 1024, 128, 1),     # FFN-bound
    (512, 8, 64, 1280, 64, 2),      # short prompts, wide model
])
def test_t5_activation_formula_bounds_a_tracked_block(d, heads, d_kv, d_ff, tokens, batch):
    from memory_tracker import PeakTracker

    cfg = transformers.UMT5Config(vocab_size=64, d_model=d, d_kv=d_kv, num_heads=heads, d_ff=d_ff, num_layers=1,
                                  relative_attention_num_buckets=32, dropout_rate=0.0, feed_forward_proj="gated-gelu",
                                  is_encoder_decoder=False, use_cache=False)
    model = transformers.UMT5EncoderModel(cfg).to(torch.bfloat16).eval()
    x = torch.randn(batch, tokens, d).bfloat16()
    mask = torch.ones(batch, tokens, dtype=torch.long)
    mask[1:, tokens // 2:] = 0
    with torch.no_grad(), PeakTracker(list(model.parameters())) as tr:
        model(inputs_embeds=x, attention_mask=mask)
    predicted = ms.t5_activation_bytes(batch, tokens, d, heads * d_kv, heads, d_ff, 2)
    assert tr.peak <= predicted <= 1.4 * tr.peak, (tr.peak, predicted)


def test_umt5_xxl_sizes_match_the_real_block():
    cfg = transformers.UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, num_heads=64, d_ff=10240, num_layers=1,
                                  relative_attention_num_buckets=32, feed_forward_proj="gated-gelu",
                                  is_encoder_decoder=False)
    with torch.device("meta"):
        block = transformers.UMT5EncoderModel(cfg).encoder.block[0]
    assert ms.T5_BLOCK_BYTES == sum(p.numel() for p in block.parameters()) * 2
    streamed = ms.t5_streamed_bytes()
    assert ms.T5_BLOCK_BYTES < streamed < 0.8 * GiB and streamed * 10 < ms.ENCODER_BYTES["t5"]


def test_without_a_plan_the_free_vram_decides():
    t5 = build_text_encoder("cpu", torch.float32, tiny=True)
    assert hw.text_encoder_streams(t5)[0] is False                   # CPU: nothing moves
    assert hw.text_encoder_streams(t5, "on")[0] is True
    t5.device = torch.device("cuda")                                 # a GPU encoder with its blocks on the host
    sz = t5.sizes()
    assert sz["layers"] == 2 and sz["blocks"] >= 2 * sz["largest_block"] > 0
    tight = hw.GpuInfo.simulate("rtx3060", free_bytes=sz["largest_block"] * 3 // 2)
    roomy = hw.GpuInfo.simulate("rtx3060", free_bytes=8 * GiB)
    stream, why = hw.text_encoder_streams(t5, gpu=tight)
    assert stream and "one block at a time" in why
    assert hw.text_encoder_streams(t5, gpu=roomy) == (False, "whole on the GPU for the encode: it fits")
    assert hw.text_encoder_streams(t5, "off", gpu=tight)[0] is False
    with pytest.raises(ValueError, match="t5_streaming"):
        hw.text_encoder_streams(t5, "sometimes")


def test_encode_text_follows_the_encoders_setting():
    t5 = build_text_encoder("cpu", torch.float32, tiny=True)
    want = services.encode_text(t5, *PROMPTS)
    assert t5._streamed is None                                      # auto on a CPU: resident path
    t5.streaming = "on"
    got = services.encode_text(t5, *PROMPTS)
    assert t5._streamed is not None
    assert torch.equal(got["positive"], want["positive"]) and torch.equal(got["negative"], want["negative"])
    assert got["lengths"] == want["lengths"]
    t5.streaming = "auto"
    services.encode_text(t5, *PROMPTS, stream=True)                  # an explicit choice wins


def test_text_encode_node_blocks_on_gpu_choice(monkeypatch):
    """The node's `blocks_on_gpu` reaches the encoder: "one at a time" streams, "all" does not, "auto" asks
    the plan (nothing moves on a CPU); every choice gives the same embeddings; a bad value names the input."""
    from wanfp4.nodes.encode import WanFP4TextEncode

    t5 = build_text_encoder("cpu", torch.float32, tiny=True)
    calls = []
    real = t5.encode
    def encode(prompts, stream=False):
        calls.append(stream)
        return real(prompts, stream=stream)
    monkeypatch.setattr(t5, "encode", encode)
    node = WanFP4TextEncode()
    outs = [node.encode(t5, *PROMPTS, blocks_on_gpu=choice)[0] for choice in ("one at a time", "all", "auto")]
    assert calls == [True, False, False]
    assert all(torch.equal(o["positive"], outs[0]["positive"]) and torch.equal(o["negative"], outs[0]["negative"])
               for o in outs)
    with pytest.raises(ValueError, match="blocks_on_gpu"):
        node.encode(t5, *PROMPTS, blocks_on_gpu="half")
