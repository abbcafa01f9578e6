"""The fused element-wise kernels of the DiT block (wan/triton_fused.py) against the PyTorch path
(wan/fused.py's reference numerics): LayerNorm + modulation, gated residual, RMSNorm + 3-D RoPE, on
ragged sizes and batch-1 modulation broadcast. Runs on a CUDA GPU, else in Triton's interpreter on
the CPU; skipped where Triton is missing. And a whole model forward with the switch on equals it off."""
import os
import subprocess
import sys

import pytest
import torch

triton = pytest.importorskip("triton")

from wanfp4.wan import fused  # noqa: E402
from wanfp4.wan.config import TINY_INFINITETALK  # noqa: E402
from wanfp4.wan.model import build_model  # noqa: E402
from wanfp4.wan.norms import RMSNorm, layer_norm  # noqa: E402
from wanfp4.wan.rope import rope_angles_3d  # noqa: E402

CUDA = torch.cuda.is_available()
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"   # must be set before Triton is imported


def test_cpu_runs_these_tests_in_the_triton_interpreter():
    if CUDA or INTERPRETED:
        pytest.skip("the kernels run directly here")
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                         capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0 and " passed" in out.stdout, out.stdout[-3000:] + out.stderr[-2000:]


@pytest.fixture()
def kernels():
    """Fused path on: on the GPU, or in the interpreter on the CPU."""
    if not (CUDA or INTERPRETED):
        pytest.skip("covered by the interpreter subprocess")
    before = fused.fused_enabled()
    fused.set_fused(True)
    yield torch.device("cuda" if CUDA else "cpu")
    fused.set_fused(before)


def _reference(fn, *args):
    fused.set_fused(False)
    try:
        return fn(*args)
    finally:
        fused.set_fused(True)


def _close(a, b, dt):
    tol = 1e-5 if dt == torch.float32 else 2e-2
    assert a.dtype == b.dtype and a.shape == b.shape
    assert ((a.float() - b.float()).norm() / b.float().norm()).item() < tol


@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("b,l,n,mod_b", [(1, 7, 96, 1), (3, 5, 80, 3), (3, 4, 48, 1)])
def test_modulate_and_gated_residual(kernels, dt, b, l, n, mod_b):
    g = torch.Generator().manual_seed(b * 100 + n)
    r = lambda *s: torch.randn(*s, generator=g).to(kernels)   # noqa: E731
    x = (r(b, l, n) * 3 + 1).to(dt)
    scale, shift, gate = r(mod_b, 1, n), r(mod_b, 1, n), r(mod_b, 1, n)
    norm = layer_norm(n, 1e-6, affine=False).to(kernels)
    _close(fused.modulate(norm, x, scale, shift, dt), _reference(fused.modulate, norm, x, scale, shift, dt), dt)
    y = r(b, l, n).to(dt)
    _close(fused.gated_residual(x, y, gate), _reference(fused.gated_residual, x, y, gate), dt)


@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("b,l,n", [(1, 7, 96), (3, 5, 80)])
def test_affine_layer_norm_and_rms_norm(kernels, dt, b, l, n):
    g = torch.Generator().manual_seed(n)
    x = (torch.randn(b, l, n, generator=g) * 2 + 0.5).to(kernels, dt)
    ln, rms = layer_norm(n, 1e-6, affine=True).to(kernels), RMSNorm(n).to(kernels)
    with torch.no_grad():
        for w in (ln.weight, ln.bias, rms.weight):
            w.copy_(1 + 0.5 * torch.randn(n, generator=g))
    _close(fused.layer_norm(ln, x, dt), _reference(fused.layer_norm, ln, x, dt), dt)
    _close(fused.rms_norm(rms, x, dt), _reference(fused.rms_norm, rms, x, dt), dt)
    ident = torch.nn.Identity()
    assert torch.equal(fused.layer_norm(ident, x, dt), x) and torch.equal(fused.rms_norm(ident, x, dt), x)


@pytest.mark.parametrize("dt", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("b,grid,heads,head_dim", [(1, (2, 3, 4), 2, 16), (3, (1, 2, 3), 3, 12)])
def test_rms_rope(kernels, dt, b, grid, heads, head_dim):
    g = torch.Generator().manual_seed(heads)
    l, n = grid[0] * grid[1] * grid[2], heads * head_dim
    x = torch.randn(b, l, n, generator=g).to(kernels, dt)
    norm = RMSNorm(n).to(kernels)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(n, generator=g))
    cos, sin = (t.to(kernels) for t in rope_angles_3d(grid, head_dim))
    got = fused.rms_rope(norm, x, heads, cos, sin, dt)
    assert got.shape == (b, l, heads, head_dim)
    _close(got, _reference(fused.rms_rope, norm, x, heads, cos, sin, dt), dt)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_model_forward_same_with_fused_switch(kernels, monkeypatch, dtype):
    """Every block step takes its kernel (a transposed residual stream once made them all fall back
    silently) and the forward equals the PyTorch path."""
    calls = {}
    for name in ("ln_modulate", "gated_residual", "rms_rope"):
        real = getattr(fused._kernels(), name)
        def counted(*a, _real=real, _name=name):
            calls[_name] = calls.get(_name, 0) + 1
            return _real(*a)
        monkeypatch.setattr(fused._kernels(), name, counted)
    model = build_model(TINY_INFINITETALK, device=kernels, dtype=dtype, seed=2).eval()
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g).to(kernels)   # noqa: E731
    a = TINY_INFINITETALK.audio
    args = (r(2, 16, 2, 4, 4), torch.tensor([500.0, 500.0], device=kernels), r(2, 7, TINY_INFINITETALK.text_dim))
    kw = dict(clip_fea=r(2, 257, TINY_INFINITETALK.image_dim), y=r(2, 20, 2, 4, 4),
              audio=r(2, 1, 5, 5, a.blocks, a.channels))
    with torch.no_grad():
        on = model(*args, **kw)
        off = _reference(lambda: model(*args, **kw))
    c = TINY_INFINITETALK
    assert c.cross_attn_norm and c.qk_norm and c.audio is not None
    n = c.num_layers   # per block: norm1, norm2, norm3, norm_x; 2 residuals; self q, k and cross q
    assert calls == {"ln_modulate": 4 * n, "gated_residual": 2 * n, "rms_rope": 3 * n}, calls
    _close(on, off, dtype)
