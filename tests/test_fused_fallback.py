"""The fused element-wise path never stops a generation: a kernel that fails to compile or launch switches
the fused path off with one warning and the step runs the PyTorch path (no Triton or GPU needed here)."""
import torch
from log_capture import captured_lines

from wanfp4.wan import fused
from wanfp4.wan.norms import layer_norm


class _Broken:
    def __getattr__(self, name):
        def fail(*_a):
            raise RuntimeError(f"{name}: no kernel image for this GPU")
        return fail


def test_failing_kernel_falls_back_once_with_a_warning(monkeypatch):
    monkeypatch.setattr(fused, "_kernels", lambda: _Broken())
    monkeypatch.setattr(fused, "_STATE", {"enabled": True})
    monkeypatch.setattr(fused, "_use", lambda *ts: fused._STATE["enabled"])
    with captured_lines() as got:
        x, y = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
        scale, shift, gate = (torch.randn(2, 1, 16) for _ in range(3))
        norm = layer_norm(16, 1e-6, affine=False)
        want_mod = (norm(x) * (1 + scale) + shift).to(torch.bfloat16)
        assert torch.equal(fused.modulate(norm, x, scale, shift, torch.bfloat16), want_mod)
        assert fused._STATE["enabled"] is False                    # off for the rest of the process
        assert torch.equal(fused.gated_residual(x, y, gate), x + y * gate)
    warnings = [line for line in got if "Fused element-wise kernels failed" in line]
    assert len(warnings) == 1 and "no kernel image" in warnings[0] and warnings[0].startswith("[WARN]")
