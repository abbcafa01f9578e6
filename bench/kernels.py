"""Benchmark of the pack's GPU kernels against their baselines, in one process.

    python -m wanfp4.bench.kernels [--attn] [--linear] [--lengths 37800 32760 75600] [--tune] [--md OUT.md]

Prints one table row per (kernel, shape): ms (median of triton.testing.do_bench), TF/s, ratio to
the baseline measured in the same run, relative error.
  attention: B=1, H=40, D=128, bf16, non-causal. TF/s = 4*H*L^2*D / time. Error = Frobenius relative
    error against fp64 attention of the same bf16 inputs, first 4 heads, for "iid" N(0,1) inputs and
    "biased K" (2*q, k + 4*N(0,1) per-channel offset), as kernels_quant_perf.md section 2.2.
    "vs ref" = relative difference to attention/reference.py's numerics of that mode (4 heads).
    Baselines: cuDNN SDPA; FA3 (`fa3_fwd_interface`, bf16 and fp8 per-tensor) and SageAttention 1
    (`sageattention`) when importable, else reported absent.
  linear: M x K -> N at Wan shapes; baseline torch bf16 F.linear (cuBLAS). Error vs fp32 matmul of
    the same (de)quantized weights and unquantized activations; "vs ref" vs quant/backends.py reference.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import platform
import sys

import torch
import torch.nn.functional as F

ROWS: list[dict] = []


def _bench(fn, ms_hint: float = 10.0) -> float:
    import triton.testing
    rep = max(60, min(600, int(ms_hint * 8)))
    return float(triton.testing.do_bench(fn, warmup=max(25, int(ms_hint * 2)), rep=rep, return_mode="median"))


def _row(**kw):
    ROWS.append(kw)
    cells = [f"{kw.get(c, '')}" for c in ("group", "mode", "shape", "ms", "tflops", "ratio", "err_iid", "err_bias", "vs_ref", "note")]
    print(" | ".join(cells), flush=True)


def _fmt(x, nd=3):
    return "" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


# ----------------------------------------------------------------------------- attention
def _attn_inputs(kind, n, h=40, d=128, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(1, n, h, d, device="cuda", generator=g)
    k = torch.randn(1, n, h, d, device="cuda", generator=g)
    v = torch.randn(1, n, h, d, device="cuda", generator=g)
    if kind == "biased_k":
        q = q * 2
        k = k + 4 * torch.randn(1, 1, h, d, device="cuda", generator=g)
    return q.bfloat16(), k.bfloat16(), v.bfloat16()


def exact_heads(q, k, v, heads=4, chunk=2048):
    """fp64 softmax attention of the first `heads` heads, chunked over queries: [1, L, heads, D]."""
    qd, kd, vd = (t[:, :, :heads].double().transpose(1, 2) for t in (q, k, v))
    out = torch.empty_like(qd)
    scale = q.shape[-1] ** -0.5
    for s in range(0, qd.shape[2], chunk):
        sc = (qd[:, :, s:s + chunk] @ kd.transpose(-1, -2)) * scale
        out[:, :, s:s + chunk] = torch.softmax(sc, dim=-1) @ vd
    return out.transpose(1, 2)


def rel(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def attention_kernels():
    """name -> (fn, reference fn or None); absent packages are reported, not fatal."""
    from wanfp4.attention import reference as R
    from wanfp4.attention import triton_sageattn as T
    from wanfp4.attention.backends import sdpa
    from wanfp4.attention.triton_sageattn_fp4 import sageattn3_fp4

    def cudnn(q, k, v):
        from torch.nn.attention import SDPBackend, sdpa_kernel
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return sdpa(q, k, v)

    kernels = {"sdpa_cudnn": (cudnn, None)}
    notes = []
    try:
        from fa3_fwd_interface import flash_attn_func as fa3

        def fa3_bf16(q, k, v):
            out = fa3(q, k, v)
            return out[0] if isinstance(out, (tuple, list)) else out

        def fa3_fp8(q, k, v):   # per-tensor scales, the only FP8 mode of the wheel's API
            outs = []
            qs, ks, vs = (t.abs().amax().float() / 448 for t in (q, k, v))
            q8, k8, v8 = ((t.float() / s).to(torch.float8_e4m3fn) for t, s in ((q, qs), (k, ks), (v, vs)))
            out = fa3(q8, k8, v8, q_descale=qs.view(1, 1).expand(1, q.shape[2]).contiguous(),
                      k_descale=ks.view(1, 1).expand(1, q.shape[2]).contiguous(),
                      v_descale=vs.view(1, 1).expand(1, q.shape[2]).contiguous())
            return (out[0] if isinstance(out, (tuple, list)) else out).to(torch.bfloat16)
        kernels["fa3_bf16"] = (fa3_bf16, None)
        kernels["fa3_fp8_pertensor"] = (fa3_fp8, None)
    except Exception as err:  # noqa: BLE001 - report any import failure
        notes.append(f"FA3 (fa3-fwd) absent: {type(err).__name__}: {err}")
    try:
        import sageattention

        def sage1(q, k, v):
            return sageattention.sageattn(q, k, v, tensor_layout="NHD", is_causal=False)
        kernels[f"sageattention_{getattr(sageattention, '__version__', '1.x')}"] = (sage1, None)
    except Exception as err:  # noqa: BLE001
        notes.append(f"sageattention absent: {type(err).__name__}: {err}")
    kernels["sageattn3_fp8 (ours)"] = (T.sageattn3_fp8, R.reference_sageattn_3_fp8)
    kernels["sageattn3 (ours)"] = (T.sageattn3, R.reference_sageattn_3)
    kernels["sageattn3_fp4 (ours, emulated)"] = (sageattn3_fp4, R.reference_sageattn_3_fp4)
    return kernels, notes


def bench_attention(lengths, with_fp4_time=False, ref_check=True):
    kernels, notes = attention_kernels()
    for note in notes:
        print("#", note)
    for n in lengths:
        flops = 4 * 40 * n * n * 128
        inputs = {kind: _attn_inputs(kind, n) for kind in ("iid", "biased_k")}
        exact = {kind: exact_heads(*inputs[kind]) for kind in inputs} if n <= 40000 else {}
        base_ms = None
        for name, (fn, ref_fn) in kernels.items():
            emulated = "emulated" in name
            errs, vs_ref, ms, note = {}, None, None, ""
            try:
                for kind, (q, k, v) in inputs.items():
                    if exact:
                        if emulated:   # 4 heads only: emulated FP4 is slow
                            out = fn(q[:, :, :4].contiguous(), k[:, :, :4].contiguous(), v[:, :, :4].contiguous())
                        else:
                            out = fn(q, k, v)[:, :, :4]
                        errs[kind] = rel(out, exact[kind])
                        if ref_check and ref_fn is not None and kind == "biased_k":
                            q4, k4, v4 = (t[:, :, :4].contiguous() for t in (q, k, v))
                            r = ref_fn(q4, k4, v4)
                            o4 = out if emulated else fn(q4, k4, v4)
                            vs_ref = rel(o4, r)
                            del r
                        del out
                q, k, v = inputs["iid"]
                if not emulated or with_fp4_time:
                    ms = _bench(lambda: fn(q, k, v), ms_hint=60.0 * (n / 37800) ** 2)
            except Exception as err:  # noqa: BLE001 - one failing kernel must not hide the others
                note = f"FAILED: {type(err).__name__}: {str(err)[:300]}"
            if name == "sdpa_cudnn":
                base_ms = ms
            _row(group="attention", mode=name, shape=f"B1 H40 L{n} D128", ms=_fmt(ms, 2),
                 tflops=_fmt(flops / ms / 1e9 if ms else None, 0),
                 ratio=_fmt(base_ms / ms if ms and base_ms else None, 2),
                 err_iid=_fmt(errs.get("iid"), 4), err_bias=_fmt(errs.get("biased_k"), 4), vs_ref=_fmt(vs_ref, 5),
                 note=note)
        del inputs, exact
        torch.cuda.empty_cache()


def parse_tune_configs(specs) -> dict | None:
    """["16:128,64,4,3", "fp8:128,128,8,3,1"] -> {False: [(128, 64, 4, 3)], True: [(128, 128, 8, 3, 1)]}
    (key: e4m3 P.V?); None (the built-in sweep) when there are none."""
    chosen: dict = {}
    for spec in specs or ():
        pv, _, cfg = spec.partition(":")
        if pv not in ("16", "fp8") or not cfg:
            raise SystemExit(f"--tune-configs: {spec!r} is not PV:BM,BN,WARPS,STAGES[,PREFETCH,WS,MAXNREG] "
                             "with PV 16 or fp8")
        chosen.setdefault(pv == "fp8", []).append(tuple(int(x) for x in cfg.split(",")))
    return chosen or None


def tune_attention(n=37800, candidates=None):
    """Tile configs of the INT8 attention kernels at one length: ms, TF/s and error on both input kinds.
    Config = (BM, BN, warps, stages[, prefetch[, warp_specialize[, maxnreg]]]); candidates: {pv_fp8: [config]}."""
    from wanfp4.attention import triton_sageattn as T
    inputs = {kind: _attn_inputs(kind, n) for kind in ("iid", "biased_k")}
    exact = {kind: exact_heads(*inputs[kind]) for kind in inputs}
    flops = 4 * 40 * n * n * 128
    candidates = candidates or {
        True: [(128, 128, 8, 3, True, False), (128, 128, 8, 3, False, False), (128, 128, 8, 4, True, False),
               (128, 64, 8, 3, True, False), (128, 128, 8, 3, True, True)],
        False: [(128, 64, 4, 3, False, False), (128, 128, 8, 3, True, False), (128, 64, 8, 3, True, False),
                (128, 128, 8, 3, False, False)]}
    for pv_fp8 in candidates:
        for cfg in candidates[pv_fp8]:
            try:
                fn = lambda q, k, v: T._int8_attention(q, k, v, pv_fp8, config=cfg)   # noqa: E731
                errs = {kind: rel(fn(*inputs[kind])[:, :, :4], exact[kind]) for kind in inputs}
                q, k, v = inputs["iid"]
                ms = _bench(lambda: fn(q, k, v), 40)
                print(f"tune pv_fp8={pv_fp8} cfg={cfg}: {ms:.2f} ms {flops / ms / 1e9:.0f} TF/s "
                      f"err iid {errs['iid']:.4f} biased_k {errs['biased_k']:.4f}", flush=True)
            except Exception as err:  # noqa: BLE001 - one failing config must not hide the others
                print(f"tune pv_fp8={pv_fp8} cfg={cfg}: FAILED {type(err).__name__}: {str(err)[:200]}", flush=True)


# ----------------------------------------------------------------------------- linear
def bench_linear(shapes):
    from wanfp4.quant import triton_linear as L
    from wanfp4.quant.fp4 import dequantize_nvfp4, nvfp4_to_fp8_rows, quantize_nvfp4
    from wanfp4.quant.fp8 import quantize_fp8_rows, quantize_fp8_weight
    for m, k, n in shapes:
        torch.manual_seed(0)
        x = torch.randn(m, k, device="cuda").bfloat16()
        w = (torch.randn(n, k, device="cuda") * 0.02)
        bias = (torch.randn(n, device="cuda") * 0.1).bfloat16()
        wb = w.bfloat16()
        flops = 2 * m * k * n
        shape = f"{m}x{k}x{n}"
        def bf16_again() -> float:
            """The baseline re-timed right before each candidate: the H200's clocks drift over a run (a cold
            GPU's first GEMM ran 15% faster than later ones), so each ratio compares like with like."""
            return _bench(lambda: F.linear(x, wb, bias), 3)

        bf16_again()            # warms the GPU: the first timing of a run reads up to 15% fast
        base = bf16_again()
        _row(group="linear", mode="bf16 F.linear", shape=shape, ms=_fmt(base, 3), tflops=_fmt(flops / base / 1e9, 0), ratio="1.00")
        xf = x.float()
        # fp8 W8A8
        w8, ws = quantize_fp8_weight(w)
        exact8 = xf @ (w8.float() * ws[:, None]).t() + bias.float()
        xq, sx = quantize_fp8_rows(x)
        ref8 = (xq.float() * sx) @ (w8.float() * ws[:, None]).t() + bias.float()
        qt = _bench(lambda: L.quant_fp8_rows(x), 0.3)
        if m > 4096:
            for warps in (4, 8, 16, 32):
                print(f"# quant_fp8_rows {shape} num_warps={warps}: {_bench(lambda: L.quant_fp8_rows(x, warps), 0.3):.4f} ms")
        for fast in (False, True):
            out = L.fp8_linear(x, w8, ws, bias, fast_accum=fast)
            base = bf16_again()
            t = _bench(lambda: L.fp8_linear(x, w8, ws, bias, fast_accum=fast), 2)
            xq2, sx2 = L.quant_fp8_rows(x)
            g = _bench(lambda: torch._scaled_mm(xq2, w8.t(), scale_a=sx2, scale_b=ws.view(1, -1), bias=bias,
                                                out_dtype=torch.bfloat16, use_fast_accum=fast), 2)
            _row(group="linear", mode=f"fp8_linear fast_accum={fast}", shape=shape, ms=_fmt(t, 3),
                 tflops=_fmt(flops / t / 1e9, 0), ratio=_fmt(base / t, 2), err_iid=_fmt(rel(out, exact8), 4),
                 vs_ref=_fmt(rel(out, ref8), 5),
                 note=f"quant {qt:.3f} ms = {100 * qt / g:.1f}% of GEMM {g:.3f} ms; bf16 {base:.3f} ms")
        # NVFP4
        wp, bs, ts = quantize_nvfp4(w)
        wd = dequantize_nvfp4(wp, bs, ts)
        exact4 = xf @ wd.t() + bias.float()
        for fused in (True, False):
            try:
                out = L.nvfp4_linear_w4a16(x, wp, bs, ts, bias, fused=fused)
                base = bf16_again()
                t = _bench(lambda: L.nvfp4_linear_w4a16(x, wp, bs, ts, bias, fused=fused), 3)
                _row(group="linear", mode=f"w4a16 {'fused' if fused else 'decode+cuBLAS'}", shape=shape, ms=_fmt(t, 3),
                     tflops=_fmt(flops / t / 1e9, 0), ratio=_fmt(base / t, 2), err_iid=_fmt(rel(out, exact4), 4),
                     note="weight bytes %.2fx less than bf16; bf16 %.3f ms" % (
                         (n * k * 2) / (wp.numel() + bs.numel() + 4), base))
            except Exception as err:  # noqa: BLE001
                _row(group="linear", mode=f"w4a16 fused={fused}", shape=shape, note=f"FAILED {type(err).__name__}: {str(err)[:300]}")
        try:
            w48, rs = nvfp4_to_fp8_rows(wp, bs, ts)
            ref48 = (xq.float() * sx) @ (w48.float() * rs[:, None]).t() + bias.float()
            out = L.nvfp4_linear_w4a8(x, wp, bs, ts, bias)
            base = bf16_again()
            t = _bench(lambda: L.nvfp4_linear_w4a8(x, wp, bs, ts, bias), 2)
            _row(group="linear", mode="w4a8 (nvfp4->fp8 + fp8 GEMM)", shape=shape, ms=_fmt(t, 3),
                 tflops=_fmt(flops / t / 1e9, 0), ratio=_fmt(base / t, 2), err_iid=_fmt(rel(out, exact4), 4),
                 vs_ref=_fmt(rel(out, ref48), 5), note=f"bf16 {base:.3f} ms")
        except Exception as err:  # noqa: BLE001
            _row(group="linear", mode="w4a8", shape=shape, note=f"FAILED {type(err).__name__}: {str(err)[:300]}")
        if m <= 4096:
            try:
                xp, xb, xt = quantize_nvfp4(x)
                ref44 = dequantize_nvfp4(xp, xb, xt) @ wd.t() + bias.float()
                out = L.nvfp4_linear_w4a4(x, wp, bs, ts, bias)
                _row(group="linear", mode="w4a4 dot_scaled (emulated)", shape=shape, err_iid=_fmt(rel(out, exact4), 4),
                     vs_ref=_fmt(rel(out, ref44), 5), note="numerics only on sm_90")
            except Exception as err:  # noqa: BLE001
                _row(group="linear", mode="w4a4", shape=shape, note=f"FAILED {type(err).__name__}: {str(err)[:300]}")
        del x, w, wb
        torch.cuda.empty_cache()


DIT_MODES = {   # quantization mode -> attention modes timed with it
    "disabled": ("sdpa", "sageattn_3"),
    "fp8_e4m3fn_fast": ("sdpa", "sageattn_3", "sageattn_3_fp8"),
    "fp4_scaled": ("sageattn_3",),
    "fp4_scaled_fast": ("sageattn_3", "sageattn_3_fp8"),
    "fp4_experimental": ("sageattn_3_fp4",),
}


NO_SELF_ATTENTION = "no_self_attention"


@contextlib.contextmanager
def self_attention_skipped(min_tokens: int = 4096):
    """Self-attention (as many keys as queries, more than min_tokens) returns q unchanged, no kernel runs:
    what a forward costs besides its self-attention, the floor any attention kernel's time adds to.
    Cross-attentions still run (sdpa)."""
    from wanfp4.wan import blocks
    real = blocks.attention

    def skip(q, k, v, mode="sdpa", **kw):
        return q if q.shape[1] == k.shape[1] > min_tokens else real(q, k, v, mode, **kw)

    blocks.attention = skip
    try:
        yield
    finally:
        blocks.attention = real


def bench_dit(width: int, height: int, frames: int, iters: int = 2, tiny: bool = False, device: str = "cuda",
              variants: tuple[tuple[bool, bool], ...] = ((True, False),), modes: dict | None = None,
              peer: bool = True, batch: int = 1) -> None:
    """One DiT forward of the 14B I2V + InfiniteTalk model (random weights, same seed for every mode) per
    (quantization, attention) mode; ratio against the first row, error = relative difference of the output
    to the first row's. diffusers' WanTransformer3DModel as the peer. variants: (fused element-wise kernels
    of wan/fused.py on?, torch.compile of the blocks of wan/block_compile.py on?) pairs to time each mode in."""
    import gc

    from torch._dynamo.utils import counters

    from wanfp4.wan import fused
    from wanfp4.wan.block_compile import compile_blocks

    from wanfp4.wan import services
    from wanfp4.bench.dit_forward import dit_inputs, time_calls, time_diffusers_forward
    from wanfp4.bench.seed_models import build_dit, dit_config

    cfg = dit_config(tiny)
    dtype = torch.bfloat16
    default_fused = fused.fused_enabled()
    shape = f"{width}x{height}x{frames}f ({(frames - 1) // 4 + 1} x {height // 16} x {width // 16} tokens)"
    args, kw = dit_inputs(cfg, batch, width, height, frames, device, dtype)
    base = ref = None
    for mode, attns in (modes or DIT_MODES).items():
        try:
            model = build_dit(mode, device, dtype, tiny)
        except Exception as err:  # noqa: BLE001
            _row(group="dit", mode=mode, shape=shape, note=f"FAILED build {type(err).__name__}: {str(err)[:300]}")
            continue
        for attn in attns:
            for fz, comp in variants:
                name = (f"{mode} + {attn}" + (" + fused elementwise" if fz else "")
                        + (" + torch.compile" if comp else "") + (f", batch {batch}" if batch != 1 else ""))
                skip = attn == NO_SELF_ATTENTION
                try:
                    fused.set_fused(fz)
                    dm = services.prepare_diffusion_model(model, "sdpa" if skip else attn, None, device, dtype)
                    compile_blocks(dm.model, comp)
                    graphs = counters["stats"]["unique_graphs"]
                    with self_attention_skipped() if skip else contextlib.nullcontext():
                        ms, first, peak = time_calls(lambda: dm.model(*args, **kw), iters, device)
                        with torch.inference_mode():
                            out = dm.model(*args, **kw).float()
                    if ref is None:
                        base, ref = ms, out
                    extra = f"; {counters['stats']['unique_graphs'] - graphs} graphs compiled" if comp else ""
                    _row(group="dit", mode=name, shape=shape, ms=_fmt(ms, 0), ratio=_fmt(base / ms, 2),
                         vs_ref=_fmt(rel(out, ref), 4),
                         note=f"first call {first:.0f} ms; peak {peak / 2**30:.1f} GiB; vs ref = output vs the first "
                              f"row{extra}")
                    del out
                except Exception as err:  # noqa: BLE001
                    _row(group="dit", mode=name, shape=shape, note=f"FAILED {type(err).__name__}: {str(err)[:300]}")
                finally:
                    fused.set_fused(default_fused)
                    compile_blocks(model, False)
        del model
        gc.collect()
        torch.cuda.empty_cache()
    if not peer:
        return
    try:
        d = time_diffusers_forward(cfg, width, height, frames, device, iters, dtype)
        _row(group="dit", mode=f"diffusers {d['version']} WanTransformer3DModel bf16 (SDPA)", shape=shape,
             ms=_fmt(d["ms"], 0), ratio=_fmt(base / d["ms"], 2) if base else "",
             note=f"no audio layers; first call {d['first_ms']:.0f} ms; peak {d['peak_bytes'] / 2**30:.1f} GiB")
    except Exception as err:  # noqa: BLE001
        _row(group="dit", mode="diffusers", shape=shape, note=f"FAILED {type(err).__name__}: {str(err)[:300]}")


def environment() -> str:
    import triton
    p = torch.cuda.get_device_properties(0)
    try:
        import subprocess
        drv = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True).stdout.strip()
    except Exception:  # noqa: BLE001
        drv = "?"
    return (f"GPU {p.name} (sm_{p.major}{p.minor}, {p.multi_processor_count} SMs), driver {drv}, torch {torch.__version__}, "
            f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, Triton {triton.__version__}, "
            f"Python {platform.python_version()}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attn", action="store_true")
    ap.add_argument("--linear", action="store_true")
    ap.add_argument("--tune", action="store_true", help="sweep attention tile configs at L=37800")
    ap.add_argument("--tune-configs", nargs="+", metavar="PV:BM,BN,WARPS,STAGES[,PREFETCH,WS,MAXNREG]",
                    help="--tune: only these configs; PV is fp8 or 16 (the P.V type), e.g. 16:128,64,4,3")
    ap.add_argument("--lengths", type=int, nargs="*", default=[37800, 32760, 75600])
    ap.add_argument("--fp4-time", action="store_true", help="also time the emulated FP4 attention")
    ap.add_argument("--dit", action="store_true", help="full 14B DiT forward per mode at the seed shape")
    ap.add_argument("--dit-size", type=int, nargs=3, default=[640, 720, 81], metavar=("W", "H", "FRAMES"))
    ap.add_argument("--fused", action="store_true",
                    help="--dit: time each mode without and with the fused element-wise kernels (default: with)")
    ap.add_argument("--dit-modes", nargs="+", metavar="QUANT:ATTN",
                    help="--dit: only these (quantization, attention) pairs; the first one is the reference. "
                         f"Attention {NO_SELF_ATTENTION!r} times the forward without its self-attention")
    ap.add_argument("--compile", action="store_true",
                    help="--dit: also time each mode with torch.compile of the blocks (wan/block_compile.py)")
    ap.add_argument("--dit-batch", type=int, default=1, help="--dit: batch size (3 = the sampler's batched CFG)")
    ap.add_argument("--no-peer", action="store_true", help="--dit: skip diffusers' forward")
    ap.add_argument("--md", help="write the table as markdown here")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU")
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False
    env = environment()
    print("#", env)
    print("# command:", " ".join(sys.argv))
    print("group | mode | shape | ms | TF/s | ratio | err iid | err biased K | vs ref | note")
    if a.tune:
        tune_attention(candidates=parse_tune_configs(a.tune_configs))
    if a.attn or not (a.linear or a.tune or a.dit):
        bench_attention(a.lengths, with_fp4_time=a.fp4_time)
    if a.dit:
        modes = None
        if a.dit_modes:
            modes = {}
            for pair in a.dit_modes:
                quant, _, attn = pair.partition(":")
                modes[quant] = modes.get(quant, ()) + (attn,)
        variants = [(fz, comp) for fz in ((False, True) if a.fused else (True,))
                    for comp in ((False, True) if a.compile else (False,))]
        bench_dit(*a.dit_size, variants=tuple(variants), modes=modes, peer=not a.no_peer, batch=a.dit_batch)
    if a.linear or not (a.attn or a.tune or a.dit):
        shapes = [(m, k, n) for m in (37800, 512) for k, n in ((5120, 5120), (5120, 13824), (13824, 5120))]
        bench_linear(shapes)
    if a.md:
        with open(a.md, "w") as f:
            f.write(f"{env}\n\ncommand: `{' '.join(sys.argv)}`\n\n")
            f.write("| group | mode | shape | ms | TF/s | ratio | err iid | err biased K | vs ref | note |\n")
            f.write("|" + "---|" * 10 + "\n")
            for r in ROWS:
                f.write("| " + " | ".join(str(r.get(c, "")) for c in ("group", "mode", "shape", "ms", "tflops", "ratio",
                                                                        "err_iid", "err_bias", "vs_ref", "note")) + " |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
