"""torch.compile of the transformer blocks (wan/block_compile.py): the choice, and that a compiled model
computes what the eager one does, through the pack's opaque kernels (graph breaks, no errors)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from wanfp4.bench.dit_forward import dit_inputs
from wanfp4.bench.seed_models import build_dit, dit_config
from wanfp4.wan import block_compile, fused, hw_tuning
from wanfp4.wan.block_compile import compile_blocks, decide_compile, is_compiled
from wanfp4.wan.hw_tuning import GpuInfo, format_plan


def test_choices_and_reasons(monkeypatch):
    assert decide_compile("off", "sm_90", True) == (False, "off on the tuning node")
    with pytest.raises(ValueError, match="torch_compile"):
        decide_compile("sometimes", "sm_90", True)
    on, why = decide_compile("on", "sm_90", True)
    assert on and "tuning node" in why
    monkeypatch.setattr(block_compile, "MEASURED_GAIN", {})
    on, why = decide_compile("auto", "sm_90", True)
    assert not on and "no measured gain on sm_90" in why
    monkeypatch.setattr(block_compile, "MEASURED_GAIN", {("sm_90", True): 1.01, ("sm_90", False): 1.20})
    on, why = decide_compile("auto", "sm_90", True)
    assert not on and "1.01x" in why
    on, why = decide_compile("auto", "sm_90", False)
    assert on and "1.20x" in why
    on, why = decide_compile("auto", "sm_90", False, auto_tuning=False)
    assert not on and "auto tuning" in why


def test_compile_unavailable_is_a_reason_not_a_crash(monkeypatch):
    monkeypatch.setattr(block_compile, "compile_available", lambda: "TorchDynamo does not import (ImportError)")
    on, why = decide_compile("on", "sm_90", True)
    assert not on and "TorchDynamo" in why


def test_the_sampler_plan_carries_the_choice_and_logs_it(monkeypatch):
    """plan_run (what the sampler calls) decides from the tuning dict, the GPU and the fused kernels' state."""
    monkeypatch.setattr(hw_tuning, "other_resident_bytes", lambda model, device: 0)
    monkeypatch.setattr(block_compile, "MEASURED_GAIN", {("sm_90", False): 1.2})
    model = SimpleNamespace(config=dit_config(False), activation_dtype=torch.bfloat16)
    settings = {"width": 640, "height": 720, "frames": 81, "cfg": 7.0}
    gpu = GpuInfo.simulate("h200")
    for tuning, fused_on, want in (({"auto": True}, True, False), ({"auto": True}, False, True),
                                   ({"auto": False}, False, False), ({"auto": False, "torch_compile": "on"}, True, True),
                                   ({"auto": True, "torch_compile": "off"}, False, False)):
        monkeypatch.setattr(fused, "fused_enabled", lambda: fused_on)
        monkeypatch.setattr(fused, "_kernels", lambda: object())
        plan = hw_tuning.plan_run(model, "fp8_e4m3fn_fast", "sageattn_3", settings, tuning, gpu=gpu)
        assert plan.torch_compile is want, (tuning, fused_on, plan.reasons["compile"])
        line = f"  torch.compile: {'on' if want else 'off'} ({plan.reasons['compile']})"
        assert line in format_plan(plan).splitlines()


@pytest.mark.parametrize("mode", ["disabled", "fp8_e4m3fn_scaled"])
def test_compiled_blocks_match_eager(mode):
    """backend "eager" runs TorchDynamo's capture (graph breaks at attention / QuantLinear kernels included)
    without code generation, so the outputs must agree to float rounding."""
    torch.manual_seed(0)
    cfg = dit_config(True)
    model = build_dit(mode, "cpu", torch.float32, tiny=True)
    args, kw = dit_inputs(cfg, 1, 64, 64, 9, "cpu", torch.float32)
    with torch.inference_mode():
        ref = model(*args, **kw)
        assert compile_blocks(model, True, backend="eager") == len(model.blocks)
        assert all(is_compiled(b) for b in model.blocks)
        out = model(*args, **kw)
        assert compile_blocks(model, True, backend="eager") == len(model.blocks)   # idempotent
        assert compile_blocks(model, False) == 0 and not any(is_compiled(b) for b in model.blocks)
        again = model(*args, **kw)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(again, ref)


def test_compile_needs_blocks():
    with pytest.raises(TypeError, match="no transformer blocks"):
        compile_blocks(torch.nn.Linear(2, 2), True)
