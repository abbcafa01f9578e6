"""The Hopper Gluon attention kernel builds for sm_90a without a GPU, and ptxas keeps its wgmmas async.

Compiled ahead of time (Triton + its bundled ptxas; skipped where Triton has no Gluon, as in CI). ptxas
silently serializes wgmmas (advisory C7514) when the kernel's schedule breaks its pipeline rules, which
would undo the kernel's only purpose, and heavy register spills would slow every iteration: both fail here
before any GPU run. Numerics are checked on the GPU (tests/test_gpu_kernels.py).
"""
from __future__ import annotations

import os
import re
import subprocess

import pytest
import torch

triton = pytest.importorskip("triton")
gluon_runtime = pytest.importorskip("triton.experimental.gluon._runtime")

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.experimental.gluon import language as gl  # noqa: E402
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor  # noqa: E402
from triton.runtime.jit import mangle_type  # noqa: E402

from wanfp4.attention import gluon_sageattn as G  # noqa: E402
from wanfp4.attention import gluon_sageattn_kernels as K  # noqa: E402

PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def _desc_type(dtype, gl_dtype, block):
    t = torch.empty(1024, 1024, dtype=dtype)
    return mangle_type(TensorDescriptor.from_tensor(t, block, gl.NVMMASharedLayout.get_default_for(block, gl_dtype)))


def _compile(pv_fp8: bool, config: tuple, d: int = 128):
    bm, bn, warps, stages, ks_ahead = (tuple(config) + (True,))[:5]
    v_type = (_desc_type(torch.float8_e4m3fn, gl.float8e4nv, [d, bn]) if pv_fp8
              else _desc_type(torch.bfloat16, gl.bfloat16, [bn, d]))
    sig = {"q_desc": _desc_type(torch.int8, gl.int8, [bm, d]), "qs_ptr": "*fp32",
           "k_desc": _desc_type(torch.int8, gl.int8, [bn, d]), "ks_ptr": "*fp32", "v_desc": v_type,
           "vs_ptr": "*fp32", "o_ptr": "*bf16", "Lq": "i32", "Lq_pad": "i32", "L": "i32", "Lpad": "i32",
           "H": "i32", "sob": "i32", "sol": "i32", "soh": "i32", "qk_scale": "fp32"}
    consts = {"D": d, "BM": bm, "BN": bn, "PV_FP8": pv_fp8, "STAGES": stages, "num_warps": warps,
              "KS_AHEAD": bool(ks_ahead)}
    sig.update({name: "constexpr" for name in consts})
    src = gluon_runtime.GluonASTSource(fn=K.attn_int8_wgmma_kernel, signature=sig, constexprs=consts)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})


@pytest.mark.skipif(not os.path.exists(PTXAS), reason="Triton's bundled ptxas is missing")
@pytest.mark.parametrize("pv_fp8,d,config", [(False, 128, None), (True, 128, None), (False, 64, None),
                                             (True, 64, None), (False, 128, (64, 64, 4, 2, False))])
def test_configs_build_async_and_without_spills(pv_fp8, d, config, tmp_path):
    kernel = _compile(pv_fp8, config or G.config_for(pv_fp8, d), d)
    ptx = tmp_path / "k.ptx"
    ptx.write_text(kernel.asm["ptx"])
    report = subprocess.run([PTXAS, "-arch=sm_90a", "-v", str(ptx), "-o", str(tmp_path / "k.cubin")],
                            capture_output=True, text=True, check=True).stderr
    assert "wgmma.mma_async" in kernel.asm["ptx"]
    assert "C7514" not in report and "serialized" not in report, report     # wgmmas stay async
    spilled = int(re.search(r"(\d+) bytes spill stores", report).group(1))
    assert spilled <= 64, report            # a few registers at most (the fp8 BN=128 tile spills 36 B)


def test_kernel_choice_follows_the_environment(monkeypatch):
    monkeypatch.setenv("WANFP4_SAGEATTN_KERNEL", "Triton")
    assert G.choice() == "triton"
    monkeypatch.setenv("WANFP4_SAGEATTN_KERNEL", "bogus")
    assert G.choice() == "auto"
    if not torch.cuda.is_available():
        assert G.unsupported_reason("cpu", 128) == "needs a CUDA GPU"
