"""GPU kernels (Triton) against the reference numerics of attention/reference.py and quant/.

Skipped without CUDA + Triton (CI has neither). Shapes are small and ragged (not multiples of any
block), Lq != Lk included, on both input kinds of kernels_quant_perf.md section 2.2.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from wanfp4.attention import reference as R  # noqa: E402
from wanfp4.attention import triton_sageattn as T  # noqa: E402
from wanfp4.attention.triton_sageattn_fp4 import sageattn3_fp4  # noqa: E402
from wanfp4.quant import triton_linear as TL  # noqa: E402
from wanfp4.quant.fp4 import dequantize_nvfp4, nvfp4_to_fp8_rows, quantize_nvfp4  # noqa: E402
from wanfp4.quant.fp8 import quantize_fp8_rows, quantize_fp8_weight  # noqa: E402

SM = torch.cuda.get_device_capability()[0] * 10 + torch.cuda.get_device_capability()[1]


def _inputs(kind, lq, lk, h, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = R.make_inputs(kind, 2, lq, h, d, generator=g, lk=lk, dtype=dtype)
    return q.cuda(), k.cuda(), v.cuda()


# Kernel vs its reference: the kernels use a running row max, so P is rounded at a slightly different
# scale than the reference's exact max. With 16-bit P that changes little; with e4m3 P (3 mantissa
# bits) the rounding errors of blocks seen before the final max are independent draws of the same
# size, so kernel and reference differ by up to ~0.65x the mode's error (measured 0.011-0.023 for a
# 0.034-0.038 error). Either way the kernel's error against exact attention must match the
# reference's; a wrong scale, mask or smoothing shows up as a far larger error.
CASES = [("iid", 1000, 1000, 128), ("biased_k", 1000, 1000, 128), ("biased_k", 77, 300, 128),
         ("iid", 333, 129, 64), ("biased_k", 4100, 4100, 128)]


@pytest.mark.parametrize("mode", ["sageattn_3", "sageattn_3_fp8"])
@pytest.mark.parametrize("kind,lq,lk,d", CASES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_int8_attention_matches_reference(mode, kind, lq, lk, d, dtype):
    if mode == "sageattn_3_fp8" and SM < 89:
        pytest.skip("fp8 P.V needs sm_89+")
    q, k, v = _inputs(kind, lq, lk, 3, d, dtype)
    fn = T.sageattn3_fp8 if mode == "sageattn_3_fp8" else T.sageattn3
    out = fn(q, k, v)
    assert out.shape == q.shape and out.dtype == dtype
    ref = R.REFERENCES[mode](q, k, v)
    exact = R.exact_attention(q, k, v)
    ref_err, err, diff = R.relative_error(ref, exact), R.relative_error(out, exact), R.relative_error(out, ref)
    assert diff < (0.75 if mode == "sageattn_3_fp8" else 0.1) * ref_err + 2e-3, (diff, ref_err)
    assert err < ref_err * 1.15 + 2e-3, (err, ref_err)


@pytest.mark.parametrize("pv_fp8", [True, False])
@pytest.mark.parametrize("kind,lq,lk,d", CASES[1:4])
@pytest.mark.parametrize("prefetch", [True, False])
def test_int8_attention_both_loops_and_tiles(pv_fp8, kind, lq, lk, d, prefetch):
    """Both loops the tuner may pick (with/without the prefetched Q.K) stay within the mode's error of
    exact attention, ragged tails included, and agree with each other."""
    if pv_fp8 and SM < 89:
        pytest.skip("fp8 P.V needs sm_89+")
    q, k, v = _inputs(kind, lq, lk, 3, d, torch.bfloat16, seed=5)
    mode = "sageattn_3_fp8" if pv_fp8 else "sageattn_3"
    ref_err = R.relative_error(R.REFERENCES[mode](q, k, v), R.exact_attention(q, k, v))
    outs = [T._int8_attention(q, k, v, pv_fp8, config=(128, bn, 4, 3, prefetch)) for bn in (64, 128)]
    for out in outs:
        assert R.relative_error(out, R.exact_attention(q, k, v)) < ref_err * 1.15 + 2e-3
    # Same logits; the tile width only changes where the running max moves (rounding of P), so the two
    # differ by at most twice the kernel-vs-reference bound of test_int8_attention_matches_reference.
    assert R.relative_error(outs[1], outs[0]) < (1.5 if pv_fp8 else 0.2) * ref_err + 4e-3


def test_int8_attention_needs_k_smoothing():
    """Biased K: the kernel error is the smoothed reference's, far below the unsmoothed one."""
    q, k, v = _inputs("biased_k", 700, 700, 2, 128, torch.bfloat16, seed=3)
    exact = R.exact_attention(q, k, v)
    err = R.relative_error(T.sageattn3(q, k, v), exact)
    unsmoothed = R.relative_error(R.reference_sageattn_3(q, k, v, smooth=False), exact)
    assert err < 0.5 * unsmoothed


def test_attention_rejects_bad_shapes():
    q = torch.randn(1, 10, 2, 128, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="shapes do not match"):
        T.sageattn3(q, q[:, :, :1], q[:, :, :1])
    with pytest.raises(RuntimeError, match="head dim"):
        T.sageattn3(q[..., :48], q[..., :48], q[..., :48])


@pytest.mark.parametrize("kind,lq,lk", [("iid", 300, 300), ("biased_k", 200, 333)])
def test_fp4_attention_matches_reference(kind, lq, lk):
    q, k, v = _inputs(kind, lq, lk, 2, 128, torch.bfloat16)
    out = sageattn3_fp4(q, k, v)
    ref = R.reference_sageattn_3_fp4(q, k, v)
    exact = R.exact_attention(q, k, v)
    ref_err, err = R.relative_error(ref, exact), R.relative_error(out, exact)
    assert R.relative_error(out, ref) < 0.35 * ref_err, (R.relative_error(out, ref), ref_err)
    assert err < ref_err * 1.15, (err, ref_err)


# ----------------------------------------------------------------------------- linears
def _weights(n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    x = torch.randn(37, k, generator=g)
    bias = torch.randn(n, generator=g) * 0.1
    return w.cuda(), x.cuda().bfloat16(), bias.cuda().bfloat16()


def test_fp8_activation_quant_is_reference_exact():
    x = torch.randn(301, 5120, device="cuda").bfloat16() * 3
    x[5] = 0
    xq, sx = TL.quant_fp8_rows(x)
    rq, rs = quantize_fp8_rows(x)
    assert torch.equal(sx, rs)
    assert (xq.float() != rq.float()).float().mean() < 1e-5


@pytest.mark.skipif(SM < 89, reason="fp8 tensor cores: sm_89+")
@pytest.mark.parametrize("fast", [False, True])
def test_fp8_linear_matches_reference(fast):
    w, x, bias = _weights(272, 640)
    w8, ws = quantize_fp8_weight(w)
    out = TL.fp8_linear(x.view(1, 37, 640), w8, ws, bias, fast_accum=fast)
    assert out.shape == (1, 37, 272) and out.dtype == torch.bfloat16
    xq, sx = quantize_fp8_rows(x)
    ref = (xq.float() * sx) @ (w8.float() * ws[:, None]).t() + bias.float()
    assert R.relative_error(out.view(37, 272), ref) < 4e-3


def test_nvfp4_decode_is_reference_exact():
    w, _, _ = _weights(200, 448)
    wp, bs, ts = quantize_nvfp4(w)
    assert torch.equal(TL.nvfp4_dequantize(wp, bs, ts, torch.float32), dequantize_nvfp4(wp, bs, ts))
    w8, rs = TL.nvfp4_to_fp8(wp, bs, ts)
    r8, rrs = nvfp4_to_fp8_rows(wp, bs, ts)
    assert torch.equal(rs, rrs)
    assert (w8.float() != r8.float()).float().mean() < 1e-4


def test_mxfp4_decode_is_reference_exact():
    """fp4_experimental's one-pass decode equals quant/fp4.dequantize_mxfp4 bit for bit: in fp32 including the
    edge e8m0 codes (0: 2^-127, 255: NaN), in bf16 for weights of a real model's range (K 640 = 20 blocks)."""
    from wanfp4.quant.fp4 import dequantize_mxfp4, quantize_mxfp4
    w, _, _ = _weights(272, 640)
    wp, e = quantize_mxfp4(w)
    assert torch.equal(TL.mxfp4_dequantize(wp, e, torch.bfloat16), dequantize_mxfp4(wp, e).bfloat16())
    e[5, 1], e[6, 2] = 0, 255
    got, want = TL.mxfp4_dequantize(wp, e, torch.float32), dequantize_mxfp4(wp, e)
    assert torch.equal(torch.isnan(got), torch.isnan(want)) and torch.isnan(want).any()
    assert torch.equal(got.nan_to_num(), want.nan_to_num())
    with pytest.raises(ValueError, match="K % 64"):
        TL.mxfp4_dequantize(wp[:, :16], e[:, :1])


@pytest.mark.parametrize("fused", [True, False])
def test_w4a16_matches_dequantized_matmul(fused):
    w, x, bias = _weights(272, 640)
    wp, bs, ts = quantize_nvfp4(w)
    out = TL.nvfp4_linear_w4a16(x, wp, bs, ts, bias, fused=fused)
    ref = x.float() @ dequantize_nvfp4(wp, bs, ts).t() + bias.float()
    assert R.relative_error(out, ref) < 4e-3


@pytest.mark.skipif(SM < 89, reason="fp8 tensor cores: sm_89+")
def test_w4a8_matches_reference():
    w, x, bias = _weights(272, 640)
    wp, bs, ts = quantize_nvfp4(w)
    out = TL.nvfp4_linear_w4a8(x, wp, bs, ts, bias)
    xq, sx = quantize_fp8_rows(x)
    w8, rs = nvfp4_to_fp8_rows(wp, bs, ts)
    ref = (xq.float() * sx) @ (w8.float() * rs[:, None]).t() + bias.float()
    assert R.relative_error(out, ref) < 4e-3


def test_w4a4_dot_scaled_matches_reference():
    w, x, bias = _weights(272, 640)
    wp, bs, ts = quantize_nvfp4(w)
    out = TL.nvfp4_linear_w4a4(x, wp, bs, ts, bias)
    xp, xb, xt = quantize_nvfp4(x)
    ref = dequantize_nvfp4(xp, xb, xt) @ dequantize_nvfp4(wp, bs, ts).t() + bias.float()
    assert R.relative_error(out, ref) < 4e-3


def test_backend_registration_runs_quantlinear():
    from wanfp4.quant import backends
    from wanfp4.quant.linear import QuantLinear
    TL.register_backends()
    lin = torch.nn.Linear(640, 272).cuda().bfloat16()
    x = torch.randn(5, 37, 640, device="cuda").bfloat16()
    for mode in ("fp8_e4m3fn_fast", "fp4_scaled", "fp4_experimental"):
        ql = QuantLinear.from_linear(lin, mode).cuda()
        name, _ = backends.select_kernel(ql.compute_path, ql, x.view(-1, 640))
        assert name.startswith("triton"), (mode, name)
        ref = backends._KERNELS[ql.compute_path][-1].fn(ql, x.view(-1, 640))     # the torch reference
        assert R.relative_error(ql(x).view(-1, 272), ref) < 5e-3


def test_attention_registration_is_picked_by_the_registry():
    from wanfp4.attention import registry
    from wanfp4.attention.capabilities import current_env
    T.register_attention()
    env = current_env("cuda")
    impls = {i.name: i for i in registry.implementations("sageattn_3")}
    assert impls["triton"].supports(env, 128, torch.bfloat16) is None
    assert "head dim" in impls["triton"].supports(env, 48, torch.bfloat16)
    q, k, v = _inputs("iid", 200, 200, 2, 128, torch.bfloat16)
    assert torch.equal(impls["triton"].fn(q, k, v), T.sageattn3(q, k, v))
