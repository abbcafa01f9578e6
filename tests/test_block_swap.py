"""Block swap on CPU ("cpu-as-device": the same slot ring with synchronous copies): outputs bit-exact
against the unswapped model, swapped tensors never resident outside their compute, slots reused,
quantized blocks moved in stored form (bytes checked against quant.linear_storage_bytes), pin cap
fallback, embedding offload, uninstall and the CPU no-op path."""
import copy
import gc
from dataclasses import replace

import pytest
import torch
from log_capture import captured_lines

from wanfp4 import quant
from wanfp4.wan import block_swap as bs
from wanfp4.wan.block_swap import BlockSwapper, apply_block_swap
from wanfp4.wan.config import TINY_INFINITETALK
from wanfp4.wan.model import WanModel, build_model

CFG = replace(TINY_INFINITETALK, num_layers=6)
A = CFG.audio


def inputs(b=1, f=3, h=4, w=6):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(b, 16, f, h, w, generator=g)
    y = torch.randn(b, 20, f, h, w, generator=g)
    ctx = torch.randn(b, 7, CFG.text_dim, generator=g)
    clip = torch.randn(b, 257, CFG.image_dim, generator=g)
    audio = torch.randn(b, 1, 4 * (f - 1) + 1, 5, A.blocks, A.channels, generator=g)
    return (x, torch.full((b,), 600.0), ctx), dict(clip_fea=clip, y=y, audio=audio)


def run(model):
    args, kw = inputs()
    with torch.no_grad():
        return model(*args, **kw)


@pytest.fixture(scope="module")
def base():
    return build_model(CFG, "cpu", torch.float32, seed=5).eval()


def in_range(t: torch.Tensor, buf: torch.Tensor) -> bool:
    start = buf.data_ptr()
    return start <= t.data_ptr() and t.data_ptr() + t.numel() * t.element_size() <= start + buf.numel()


def block_tensors(block):
    return [t for m in block.modules() for t in list(m._parameters.values()) + list(m._buffers.values()) if t is not None]


@pytest.mark.parametrize("n,prefetch", [(1, 1), (3, 1), (6, 1), (5, 2)])
def test_swapped_forward_is_bit_exact(base, n, prefetch):
    ref = run(base)
    model = copy.deepcopy(base)
    sw = BlockSwapper(model, n, "cpu", prefetch=prefetch).install()
    assert sw.num_slots == min(prefetch + 1, n)
    out1 = run(model)
    with torch.inference_mode():          # ComfyUI samples under inference_mode
        args, kw = inputs()
        out2 = model(*args, **kw)
    assert torch.equal(out1, ref) and torch.equal(out2, ref)
    assert sw.stats.forwards == 2 and sw.stats.block_copies == 2 * n


def test_swapped_tensors_point_into_slots_only_during_compute(base):
    model = copy.deepcopy(base)
    sw = BlockSwapper(model, 4, "cpu").install()
    slot_ptrs = [s.data_ptr() for s in sw.slots]
    seen = {}

    def probe(i):
        def hook(module, args):
            k = i - sw.first_swapped
            s = k % sw.num_slots
            ts = block_tensors(module)
            assert all(in_range(t, sw.slots[s]) for t in ts), f"block {i}: tensor outside slot {s}"
            seen.setdefault(i, []).append([t.data_ptr() for t in ts])
        return hook

    hooks = [model.blocks[i].register_forward_pre_hook(probe(i)) for i in range(2, 6)]
    ref = run(base)
    assert torch.equal(run(model), ref) and torch.equal(run(model), ref)
    for h in hooks:
        h.remove()
    # at rest: every swapped tensor is a view into its block's host buffer, none in a slot
    for k, store in enumerate(sw.stores):
        for t in block_tensors(model.blocks[sw.first_swapped + k]):
            assert t.device.type == "cpu" and in_range(t, store.host)
            assert not any(in_range(t, s) for s in sw.slots)
    # slots allocated once and reused: blocks sharing a slot use the very same addresses
    assert [s.data_ptr() for s in sw.slots] == slot_ptrs
    assert seen[2] == seen[4] and seen[3] == seen[5] and seen[2][0] == seen[2][1]
    assert seen[2][0] != seen[3][0]
    # resident blocks are untouched
    assert all(not in_range(t, s) for t in block_tensors(model.blocks[0]) for s in sw.slots)


def test_copy_schedule_prefetches_and_respects_slot_reuse(base):
    model = copy.deepcopy(base)
    sw = BlockSwapper(model, 5, "cpu").install()
    sw.trace = []
    run(model)
    tr = sw.trace
    assert tr[:2] == [("copy", 1, 0), ("copy", 2, 1)]          # prefetch before the first swapped block
    for idx, (kind, i, s) in enumerate(tr):
        if kind != "compute":
            continue
        last_copy = [e for e in tr[:idx] if e[0] == "copy" and e[2] == s][-1]
        assert last_copy[1] == i, f"block {i} computed from a slot holding block {last_copy[1]}"
        if i + 1 <= 5:                                          # the next block was already queued
            assert ("copy", i + 1, (i + 1 - 1) % 2) in tr[:idx]
        if i + 2 <= 5:                                          # reuse of this slot only after compute
            assert tr.index(("copy", i + 2, s)) > idx


@pytest.mark.parametrize("mode", ["fp4_scaled", "fp8_e4m3fn_scaled", "fp4_experimental"])
def test_quantized_blocks_travel_packed(base, mode):
    model = quant.quantize_model(copy.deepcopy(base), mode, compute_dtype=torch.float32)
    ref = run(model)
    n = 4
    expected = 0
    for blk in model.blocks[-n:]:
        for m in blk.modules():
            if isinstance(m, quant.QuantLinear):
                expected += quant.linear_storage_bytes(mode, m.out_features, m.in_features, m.bias is not None,
                                                       torch.float32)
            else:
                expected += sum(p.numel() * p.element_size() for p in m.parameters(recurse=False))
    stored_dtype = {"fp4_scaled": torch.uint8, "fp4_experimental": torch.uint8,
                    "fp8_e4m3fn_scaled": torch.float8_e4m3fn}[mode]
    dtypes = []
    model.blocks[-1].self_attn.q.register_forward_pre_hook(lambda m, a: dtypes.append(m.weight.dtype))
    sw = BlockSwapper(model, n, "cpu").install()
    assert torch.equal(run(model), ref)
    assert sw.stats.bytes_copied == expected
    assert dtypes == [stored_dtype]
    dense = sum(p.numel() * 4 for blk in base.blocks[-n:] for p in blk.parameters())
    assert expected < dense / (3 if mode.startswith("fp8") else 5)


def test_pin_cap_falls_back_to_pageable_with_one_line(base, monkeypatch):
    monkeypatch.setattr(bs, "_alloc_pinned", lambda n: torch.empty(n, dtype=torch.uint8))  # simulated pinning
    _, _, padded = bs._layout(base.blocks[0])
    model = copy.deepcopy(base)
    before = bs._PINNED_TOTAL[0]
    with captured_lines() as lines:
        sw = BlockSwapper(model, 5, "cpu", pin_limit_bytes=before + 2 * padded, pin_memory=True).install()
    assert [s.pinned for s in sw.stores] == [True, True, False, False, False]
    warns = [l for l in lines if l.startswith("[WARN]")]
    assert len(warns) == 1 and "pageable" in warns[0] and "blocks 3-5" in warns[0]
    assert bs._PINNED_TOTAL[0] == before + 2 * padded
    assert torch.equal(run(model), run(base))
    sw.uninstall()
    assert bs._PINNED_TOTAL[0] == before


def test_dropped_swapped_model_releases_its_pinned_bytes(base, monkeypatch):
    # a model evicted from the cache while swapped (no uninstall) must not eat the pin cap of later loads
    monkeypatch.setattr(bs, "_alloc_pinned", lambda n: torch.empty(n, dtype=torch.uint8))
    model = copy.deepcopy(base)
    before = bs._PINNED_TOTAL[0]
    BlockSwapper(model, 3, "cpu", pin_memory=True).install()
    assert bs._PINNED_TOTAL[0] > before
    del model
    gc.collect()
    assert bs._PINNED_TOTAL[0] == before


def test_embedding_offload(base):
    model = copy.deepcopy(base)
    sw = BlockSwapper(model, 2, "cpu", offload_embeddings=True).install()
    assert set(sw.embedding_stores) == {"text_embedding", "img_emb", "audio_proj"}
    during = []
    model.text_embedding.register_forward_pre_hook(
        lambda m, a: during.append(in_range(m[0].weight, sw.embedding_stores["text_embedding"].host)))
    assert torch.equal(run(model), run(base))
    assert during == [False]                                  # a device copy was bound for the call
    for name, store in sw.embedding_stores.items():
        assert all(in_range(t, store.host) for t in block_tensors(getattr(model, name)))
    assert sw.stats.embedding_bytes == sum(s.payload for s in sw.embedding_stores.values())
    assert sw.stats.embedding_bytes == sum(p.numel() * 4 for n in sw.embedding_stores
                                           for p in getattr(model, n).parameters())


def test_failure_inside_a_block_leaves_host_views_bound(base):
    model = copy.deepcopy(base)
    sw = BlockSwapper(model, 3, "cpu").install()

    def boom(module, args):
        raise RuntimeError("simulated OOM")

    h = model.blocks[4].register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError, match="simulated OOM"):
        run(model)
    h.remove()
    for k, store in enumerate(sw.stores):
        assert all(in_range(t, store.host) for t in block_tensors(model.blocks[sw.first_swapped + k]))
    assert torch.equal(run(model), run(base))


def test_uninstall_restores_plain_model(base):
    model = copy.deepcopy(base)
    sw = BlockSwapper(model, 3, "cpu", offload_embeddings=True).install()
    run(model)
    sw.uninstall()
    assert "_run_blocks" not in model.__dict__ and not hasattr(model, "wanfp4_block_swap")
    assert model._run_blocks.__func__ is WanModel._run_blocks
    sd, ref_sd = model.state_dict(), base.state_dict()
    assert sd.keys() == ref_sd.keys() and all(torch.equal(sd[k], ref_sd[k]) for k in sd)
    assert not any(in_range(t, s.host) for s in sw.stores for t in block_tensors(model))
    assert torch.equal(run(model), run(base))


def test_apply_block_swap_is_a_noop_on_cpu_and_replans(base):
    model = copy.deepcopy(base)
    with captured_lines() as lines:
        assert apply_block_swap(model, 4, "cpu") is None
    assert "_run_blocks" not in model.__dict__ and any("not used on CPU" in l for l in lines)
    sw = BlockSwapper(model, 4, "cpu").install()
    assert apply_block_swap(model, 0, "cpu") is None           # re-plan: the old swapper goes away
    assert not sw.installed and "_run_blocks" not in model.__dict__
    assert torch.equal(run(model), run(base))


def test_bad_inputs_raise_clear_errors(base):
    with pytest.raises(ValueError, match="blocks_to_swap: must be between 0 and 6"):
        BlockSwapper(copy.deepcopy(base), 7, "cpu")
    with pytest.raises(TypeError, match="no `blocks`"):
        BlockSwapper(torch.nn.Linear(2, 2), 1, "cpu")
    meta = build_model(CFG, "meta", torch.float32)
    with pytest.raises(RuntimeError, match="meta device"):
        BlockSwapper(meta, 2, "cpu").install()
    model = copy.deepcopy(base)
    BlockSwapper(model, 1, "cpu").install()
    with pytest.raises(RuntimeError, match="already has a swapper"):
        BlockSwapper(model, 2, "cpu").install()
