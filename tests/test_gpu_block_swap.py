"""Block swap on a CUDA GPU (skipped without one): copy stream + events, pinned host memory. The
swapped model's output equals the resident model's bit for bit in every storage format, the swapped
blocks' weights are not on the GPU between forwards, and uninstall restores a plain model."""
import copy
from dataclasses import replace

import pytest
import torch

from wanfp4 import quant
from wanfp4.wan.block_swap import apply_block_swap
from wanfp4.wan.config import TINY_INFINITETALK
from wanfp4.wan.model import build_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CFG = replace(TINY_INFINITETALK, num_layers=6)
A = CFG.audio


def _inputs(dev, dtype):
    g = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(*s, generator=g).to(dev, dtype)   # noqa: E731
    f, h, w = 3, 4, 6
    return ((r(1, 16, f, h, w), torch.full((1,), 600.0, device=dev), r(1, 7, CFG.text_dim)),
            dict(clip_fea=r(1, 257, CFG.image_dim), y=r(1, 20, f, h, w),
                 audio=r(1, 1, 4 * (f - 1) + 1, 5, A.blocks, A.channels)))


@pytest.mark.parametrize("mode", ["disabled", "fp8_e4m3fn_fast", "fp4_scaled", "fp4_experimental"])
@pytest.mark.parametrize("n", [3, 6])
def test_swapped_forward_equals_resident_on_gpu(mode, n):
    dev, dtype = torch.device("cuda"), torch.bfloat16
    model = build_model(CFG, dev, dtype, seed=1).eval()
    quant.quantize_model(model, mode, compute_dtype=dtype, device=dev)
    args, kw = _inputs(dev, dtype)
    with torch.no_grad():
        want = model(*args, **kw)
    swapped = copy.deepcopy(model)
    sw = apply_block_swap(swapped, n, dev, offload_embeddings=True)
    assert sw is not None and len(sw.stores) == n and all(s.pinned for s in sw.stores)
    for blk in swapped.blocks[-n:]:
        assert all(p.device.type == "cpu" for p in blk.parameters())
    with torch.no_grad():
        for _ in range(2):                     # the slot ring is reused across forwards
            got = swapped(*args, **kw)
            assert torch.equal(got, want)
    assert sw.stats.bytes_copied > 0
    sw.uninstall()
    assert all(p.device.type == "cuda" for p in swapped.parameters())
    with torch.no_grad():
        assert torch.equal(swapped(*args, **kw), want)


@pytest.mark.parametrize("mode", ["disabled", "fp8_e4m3fn_fast"])
def test_compiled_blocks_with_block_swap_on_gpu(mode):
    """torch.compile (inductor) of the blocks, with half of them swapped: the copy stream's hooks stay outside
    the compiled forward, the fused kernels and attention stay opaque, and the output matches eager."""
    from wanfp4.wan.block_compile import compile_blocks

    dev, dtype = torch.device("cuda"), torch.bfloat16
    model = build_model(replace(CFG, num_heads=1), dev, dtype, seed=1).eval()   # head dim 32: the Triton kernel
    quant.quantize_model(model, mode, compute_dtype=dtype, device=dev)
    model.set_attention_modes(self_attn="sageattn_3")
    args, kw = _inputs(dev, dtype)
    with torch.no_grad():
        want = model(*args, **kw).float()
    sw = apply_block_swap(model, 3, dev)
    assert compile_blocks(model, True) == CFG.num_layers
    with torch.no_grad():
        for _ in range(2):
            got = model(*args, **kw).float()
            assert (got - want).norm() / want.norm() < 2e-2
    assert sw.stats.bytes_copied > 0
    compile_blocks(model, False)
    sw.uninstall()
