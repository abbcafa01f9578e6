"""`quantize_model`: the single place where block Linears become QuantLinear modules."""
from __future__ import annotations

import torch
import torch.nn as nn

from .capabilities import Environment, choose_auto_mode, detect_environment, log_plan, resolve_compute
from .linear import QuantLinear
from .modes import KEEP_IN_BASE_PRECISION, get_mode, should_quantize


def quantize_model(model: nn.Module, mode: str, keep: tuple[str, ...] | list[str] = KEEP_IN_BASE_PRECISION,
                   compute_dtype: torch.dtype = torch.bfloat16, env: Environment | None = None,
                   device: torch.device | str | None = None, vram_bytes: int | None = None) -> nn.Module:
    """Swap every block Linear (modes.QUANTIZED_LINEARS, minus `keep`) for a QuantLinear in `mode`.

    Works in place on real or meta-device models (meta: storage is allocated on meta and the
    loader fills it through QuantLinear._load_from_state_dict). Already-quantized layers are
    re-quantized. `mode="auto"` is resolved with choose_auto_mode for `env` (default: the device
    `device`, else cuda:0 / CPU) and `vram_bytes` (default: total memory of that GPU).
    `compute_dtype` is the base precision of kept weights of quantized Linears (biases, dense).
    Returns the model; the choice is recorded in `model.wanfp4_quant`.
    """
    env = env or detect_environment(device)
    if mode == "auto":
        from .sizes import model_bytes_per_mode
        if vram_bytes is None and env.cc is not None and torch.cuda.is_available():
            vram_bytes = torch.cuda.get_device_properties(torch.device(device or "cuda")).total_memory
        choice = choose_auto_mode(env.cc, vram_bytes, model_bytes_per_mode(model, compute_dtype, keep), env=env)
        from ..log import info
        info(f"auto quantization: {choice.mode} ({choice.reason})")
        mode = choice.mode
    get_mode(mode)
    plan = resolve_compute(mode, env)
    replaced = 0
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            full = f"{parent_name}.{child_name}" if parent_name else child_name
            if not isinstance(child, (nn.Linear, QuantLinear)) or not should_quantize(full, keep):
                continue
            if isinstance(child, QuantLinear):
                new = _requantize(child, mode, compute_dtype, plan.path)
            else:
                new = QuantLinear.from_linear(child, mode, compute_dtype, plan.path)
            setattr(parent, child_name, new)
            replaced += 1
    model.wanfp4_quant = {"mode": mode, "compute_path": plan.path, "keep": list(keep),
                          "compute_dtype": str(compute_dtype).removeprefix("torch."), "layers": replaced}
    if replaced:
        log_plan(plan, env)
    return model


def _requantize(old: QuantLinear, mode: str, base_dtype: torch.dtype, path: str) -> QuantLinear:
    dev = old.weight.device
    new = QuantLinear(old.in_features, old.out_features, old.bias is not None, mode, base_dtype, dev, path)
    if dev.type != "meta":
        new.quantize_weight_(old.dequantize_weight(torch.float32))
        if old.bias is not None:
            new.bias = nn.Parameter(old.bias.detach().to(base_dtype), requires_grad=False)
    return new


def set_compute_path(model: nn.Module, env: Environment) -> str | None:
    """Re-resolve the compute path of every QuantLinear for a new device (e.g. after moving to a GPU)."""
    path = None
    for m in model.modules():
        if isinstance(m, QuantLinear):
            m.compute_path = path = resolve_compute(m.mode, env).path
    return path
