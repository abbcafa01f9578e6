"""Exact weight bytes of a model under every mode, computed from shapes alone (meta device)."""
from __future__ import annotations

import torch
import torch.nn as nn

from .linear import QuantLinear, linear_storage_bytes
from .modes import KEEP_IN_BASE_PRECISION, WEIGHT_MODES, should_quantize


def _meta_model(config) -> nn.Module:
    from ..wan.model import WanModel
    with torch.device("meta"):
        return WanModel(config)


def quantized_size_bytes(model_or_config, mode: str, base_dtype: torch.dtype = torch.bfloat16,
                         keep: tuple[str, ...] | list[str] = KEEP_IN_BASE_PRECISION) -> int:
    """Bytes of all weights (params + buffers) when the block Linears are stored in `mode` and
    everything else in `base_dtype`. Accepts a WanConfig (built on meta) or any nn.Module
    (nn.Linear / QuantLinear layers are counted as they would be stored in `mode`).
    """
    model = model_or_config if isinstance(model_or_config, nn.Module) else _meta_model(model_or_config)
    base = torch.empty((), dtype=base_dtype).element_size()
    total = 0
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, QuantLinear)) and should_quantize(name, keep):
            total += linear_storage_bytes(mode, n=m.out_features, k=m.in_features, bias=m.bias is not None,
                                          base_dtype=base_dtype)
            continue
        for p in m.parameters(recurse=False):
            total += p.numel() * base
        for b in m.buffers(recurse=False):
            total += b.numel() * b.element_size()
    return total


def model_bytes_per_mode(model_or_config, base_dtype: torch.dtype = torch.bfloat16,
                         keep: tuple[str, ...] | list[str] = KEEP_IN_BASE_PRECISION) -> dict[str, int]:
    model = model_or_config if isinstance(model_or_config, nn.Module) else _meta_model(model_or_config)
    return {mode: quantized_size_bytes(model, mode, base_dtype, keep) for mode in WEIGHT_MODES}
