"""Recognise the on-disk layout of one Linear's tensors and convert it to our canonical form.

Layouts accepted under a Linear's prefix (`<prefix>weight`, ...):
- base precision `weight` (bf16/fp16/fp32)                                   -> "dense"
- fp8 `weight` (+ `scale_weight` or `weight_scale`, scalar or per-channel; `scale_input` is
  accepted and ignored: activations are scaled per token)  [ComfyUI legacy scaled_fp8, Kijai]
- ComfyUI `comfy_quant` (uint8 JSON) with format float8_e4m3fn / float8_e5m2 (`weight_scale`)
  or nvfp4 (`weight` high-nibble-first, `weight_scale` e4m3 in the cuBLAS swizzled layout,
  `weight_scale_2` fp32)
- ours: fp8 `weight` + `weight_scale` [N]; nvfp4 `weight` (low nibble first) +
  `weight_block_scale` e4m3 [N, Kp/16] + `weight_tensor_scale` fp32; mxfp4 `weight` +
  `weight_block_scale` uint8 e8m0 [N, Kp/32]
Canonical forms are exactly our own layout, so same-format loads are bit-exact copies.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from .fp4 import (MXFP4_BLOCK, NVFP4_BLOCK, dequantize_mxfp4, dequantize_nvfp4, from_blocked, padded_k,
                  swap_nibbles)
from .fp8 import dequantize_fp8_weight

FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)
BASE = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
COMFY_FORMATS = ("float8_e4m3fn", "float8_e5m2", "nvfp4")


class QuantFormatError(ValueError):
    """A checkpoint tensor is not in a layout the quantized Linear can load."""


@dataclass
class IncomingWeight:
    kind: str                               # dense | fp8 | nvfp4 | mxfp4
    tensors: dict[str, torch.Tensor]        # canonical names (our layout)
    source: str                             # human description for logs/errors
    consumed: set[str] = field(default_factory=set)


def _comfy_format(t: torch.Tensor, key: str) -> dict:
    try:
        return json.loads(bytes(t.detach().cpu().to(torch.uint8).flatten().tolist()).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise QuantFormatError(f"{key}: comfy_quant entry is not valid JSON ({e}); the file is damaged") from None


def _per_channel(scale: torch.Tensor, n: int, key: str) -> torch.Tensor:
    s = scale.float().flatten()
    if s.numel() == 1:
        return s.expand(n).clone()
    if s.numel() == n:
        return s.clone()
    raise QuantFormatError(f"{key}: scale has {s.numel()} values; expected 1 (per tensor) or {n} (per output channel)")


def _check_shape(t: torch.Tensor, want: tuple, key: str, what: str) -> None:
    if tuple(t.shape) != tuple(want):
        raise QuantFormatError(f"{key}: {what} has shape {tuple(t.shape)}, the model expects {tuple(want)}; "
                               "the checkpoint is for a different model size or variant")


def parse_linear_state(local: dict[str, torch.Tensor], prefix: str, n: int, k: int) -> IncomingWeight | None:
    """`local` = this Linear's tensors without the prefix. None when there is no `weight`."""
    w = local.get("weight")
    if w is None:
        return None
    key = prefix + "weight"
    if "comfy_quant" in local:
        fmt = _comfy_format(local["comfy_quant"], prefix + "comfy_quant").get("format")
        if fmt in ("float8_e4m3fn", "float8_e5m2"):
            return _fp8(local, prefix, n, k, ("weight_scale",), f"ComfyUI comfy_quant {fmt}", {"comfy_quant"})
        if fmt == "nvfp4":
            return _comfy_nvfp4(local, prefix, n, k)
        raise QuantFormatError(f"{prefix}comfy_quant: format {fmt!r} is not supported (supported: "
                               f"{', '.join(COMFY_FORMATS)}); use a bf16/fp8/nvfp4 checkpoint of this model")
    if w.dtype in FP8:
        return _fp8(local, prefix, n, k, ("scale_weight", "weight_scale"), "fp8")
    if w.dtype == torch.uint8:
        bs = local.get("weight_block_scale")
        if bs is None:
            raise QuantFormatError(f"{key}: packed 4-bit weight without block scales (weight_block_scale, or "
                                   f"a comfy_quant entry); the file is incomplete")
        if "weight_tensor_scale" in local:
            return _ours_nvfp4(local, prefix, n, k)
        return _ours_mxfp4(local, prefix, n, k)
    if w.dtype in BASE:
        _check_shape(w, (n, k), key, "weight")
        return IncomingWeight("dense", {"weight": w}, "base precision", {"weight"})
    raise QuantFormatError(f"{key}: dtype {w.dtype} is not a supported weight dtype (bf16/fp16/fp32, fp8, packed fp4)")


def _fp8(local, prefix, n, k, scale_names, source, extra: set[str] = frozenset()) -> IncomingWeight:
    w = local["weight"]
    if w.dtype not in FP8:
        raise QuantFormatError(f"{prefix}weight: {source} layout needs an fp8 weight, got {w.dtype}")
    _check_shape(w, (n, k), prefix + "weight", "weight")
    consumed = ({"scale_input", "input_scale"} & set(local)) | {"weight"} | set(extra)
    scale = None
    for name in scale_names:
        if name in local:
            scale = _per_channel(local[name], n, prefix + name)
            consumed.add(name)
            break
    if scale is None:
        scale = torch.ones(n, device=w.device)
    else:
        source += " (scaled)"
    return IncomingWeight("fp8", {"weight": w, "weight_scale": scale}, source, consumed)


def _need(local, prefix, name, what) -> torch.Tensor:
    if name not in local:
        raise QuantFormatError(f"{prefix}{name}: missing ({what}); the file is incomplete")
    return local[name]


def _comfy_nvfp4(local, prefix, n, k) -> IncomingWeight:
    w = local["weight"].view(torch.uint8)
    bs = _need(local, prefix, "weight_scale", "nvfp4 e4m3 block scales")
    ts = _need(local, prefix, "weight_scale_2", "nvfp4 fp32 tensor scale")
    kp = padded_k(k, NVFP4_BLOCK)
    if w.dim() != 2 or w.shape[0] < n or w.shape[1] * 2 < kp:
        raise QuantFormatError(f"{prefix}weight: nvfp4 packed shape {tuple(w.shape)} cannot hold a {n}x{k} weight; "
                               "the checkpoint is for a different model")
    rows, blocks = w.shape[0], w.shape[1] * 2 // NVFP4_BLOCK
    grid = from_blocked(bs.view(torch.uint8).flatten(), rows, blocks)
    packed = swap_nibbles(w[:n, : kp // 2]).contiguous()
    scales = grid[:n, : kp // NVFP4_BLOCK].contiguous().view(torch.float8_e4m3fn)
    consumed = {"weight", "weight_scale", "weight_scale_2", "comfy_quant"} | ({"input_scale"} & set(local))
    return IncomingWeight("nvfp4", {"weight": packed, "weight_block_scale": scales,
                                    "weight_tensor_scale": ts.float().reshape(())}, "ComfyUI comfy_quant nvfp4", consumed)


def _ours_nvfp4(local, prefix, n, k) -> IncomingWeight:
    kp = padded_k(k, NVFP4_BLOCK)
    w, bs, ts = local["weight"], local["weight_block_scale"], local["weight_tensor_scale"]
    _check_shape(w, (n, kp // 2), prefix + "weight", "nvfp4 packed weight")
    _check_shape(bs, (n, kp // NVFP4_BLOCK), prefix + "weight_block_scale", "nvfp4 block scale")
    if bs.dtype != torch.float8_e4m3fn:
        raise QuantFormatError(f"{prefix}weight_block_scale: nvfp4 block scales must be float8_e4m3fn, got {bs.dtype}")
    return IncomingWeight("nvfp4", {"weight": w, "weight_block_scale": bs, "weight_tensor_scale": ts.float().reshape(())},
                          "nvfp4", {"weight", "weight_block_scale", "weight_tensor_scale"})


def _ours_mxfp4(local, prefix, n, k) -> IncomingWeight:
    kp = padded_k(k, MXFP4_BLOCK)
    w, bs = local["weight"], local["weight_block_scale"]
    _check_shape(w, (n, kp // 2), prefix + "weight", "mxfp4 packed weight")
    _check_shape(bs, (n, kp // MXFP4_BLOCK), prefix + "weight_block_scale", "mxfp4 e8m0 block scale")
    return IncomingWeight("mxfp4", {"weight": w, "weight_block_scale": bs.view(torch.uint8)}, "mxfp4",
                          {"weight", "weight_block_scale"})


def dequantize_incoming(inc: IncomingWeight, k: int) -> torch.Tensor:
    """fp32 [N, K] of any canonical incoming weight."""
    t = inc.tensors
    if inc.kind == "dense":
        return t["weight"].float()
    if inc.kind == "fp8":
        return dequantize_fp8_weight(t["weight"], t["weight_scale"])
    if inc.kind == "nvfp4":
        return dequantize_nvfp4(t["weight"], t["weight_block_scale"], t["weight_tensor_scale"], k)
    return dequantize_mxfp4(t["weight"], t["weight_block_scale"], k)
