"""Attention dispatch and the capability table: simulated GPUs and packages, fallbacks, log lines,
every mode on CPU, the package wrappers (against fake packages) and the kernel seam."""
import sys
import types
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from log_capture import captured_lines

from wanfp4.attention import (ALL_MODES, Env, attention, current_env, modes_for_model, register_mode,
                              reset_announcements, resolve_mode, unregister_mode)
from wanfp4.attention import backends, capabilities, dispatch, registry
from wanfp4.attention.capabilities import resolve
from wanfp4.attention.reference import REFERENCES, exact_attention, relative_error

BF16 = torch.bfloat16


@pytest.fixture
def lines():
    """Log lines of the wanfp4 logger during the test, starting from a clean 'logged once' memory."""
    reset_announcements()
    dispatch.clear_choices()
    with captured_lines() as got:
        yield got
    reset_announcements()
    dispatch.clear_choices()


@pytest.fixture
def fast_fp8_kernel():
    """Stands in for the later Triton kernel of sageattn_3_fp8 (a fast implementation)."""
    register_mode("sageattn_3_fp8", backends.sdpa, impl_name="fake triton", priority=50)
    yield
    registry.unregister("sageattn_3_fp8", "fake triton")


def sim(sm, *packages, **versions):
    return Env.simulated(sm, packages, versions=versions)


FA3_MISSING = ("needs the fa3_fwd_interface package (pip install fa3-fwd) or the flash_attn_interface package "
               "(build FlashAttention 3 from flash-attention/hopper)")

# (env, requested, head_dim, dtype) -> (mode that runs, reason)
TABLE = [
    (sim(None), "sageattn_3_fp8", 128, BF16, "sdpa", "not supported on this device (cpu)"),
    (sim(None), "flash_attn_2", 128, BF16, "sdpa", "not supported on this device (cpu)"),
    (sim(None), "auto", 128, BF16, "sdpa", None),
    (sim(86), "sageattn_3_fp8", 128, BF16, "sdpa", "not supported on this GPU (NVIDIA GeForce RTX 3090, sm_86)"),
    (sim(86), "sageattn_3", 128, BF16, "sageattn_3", None),              # runs its reference (asked by name)
    (sim(86), "flash_attn_3", 128, BF16, "sdpa", "not supported on this GPU (NVIDIA GeForce RTX 3090, sm_86)"),
    (sim(86, "flash_attn"), "flash_attn_3", 128, BF16, "flash_attn_2",
     "not supported on this GPU (NVIDIA GeForce RTX 3090, sm_86)"),
    (sim(86, "flash_attn"), "flash_attn_2", 128, torch.float32, "sdpa",
     "does not take float32 inputs (needs float16 or bfloat16)"),
    (sim(86, "sageattention", sageattention="1.0.6"), "auto", 128, BF16, "sageattn", None),
    (sim(89), "sageattn_3_fp8", 128, BF16, "sageattn_3_fp8", None),
    (sim(89), "sageattn_3_fp4", 128, BF16, "sdpa", "not supported on this GPU (NVIDIA GeForce RTX 4090, sm_89)"),
    (sim(89), "sageattn", 128, BF16, "sdpa", "needs the sageattention package (pip install sageattention)"),
    (sim(90), "sageattn_3_fp4", 128, BF16, "sdpa", "not supported on this GPU (NVIDIA H200, sm_90)"),
    (sim(90), "flash_attn_3", 128, BF16, "sdpa", FA3_MISSING),
    (sim(90, "fa3_fwd_interface"), "flash_attn_3", 128, BF16, "flash_attn_3", None),
    (sim(90, "fa3_fwd_interface"), "auto", 128, BF16, "flash_attn_3", None),
    (sim(90, "fa3_fwd_interface", "sageattention", sageattention="1.0.6"), "auto", 128, BF16, "flash_attn_3", None),
    (sim(90, "sageattention", sageattention="1.0.6"), "auto", 128, BF16, "sdpa", None),
    (sim(90, "sageattention", "fa3_fwd_interface", sageattention="2.2.0"), "auto", 128, BF16, "sageattn", None),
    (sim(90, "sageattention", sageattention="2.2.0"), "sageattn", 80, BF16, "sdpa",
     "does not support head dim 80 (needs 64, 96, 128)"),
    (sim(90, "fa3_fwd_interface"), "flash_attn_3", 512, BF16, "sdpa",
     "does not support head dim 512 (needs a multiple of 8 up to 256)"),
    (sim(120), "sageattn_3_fp4", 128, BF16, "sageattn_3_fp4", None),     # reference: no sageattn3
    (sim(120, "sageattn3"), "sageattn_3_fp4", 128, BF16, "sageattn_3_fp4", None),
    (sim(120, "sageattn3"), "auto", 128, BF16, "sdpa", None),             # fp4 never chosen by auto
    (sim(120, "sageattention", sageattention="1.0.6"), "sageattn", 128, BF16, "sdpa",
     "not supported on this GPU (NVIDIA GeForce RTX 5090, sm_120) by sageattention 1.0.6"),
    (sim(120, "sageattention", sageattention="2.2.0"), "sageattn", 128, BF16, "sageattn", None),
    (sim(100, "sageattention", sageattention="2.2.0"), "sageattn", 128, BF16, "sdpa",
     "not supported on this GPU (NVIDIA B200, sm_100) by sageattention 2.2.0"),
]


@pytest.mark.parametrize("env,requested,head_dim,dtype,mode,reason", TABLE)
def test_capability_table(lines, env, requested, head_dim, dtype, mode, reason):
    assert resolve_mode(requested, env, head_dim, dtype) == (mode, reason)


def test_which_implementation_runs():
    assert resolve("flash_attn_3", sim(90, "fa3_fwd_interface", "flash_attn_interface"), 128, BF16).impl.name \
        == "flash_attn_interface"
    assert resolve("flash_attn_3", sim(90, "fa3_fwd_interface"), 128, BF16).impl.name == "fa3_fwd_interface"
    assert resolve("sageattn_3_fp4", sim(120, "sageattn3"), 128, BF16).impl.name == "sageattn3"
    res = resolve("sageattn_3_fp4", sim(120, "sageattn3"), 96, BF16)        # sageattn3: head dim 64/128 only
    assert res.impl.name == "reference" and "head dim 96" in res.slow_note
    assert resolve("sageattn_3_fp8", sim(None), 128, BF16, force_reference=True).impl.name == "reference"


def test_fallback_log_line_exact_and_once(lines, fast_fp8_kernel):
    env = sim(90)
    for _ in range(3):
        assert resolve_mode("sageattn_3_fp4", env, 128, BF16) == (
            "sageattn_3_fp8", "not supported on this GPU (NVIDIA H200, sm_90)")
    assert lines == ["[INFO] sageattn_3_fp4 not supported on this GPU (NVIDIA H200, sm_90): using sageattn_3_fp8",
                     "[INFO] Using sageattn_3_fp8 attention"]
    # auto never picks the fp8 P.V mode (0.037 error floor); with nothing better installed it keeps sdpa
    assert resolve_mode("auto", env, 128, BF16, log=False) == ("sdpa", None)


def test_reference_only_mode_runs_by_name_with_one_warning(lines):
    for _ in range(2):
        resolve_mode("sageattn_3_fp8", sim(89), 128, BF16)
    assert lines == ["[WARN] sageattn_3_fp8: running the PyTorch reference (exact numerics, much slower than "
                     "sdpa): needs the triton package (pip install triton; CUDA builds of torch include it)",
                     "[INFO] Using sageattn_3_fp8 attention"]


def test_triton_kernels_take_their_modes_where_the_gpu_supports_them(lines):
    pytest.importorskip("triton")
    assert resolve_mode("sageattn_3_fp8", sim(90, "triton"), 128, BF16) == ("sageattn_3_fp8", None)
    # On Hopper the fallback passes over sageattn_3_fp8 (slower and less accurate than sageattn_3 there) ...
    assert resolve_mode("sageattn_3_fp4", sim(90, "triton"), 128, BF16) == (
        "sageattn_3", "not supported on this GPU (NVIDIA H200, sm_90)")
    assert "[INFO] sageattn_3_fp4 not supported on this GPU (NVIDIA H200, sm_90): using sageattn_3" in lines
    assert ("[INFO] sageattn_3_fp4: sageattn_3_fp8 passed over on this GPU, sageattn_3 is faster and more accurate "
            "here (bench/RESULTS.md)") in lines
    # ... and keeps it on Ada, where FP8 P.V is the fast path
    assert resolve_mode("sageattn_3_fp4", sim(89, "triton"), 128, BF16) == (
        "sageattn_3_fp8", "not supported on this GPU (NVIDIA GeForce RTX 4090, sm_89)")
    assert resolve_mode("sageattn_3_fp8", sim(86, "triton"), 128, BF16)[0] == "sageattn_3"
    hints = [line for line in lines if "sageattn_3 is faster here" in line]
    assert len(hints) == 1 and hints[0].startswith("[INFO] sageattn_3_fp8 on Hopper (sm_90)")   # once, only on sm_90


def test_triton_kernels_refuse_head_dims_their_int8_mma_cannot_take():
    """Triton's INT8 dot needs K >= 32: head dim 16 must fall back, not fail to compile on the GPU."""
    pytest.importorskip("triton")
    from wanfp4.attention.triton_sageattn import registry_supports
    assert registry_supports(80)(sim(90, "triton"), 16, BF16) == (
        "the Triton kernel needs a power-of-two head dim in 32..256, got 16")
    assert registry_supports(80)(sim(90, "triton"), 32, BF16) is None
    res = resolve("sageattn_3", sim(90, "triton"), 16, BF16)       # the PyTorch reference, with the reason logged
    assert res.impl.name == "reference" and "head dim in 32..256, got 16" in res.slow_note


def test_hopper_hint_only_for_our_triton_fp8_kernel():
    """The advice rests on our Triton kernels' H200 measurement: other implementations and GPUs get none."""
    impl = registry.Implementation("sageattn_3_fp8", "triton", backends.sdpa)
    assert "sageattn_3 is faster here" in capabilities._hint("sageattn_3_fp8", impl, sim(90))
    assert capabilities._hint("sageattn_3_fp8", impl, sim(89)) is None
    assert capabilities._hint("sageattn_3_fp8", replace(impl, name="sageattention"), sim(90)) is None
    assert capabilities._hint("sageattn_3", replace(impl, mode="sageattn_3"), sim(90)) is None


def test_missing_package_says_what_to_install(lines):
    resolve_mode("sageattn", sim(89), 128, BF16)
    resolve_mode("flash_attn_2", sim(89), 128, BF16)
    resolve_mode("flash_attn_3", sim(90), 128, BF16)
    assert lines[0] == "[INFO] sageattn needs the sageattention package (pip install sageattention): using sdpa"
    assert "[INFO] flash_attn_2 needs the flash_attn package (pip install flash-attn): using sdpa" in lines
    assert f"[INFO] flash_attn_3 {FA3_MISSING}: using sdpa" in lines


def test_unknown_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown attention mode 'sage'.*sageattn_3_fp8"):
        resolve_mode("sage", sim(90))
    with pytest.raises(ValueError, match="unknown attention mode 'fa2'"):
        attention(*[torch.randn(1, 4, 1, 8)] * 3, mode="fa2")
    with pytest.raises(ValueError, match="unknown attention mode"):
        modes_for_model("fp8")


def test_bad_shapes_are_clear_errors():
    q = torch.randn(1, 5, 2, 8)
    with pytest.raises(ValueError, match=r"\[B, L, H, D\]"):
        attention(q[0], q[0], q[0])
    with pytest.raises(ValueError, match="k and v"):
        attention(q, torch.randn(1, 6, 2, 8), torch.randn(1, 7, 2, 8))


# ----------------------------------------------------------------------------- every mode on CPU
@pytest.mark.parametrize("mode", ALL_MODES)
@pytest.mark.parametrize("dtype", [torch.float32, BF16])
def test_every_mode_on_cpu_ragged_and_lq_ne_lk(lines, mode, dtype):
    q, k, v = torch.randn(2, 37, 3, 16, dtype=dtype), torch.randn(2, 53, 3, 16, dtype=dtype), \
        torch.randn(2, 53, 3, 16, dtype=dtype)
    out = attention(q, k, v, mode)
    assert out.shape == (2, 37, 3, 16) and out.dtype == dtype
    # on CPU every mode is sdpa (GPU modes fall back), so the result is exactly sdpa's
    want = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    assert torch.equal(out, want)


@pytest.mark.parametrize("mode", list(REFERENCES))
def test_force_reference_runs_the_quantized_numerics_on_cpu(lines, mode):
    q, k, v = (torch.randn(1, n, 2, 32) for n in (45, 70, 70))
    out = attention(q, k, v, mode, force_reference=True)
    exact = exact_attention(q, k, v)
    assert out.shape == q.shape and out.dtype == torch.float32
    assert torch.equal(out, REFERENCES[mode](q, k, v))
    assert 1e-4 < relative_error(out, exact) < 0.35          # quantized: close, but not sdpa
    assert lines == [f"[INFO] Using {mode} attention"]


def test_cpu_fallback_logs_once_across_calls(lines):
    q = torch.randn(1, 9, 2, 16)
    for _ in range(3):
        attention(q, q, q, "sageattn_3_fp8")
    assert lines == ["[INFO] sageattn_3_fp8 not supported on this device (cpu): using sdpa",
                     "[INFO] Using sdpa attention"]


# ----------------------------------------------------------------------------- package wrappers
def _sdpa_bhld(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


@pytest.fixture
def fake_packages(monkeypatch):
    """Fake flash_attn / fa3 / sageattention / sageattn3 modules that record what they were given."""
    seen = {}

    def nhd(name):
        def fn(q, k, v, **kw):
            seen[name] = (q.dtype, tuple(q.shape), kw)
            out = _sdpa_bhld(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
            return (out, None) if name != "sageattention" else out
        return fn

    def hnd(q, k, v, **kw):
        seen["sageattn3"] = (q.dtype, tuple(q.shape), kw)
        return _sdpa_bhld(q, k, v)

    mods = {"flash_attn": {"flash_attn_func": nhd("flash_attn")},
            "fa3_fwd_interface": {"flash_attn_func": nhd("fa3_fwd_interface")},
            "sageattention": {"sageattn": nhd("sageattention")},
            "sageattn3": {"sageattn3_blackwell": hnd}}
    for name, attrs in mods.items():
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(**attrs))
    monkeypatch.setattr(backends, "_imported", {})
    return seen


def test_package_wrappers_convert_layout_and_dtype(fake_packages):
    q, k, v = torch.randn(2, 11, 3, 64), torch.randn(2, 13, 3, 64), torch.randn(2, 13, 3, 64)
    want = exact_attention(q, k, v)
    calls = {"flash_attn": backends.flash_attn_2, "sageattention": backends.sageattn, "sageattn3": backends.sageattn3,
             "fa3_fwd_interface": lambda *t: backends.flash_attn_3("fa3_fwd_interface", *t)}
    for name, fn in calls.items():
        out = fn(q, k, v)
        assert out.shape == (2, 11, 3, 64), name
        assert relative_error(out, want) < 0.01, name          # bf16 kernels on fp32 inputs
    assert fake_packages["flash_attn"][:2] == (BF16, (2, 11, 3, 64))            # NHD, fp32 -> bf16
    assert fake_packages["sageattention"][2] == {"tensor_layout": "NHD", "is_causal": False}
    assert fake_packages["sageattn3"][1] == (2, 3, 11, 64)                       # HND
    assert fake_packages["sageattn3"][2]["per_block_mean"] is True
    assert backends.flash_attn_3("fa3_fwd_interface", q.half(), k.half(), v.half()).dtype == BF16  # no fp16 in fa3-fwd
    assert fake_packages["fa3_fwd_interface"][0] == BF16


def test_broken_package_falls_back_once(lines, monkeypatch):
    """A package found by find_spec that fails to import: WARN once, drop it, resolve again."""
    key = ("cpu", None)
    env = current_env("cpu")
    monkeypatch.setitem(capabilities._ENV_CACHE, key, replace(env, packages=env.packages | {"flash_attn"}))
    monkeypatch.setattr(capabilities, "_BROKEN", {})

    def broken(q, k, v):
        raise backends.PackageImportError("flash_attn", ImportError("libcudart.so.13: cannot open"))

    register_mode("probe_mode", broken, supports=lambda env, d, t: capabilities.needs_package(env, "flash_attn"))
    try:
        q = torch.randn(1, 6, 2, 8)
        out = attention(q, q, q, "probe_mode")
        torch.testing.assert_close(out, backends.sdpa(q, q, q))
        assert "flash_attn" not in current_env("cpu").packages
        assert lines[0] == "[INFO] Using probe_mode attention"
        assert lines[1].startswith("[WARN] the flash_attn package is installed but failed to import (ImportError: ")
        assert lines[2] == ("[INFO] probe_mode needs the flash_attn package (pip install flash-attn): using sdpa")
    finally:
        unregister_mode("probe_mode")
    assert "probe_mode" not in capabilities.MODES and not registry.implementations("probe_mode")


def test_current_env_is_cached_and_plausible():
    env = current_env("cpu")
    assert env is current_env("cpu")
    assert env.device_type == "cpu" and env.capability is None
    assert env.packages <= set(capabilities.PACKAGES)


# ----------------------------------------------------------------------------- roles
@pytest.mark.parametrize("requested,cross", [("sdpa", "sdpa"), ("flash_attn_2", "flash_attn_2"),
                                             ("flash_attn_3", "flash_attn_3"), ("sageattn", "sdpa"),
                                             ("sageattn_3", "sdpa"), ("sageattn_3_fp8", "sdpa"),
                                             ("sageattn_3_fp4", "sdpa"), ("auto", "sdpa")])
def test_modes_for_model(requested, cross):
    assert modes_for_model(requested) == {"self": requested, "cross": cross, "audio": cross}
