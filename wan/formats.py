"""Key adapters: every Wan2.1 / InfiniteTalk transformer layout in the wild -> original Wan names.

Works on key names only (no tensor data), so detection (inspect) and loading share one path:
- original Wan names (Wan-AI shards, MeiGen InfiniteTalk / MultiTalk audio files);
- ComfyUI single files, the same names behind `model.diffusion_model.` or `diffusion_model.`;
- diffusers `WanTransformer3DModel` names (`condition_embedder.*`, `attn1`/`attn2`, norm2<->norm3);
- kijai's `multitalk_audio_proj.` instead of `audio_proj.`;
- quantized companions of a Linear (`scale_weight`, `scale_input`, `weight_scale`, `weight_scale_2`,
  `input_scale`, `comfy_quant`, ours `weight_block_scale` / `weight_tensor_scale`) follow their layer;
  ComfyUI's `_quantization_metadata` (safetensors metadata) becomes per-layer `comfy_quant` entries.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import torch

# Prefixes a transformer's keys may carry (longest first); keys outside the chosen prefix are ignored.
TRANSFORMER_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.")
KIJAI_AUDIO_PREFIX = "multitalk_audio_proj."

# Leaf names that belong to a Linear's quantized storage (never model parameters of a plain module).
QUANT_COMPANIONS = ("scale_weight", "scale_input", "weight_scale", "weight_scale_2", "input_scale",
                    "comfy_quant", "weight_block_scale", "weight_tensor_scale", "pre_quant_scale")
MARKER_KEYS = ("scaled_fp8",)         # top-level markers: format evidence, not parameters

# diffusers module path -> original module path (N = block index). Applied to module paths only.
_DIFFUSERS_GLOBAL = {
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.image_embedder.norm1": "img_emb.proj.0",
    "condition_embedder.image_embedder.ff.net.0.proj": "img_emb.proj.1",
    "condition_embedder.image_embedder.ff.net.2": "img_emb.proj.3",
    "condition_embedder.image_embedder.norm2": "img_emb.proj.4",
    "proj_out": "head.head",
}
_DIFFUSERS_BLOCK = {
    "attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o", "attn1.norm_q": "self_attn.norm_q", "attn1.norm_k": "self_attn.norm_k",
    "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k", "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o", "attn2.norm_q": "cross_attn.norm_q", "attn2.norm_k": "cross_attn.norm_k",
    "attn2.add_k_proj": "cross_attn.k_img", "attn2.add_v_proj": "cross_attn.v_img",
    "attn2.norm_added_k": "cross_attn.norm_k_img",
    "norm2": "norm3",                  # diffusers' norm2 is the (affine) pre-cross-attention LayerNorm
    "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2",
}
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_DIFFUSERS_HINTS = ("condition_embedder.", "proj_out.", "scale_shift_table")
_QUANTO = re.compile(r"\.(weight|bias)\.(_data|_scale|input_scale|output_scale)$")


class LayoutError(ValueError):
    """Keys that fit no known layout (the caller adds the file name)."""


@dataclass
class KeyMap:
    """Result of normalizing one file's keys."""

    keys: dict[str, str]                                   # original-layout key -> key as stored
    layout: str = "original"                               # original | comfyui | diffusers
    prefix: str = ""
    kijai_audio: bool = False
    markers: dict[str, str] = field(default_factory=dict)  # e.g. {"scaled_fp8": stored key}
    ignored: list[str] = field(default_factory=list)       # stored keys of other components
    literals: dict[str, torch.Tensor] = field(default_factory=dict)   # synthesized (comfy_quant from metadata)


def split_key(key: str) -> tuple[str, str]:
    """('blocks.0.ffn.0', 'weight') ; a top-level tensor has module path ''."""
    mod, _, leaf = key.rpartition(".")
    return mod, leaf


def diffusers_to_original(key: str) -> str:
    """Rename one diffusers WanTransformer3DModel key (or module path + leaf) to the original name."""
    mod, leaf = split_key(key)
    if mod == "" and leaf == "scale_shift_table":
        return "head.modulation"
    m = _BLOCK.match(key)
    if m:
        idx, rest = m.group(1), m.group(2)
        if rest == "scale_shift_table":
            return f"blocks.{idx}.modulation"
        rmod, rleaf = split_key(rest)
        for src, dst in _DIFFUSERS_BLOCK.items():
            if rmod == src:
                return f"blocks.{idx}.{dst}.{rleaf}"
        return key
    return f"{_DIFFUSERS_GLOBAL.get(mod, mod)}.{leaf}" if mod else key


def is_diffusers_layout(keys) -> bool:
    """True when (prefix-stripped) keys use diffusers' WanTransformer3DModel names."""
    return any(k.startswith(_DIFFUSERS_HINTS) or ".attn1." in k or ".attn2." in k for k in keys)


def _choose_prefix(keys: list[str]) -> str:
    for p in TRANSFORMER_PREFIXES:
        if any(k.startswith(p) for k in keys):
            return p
    return ""


def normalize_transformer_keys(stored: list[str], metadata: dict[str, str] | None = None,
                               diffusers: bool | None = None) -> KeyMap:
    """Map the stored keys of one DiT / audio file to original Wan names (names only, no data).

    `diffusers` forces the layout decision (the shards of one model are decided together, since a
    shard may hold no key that tells the layouts apart, yet `norm2` means different things).
    """
    quanto = next((k for k in stored if _QUANTO.search(k)), None)
    if quanto is not None:
        raise LayoutError(f"optimum-quanto serialization ('{quanto}'): the official quant_models files need "
                          "optimum-quanto; use a bf16/fp16, fp8 or fp8_scaled .safetensors of the model instead")
    prefix = _choose_prefix(stored)
    km = KeyMap({}, prefix=prefix)
    inside = []
    for k in stored:
        if prefix and not k.startswith(prefix):
            km.ignored.append(k)
        else:
            inside.append(k[len(prefix):])
    diffusers = is_diffusers_layout(inside) if diffusers is None else diffusers
    km.layout = "diffusers" if diffusers else ("comfyui" if prefix in ("model.diffusion_model.", "diffusion_model.")
                                               else "original")
    for short in inside:
        stored_key = prefix + short
        if short in MARKER_KEYS:
            km.markers[short] = stored_key
            continue
        name = short
        if name.startswith(KIJAI_AUDIO_PREFIX):
            name = "audio_proj." + name[len(KIJAI_AUDIO_PREFIX):]
            km.kijai_audio = True
        if diffusers:
            name = diffusers_to_original(name)
        if name in km.keys:
            raise LayoutError(f"keys '{km.keys[name]}' and '{stored_key}' both map to '{name}'; "
                              "the file mixes two layouts")
        km.keys[name] = stored_key
    _add_quant_metadata(km, metadata or {}, diffusers)
    return km


def _add_quant_metadata(km: KeyMap, metadata: dict[str, str], diffusers: bool) -> None:
    """ComfyUI `_quantization_metadata` {"layers": {name: {"format": ...}}} -> `<layer>.comfy_quant` literals."""
    raw = metadata.get("_quantization_metadata")
    if not raw:
        return
    try:
        layers = json.loads(raw)["layers"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise LayoutError(f"metadata _quantization_metadata is not valid ({e})") from None
    for layer, conf in layers.items():
        conf = {"format": conf} if isinstance(conf, str) else conf
        name = layer[len(km.prefix):] if km.prefix and layer.startswith(km.prefix) else layer
        for p in TRANSFORMER_PREFIXES:
            name = name[len(p):] if name.startswith(p) else name
        if diffusers:
            name = diffusers_to_original(name + ".weight")[: -len(".weight")]
        if name + ".weight" in km.keys and name + ".comfy_quant" not in km.keys:
            km.literals[name + ".comfy_quant"] = comfy_quant_tensor(conf)


def comfy_quant_tensor(conf: dict) -> torch.Tensor:
    """ComfyUI's per-layer quantization entry: the JSON config as a uint8 tensor."""
    return torch.tensor(list(json.dumps(conf).encode("utf-8")), dtype=torch.uint8)
