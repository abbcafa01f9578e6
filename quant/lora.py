"""Merge LoRAs into base weights before quantization (e.g. the distill LoRAs for 4-8 step runs).

Key layouts (each optionally prefixed by `diffusion_model.` / `model.diffusion_model.` /
`transformer.`, or written kohya-style `lora_unet_blocks_0_self_attn_q.<suffix>`):
  <path>.lora_down.weight + <path>.lora_up.weight  [+ <path>.alpha]   delta = up @ down
  <path>.lora_A.weight    + <path>.lora_B.weight   [+ <path>.alpha]   delta = B @ A
  <path>.diff (full weight delta), <path>.diff_b (bias delta)
W += strength * scale * delta with scale = alpha / rank when `alpha` is present, else 1.
Convolution LoRAs (patch_embedding) are merged with the delta reshaped to the kernel shape.
"""
from __future__ import annotations

import re
from collections import Counter

import torch
import torch.nn as nn

from ..log import info, warn
from ..wan.safetensors_io import load_tensors
from .linear import QuantLinear

_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "model.")
_PAIRS = {"lora_down.weight": ("down", "ud"), "lora_up.weight": ("up", "ud"),
          "lora_A.weight": ("down", "ab"), "lora_B.weight": ("up", "ab")}
_SUFFIX = re.compile(r"^(.*)\.(lora_down\.weight|lora_up\.weight|lora_A\.weight|lora_B\.weight|alpha|diff|diff_b)$")


class LoraError(ValueError):
    """A LoRA file cannot be applied to this model."""


def _strip(path: str) -> str:
    for p in _PREFIXES:
        if path.startswith(p):
            return path[len(p):]
    return path


def _parse(lora: dict[str, torch.Tensor]) -> tuple[dict[str, dict], Counter]:
    """{module path (as in the LoRA, prefix stripped): {down, up, alpha, diff, diff_b}}, unknown-key counts."""
    groups: dict[str, dict] = {}
    unknown: Counter = Counter()
    for key, t in lora.items():
        m = _SUFFIX.match(key)
        if not m:
            unknown[key.rsplit(".", 1)[-1]] += 1
            continue
        path, suffix = _strip(m.group(1)), m.group(2)
        slot = _PAIRS[suffix][0] if suffix in _PAIRS else suffix
        groups.setdefault(path, {})[slot] = t
    return groups, unknown


class _Targets:
    """Module paths of the model (or weight keys of a state dict), also findable kohya-style."""

    def __init__(self, names: list[str]):
        self.names = set(names)
        self.underscore = {"lora_unet_" + n.replace(".", "_"): n for n in names}

    def find(self, path: str) -> str | None:
        if path in self.names:
            return path
        return self.underscore.get(path if path.startswith("lora_unet_") else "lora_unet_" + path)


def _delta(group: dict, shape: torch.Size, strength: float, where: str) -> torch.Tensor | None:
    if "down" in group or "up" in group:
        if "down" not in group or "up" not in group:
            raise LoraError(f"{where}: has only one of the two LoRA matrices (down/A and up/B)")
        down, up = group["down"].float().flatten(1), group["up"].float().flatten(1)
        rank = down.shape[0]
        scale = float(group["alpha"]) / rank if "alpha" in group else 1.0
        d = up @ down
    elif "diff" in group:
        d, scale = group["diff"].float(), 1.0
    else:
        return None
    if d.numel() != shape.numel():
        raise LoraError(f"{where}: LoRA delta has {tuple(d.shape)} elements for a weight of shape {tuple(shape)}; "
                        "the LoRA is for a different model")
    return d.reshape(shape) * (strength * scale)


@torch.no_grad()
def merge_loras(target, loras: list[tuple[str, float]]):
    """Merge [(lora_path, strength), ...] into `target` (an nn.Module or a state dict of base weights).

    State dicts are updated in place (weights keep their dtype) and returned; modules too.
    QuantLinear layers are dequantized, merged and re-quantized in their mode.
    """
    is_module = isinstance(target, nn.Module)
    if is_module:
        modules = dict(target.named_modules())
        targets = _Targets([n for n, m in modules.items() if getattr(m, "weight", None) is not None])
    else:
        targets = _Targets([_strip(k[: -len(".weight")]) for k in target if k.endswith(".weight")])
        state_keys = {_strip(k[: -len(".weight")]): k[: -len(".weight")] for k in target if k.endswith(".weight")}
    for path, strength in loras:
        groups, unknown = _parse(load_tensors(path))
        merged, unmatched = 0, 0
        for lpath, group in groups.items():
            name = targets.find(lpath)
            if name is None:
                unmatched += 1
                continue
            where = f"{path}: {lpath}"
            if is_module:
                merged += _merge_module(modules[name], group, strength, where)
            else:
                merged += _merge_state(target, state_keys[name], group, strength, where)
        if merged == 0:
            raise LoraError(f"{path}: LoRA matches no layer of this model ({len(groups)} LoRA layers, e.g. "
                            f"{next(iter(groups), 'none')!r}); is it a LoRA for Wan2.1 14B?")
        if unknown or unmatched:
            warn(f"LoRA {path}: ignored {sum(unknown.values())} unknown keys "
                 f"({', '.join(f'{k}: {v}' for k, v in unknown.most_common(3))}) and {unmatched} layers not in the model")
        info(f"LoRA {path} merged into {merged} layers (strength {strength})")
    return target


def _merge_module(m: nn.Module, group: dict, strength: float, where: str) -> int:
    if isinstance(m, QuantLinear):
        w = m.dequantize_weight(torch.float32)
        d = _delta(group, w.shape, strength, where)
        if d is not None:
            m.quantize_weight_(w + d.to(w.device))
    else:
        d = _delta(group, m.weight.shape, strength, where)
        if d is not None:
            m.weight.data = (m.weight.float() + d.to(m.weight.device)).to(m.weight.dtype)
    if "diff_b" in group and getattr(m, "bias", None) is not None:
        m.bias.data = (m.bias.float() + strength * group["diff_b"].float().to(m.bias.device)).to(m.bias.dtype)
        return 1
    return int(d is not None)


def _merge_state(state: dict, base: str, group: dict, strength: float, where: str) -> int:
    w = state[base + ".weight"]
    if w.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise LoraError(f"{where}: {base}.weight is {w.dtype}; merge LoRAs into the base-precision model "
                        "(before quantization), or pass the quantized model itself")
    d = _delta(group, w.shape, strength, where)
    if d is not None:
        state[base + ".weight"] = (w.float() + d).to(w.dtype)
    if "diff_b" in group and base + ".bias" in state:
        b = state[base + ".bias"]
        state[base + ".bias"] = (b.float() + strength * group["diff_b"].float()).to(b.dtype)
        return 1
    return int(d is not None)
