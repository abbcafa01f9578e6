"""Weight quantization modes (the names users pick), their storage, and which Linears they touch.

Storage kinds: "dense" (base precision), "fp8" (fp8 + per-output-channel fp32 scale),
"nvfp4" (packed e2m1, block 16, e4m3 block scale + fp32 tensor scale), "mxfp4" (packed e2m1,
block 32, e8m0 block scale). Compute paths are chosen per GPU in capabilities.py.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ModeSpec:
    name: str
    storage: str                      # dense | fp8 | nvfp4 | mxfp4
    fp8_dtype: torch.dtype | None = None
    scaled: bool = True               # fp8 only: per-channel scale computed when quantizing
    compute: str = "dense"            # preferred compute path (before capability fallback)
    summary: str = ""


MODES: dict[str, ModeSpec] = {m.name: m for m in (
    ModeSpec("disabled", "dense", compute="dense", summary="base precision (bf16/fp16/fp32)"),
    ModeSpec("fp8_e4m3fn", "fp8", torch.float8_e4m3fn, scaled=False, compute="upcast",
             summary="fp8 e4m3 weights, direct cast, upcast to the compute dtype"),
    ModeSpec("fp8_e5m2", "fp8", torch.float8_e5m2, scaled=False, compute="upcast",
             summary="fp8 e5m2 weights, direct cast, upcast to the compute dtype"),
    ModeSpec("fp8_e4m3fn_scaled", "fp8", torch.float8_e4m3fn, compute="upcast",
             summary="fp8 e4m3 + per-output-channel scale, upcast x scale"),
    ModeSpec("fp8_e4m3fn_fast", "fp8", torch.float8_e4m3fn, compute="w8a8",
             summary="W8A8: per-channel fp8 weights x per-token fp8 activations (sm_89+)"),
    ModeSpec("fp4_experimental", "mxfp4", compute="w4a16",
             summary="MXFP4 (e2m1, block 32, e8m0 scale), dequantized to the compute dtype"),
    ModeSpec("fp4_scaled", "nvfp4", compute="w4a16",
             summary="NVFP4 (e2m1, block 16, e4m3 scale + fp32 tensor scale), W4A16"),
    ModeSpec("fp4_scaled_fast", "nvfp4", compute="w4a4",
             summary="NVFP4, W4A4 on sm_100/sm_120, W4A8 on sm_89/sm_90, else W4A16"),
)}

WEIGHT_MODES: tuple[str, ...] = tuple(MODES)           # the dropdown, without "auto"
ALL_MODES: tuple[str, ...] = ("auto",) + WEIGHT_MODES

# Parameters that always stay in base precision (matched against dotted module-path components:
# a component equal to, or starting with, one of these). Biases of quantized Linears also stay
# in base precision (QuantLinear keeps `bias` unquantized).
KEEP_IN_BASE_PRECISION: tuple[str, ...] = (
    "patch_embedding", "text_embedding", "time_embedding", "time_projection", "img_emb",
    "head", "audio_proj", "modulation", "norm",
)

# The Linears that are quantized: inside `blocks.N.` only.
QUANTIZED_LINEARS: tuple[str, ...] = (
    "self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
    "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "cross_attn.k_img", "cross_attn.v_img",
    "ffn.0", "ffn.2",
    "audio_cross_attn.q_linear", "audio_cross_attn.kv_linear", "audio_cross_attn.proj",
)
_BLOCK_LINEAR = re.compile(r"(?:^|\.)blocks\.\d+\.(" + "|".join(re.escape(s) for s in QUANTIZED_LINEARS) + r")$")


def get_mode(name: str) -> ModeSpec:
    try:
        return MODES[name]
    except KeyError:
        raise ValueError(f"unknown quantization mode {name!r}; choose one of: {', '.join(ALL_MODES)}") from None


def is_kept(module_path: str, keep: tuple[str, ...] | list[str] = KEEP_IN_BASE_PRECISION) -> bool:
    """True when a component of the dotted path equals or starts with a keep-list entry."""
    parts = module_path.split(".")
    return any(p == k or p.startswith(k) for p in parts for k in keep)


def should_quantize(module_path: str, keep: tuple[str, ...] | list[str] = KEEP_IN_BASE_PRECISION) -> bool:
    """A Linear is quantized iff it is one of the block Linears and not on the keep list."""
    return bool(_BLOCK_LINEAR.search(module_path)) and not is_kept(module_path, keep)
