"""What a model file is, from key names, dtypes and shapes alone (no tensor data is read).

`detect_infos(infos, metadata)` runs the detectors in order; the first that recognises the keys
wins. Built in: the Wan2.1 DiT (T2V / I2V, with or without InfiniteTalk), the InfiniteTalk audio
file alone, and the Wan VAE. Encoder modules add theirs with `register_detector(fn)` so that
`python -m wanfp4 inspect` names every file of the workflow.
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from typing import Callable

import torch

from .config import AudioConfig, WanConfig
from .formats import LayoutError, QUANT_COMPANIONS, normalize_transformer_keys, split_key

TensorInfos = dict[str, tuple]        # key -> (torch dtype or None, shape tuple)
Detector = Callable[[TensorInfos, dict], "dict | None"]

_DETECTORS: list[Detector] = []
_BLOCK = re.compile(r"^blocks\.(\d+)\.")
AUDIO_BLOCK_PARTS = (".audio_cross_attn.", ".norm_x.")
DTYPE_LABEL = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
               torch.float8_e4m3fn: "fp8_e4m3fn", torch.float8_e5m2: "fp8_e5m2", torch.uint8: "uint8",
               torch.int8: "int8"}
WAN_HEAD_DIM = 128     # every released Wan2.1 size; smaller (test/demo) widths use 16


class NotThisModel(ValueError):
    """A detector recognised the family but the file cannot be used (message says why)."""


def register_detector(fn: Detector, first: bool = False) -> Detector:
    """Add a detector `fn(infos, metadata) -> dict | None` (dict has at least 'kind'). Usable as decorator."""
    if fn not in _DETECTORS:
        _DETECTORS.insert(0, fn) if first else _DETECTORS.append(fn)
    return fn


def detectors() -> list[Detector]:
    return list(_DETECTORS)


def dtype_label(dt) -> str:
    return DTYPE_LABEL.get(dt, str(dt).replace("torch.", ""))


# ----------------------------------------------------------------------------- storage formats
def linear_format(infos: TensorInfos, mod: str) -> str:
    """Storage format of the Linear at module path `mod` (weight dtype + its companions)."""
    dt = infos[mod + ".weight"][0]
    has = lambda leaf: f"{mod}.{leaf}" in infos  # noqa: E731
    if dt in (torch.float8_e4m3fn, torch.float8_e5m2):
        base = dtype_label(dt)
        return base + "_scaled" if has("scale_weight") or has("weight_scale") else base
    if dt == torch.uint8:
        if has("weight_scale_2") or has("weight_tensor_scale"):
            return "nvfp4"
        return "mxfp4" if has("weight_block_scale") else "packed-unknown"
    return dtype_label(dt)


def storage_summary(infos: TensorInfos, literals: tuple[str, ...] = (), metadata: dict | None = None) -> dict:
    """{'format': one label or 'mixed', 'formats': {label: n linears}, 'dtypes': {..}, 'quant_layout': ..}."""
    metadata = metadata or {}
    mods = sorted({split_key(k)[0] for k in infos if k.endswith(".weight") and len(infos[k][1]) == 2})
    linears = [m for m in mods if _BLOCK.match(m + ".")] or mods
    counts = Counter(linear_format(infos, m) for m in linears)
    fmt = next(iter(counts)) if len(counts) == 1 else ("mixed" if counts else "none")
    if metadata.get("format") == "wanfp4-quantized":
        layout = f"wanfp4 pre-quantized ({metadata.get('quant_mode', '?')})"
    elif literals or any(k.endswith(".comfy_quant") for k in infos):
        layout = "comfy_quant"
    elif any(k.endswith((".scale_weight", ".weight_scale")) for k in infos):
        layout = "scaled_fp8"
    else:
        layout = None
    dtypes = Counter(dtype_label(v[0]) for k, v in infos.items() if split_key(k)[1] not in QUANT_COMPANIONS)
    return {"format": fmt, "formats": dict(counts), "dtypes": dict(dtypes), "quant_layout": layout}


def logical_shape(infos: TensorInfos, key: str) -> tuple[int, ...]:
    """Shape of the parameter a stored tensor represents (packed 4-bit weights hold 2 values a byte)."""
    dt, shape = infos[key]
    if dt == torch.uint8 and key.endswith(".weight") and len(shape) == 2:
        bias = infos.get(key[: -len("weight")] + "bias")
        return (bias[1][0] if bias else shape[0], shape[1] * 2)
    return tuple(shape)


def count_params(infos: TensorInfos) -> int:
    return sum(math.prod(logical_shape(infos, k)) for k in infos if split_key(k)[1] not in QUANT_COMPANIONS)


# ----------------------------------------------------------------------------- Wan DiT
def _dim0(infos: TensorInfos, key: str, what: str) -> int:
    if key not in infos:
        raise NotThisModel(f"missing '{key}' ({what})")
    return logical_shape(infos, key)[0]


def _num_layers(infos: TensorInfos) -> int:
    idx = sorted({int(m.group(1)) for k in infos if (m := _BLOCK.match(k))})
    if not idx:
        return 0
    if idx != list(range(len(idx))):
        gap = next(i for i in range(len(idx)) if i not in idx)
        raise NotThisModel(f"block indices are not contiguous: 'blocks.{gap}.*' is missing (found up to "
                           f"blocks.{idx[-1]}); the file is incomplete")
    return len(idx)


def detect_audio_config(infos: TensorInfos, meta_config: dict | None = None) -> AudioConfig:
    """AudioProjModel sizes from shapes; wav2vec2-base stacking (5 neighbours x 12 layers) assumed."""
    if meta_config and meta_config.get("audio"):
        return AudioConfig(**meta_config["audio"])
    d = AudioConfig()
    inter = _dim0(infos, "audio_proj.proj1.bias", "audio projection")
    in1 = logical_shape(infos, "audio_proj.proj1.weight")[1]
    in_vf = logical_shape(infos, "audio_proj.proj1_vf.weight")[1]
    if "audio_proj.norm.weight" in infos:
        out = infos["audio_proj.norm.weight"][1][0]
    elif "blocks.0.audio_cross_attn.kv_linear.weight" in infos:
        out = logical_shape(infos, "blocks.0.audio_cross_attn.kv_linear.weight")[1]
    else:
        raise NotThisModel("cannot tell the audio token width (no audio_proj.norm / audio_cross_attn.kv_linear)")
    tokens_x_out = _dim0(infos, "audio_proj.proj3.bias", "audio projection output")
    if in1 % (d.seq_len * d.blocks) or tokens_x_out % out:
        raise NotThisModel(f"audio_proj.proj1.weight has {in1} inputs, not {d.seq_len} x {d.blocks} x channels")
    channels = in1 // (d.seq_len * d.blocks)
    return AudioConfig(seq_len=d.seq_len, seq_len_vf=in_vf // (d.blocks * channels), blocks=d.blocks,
                       channels=channels, intermediate_dim=inter, output_dim=out,
                       context_tokens=tokens_x_out // out, norm_output_audio="audio_proj.norm.weight" in infos)


def detect_wan_config(infos: TensorInfos, metadata: dict | None = None) -> WanConfig:
    """WanConfig of a (normalized, original-name) DiT state."""
    meta_cfg = _meta_config(metadata)
    if meta_cfg:
        return WanConfig.from_dict(meta_cfg)
    if "patch_embedding.weight" not in infos:
        raise NotThisModel("no 'patch_embedding.weight'")
    dim, in_dim, *patch = infos["patch_embedding.weight"][1]
    layers = _num_layers(infos)
    if layers == 0:
        raise NotThisModel("no 'blocks.N.*' keys")
    heads = dim // WAN_HEAD_DIM if dim % WAN_HEAD_DIM == 0 else max(1, dim // 16)
    out_dim = _dim0(infos, "head.head.bias", "output head") // math.prod(patch)
    i2v = any(k.startswith("img_emb.") for k in infos)
    cfg = WanConfig(
        model_type="i2v" if i2v else "t2v", dim=dim, num_heads=heads, num_layers=layers, in_dim=in_dim,
        ffn_dim=_dim0(infos, "blocks.0.ffn.0.bias", "feed-forward"), out_dim=out_dim,
        freq_dim=logical_shape(infos, "time_embedding.0.weight")[1],
        text_dim=logical_shape(infos, "text_embedding.0.weight")[1],
        image_dim=infos["img_emb.proj.0.weight"][1][0] if i2v else WanConfig.image_dim,
        patch_size=tuple(patch), qk_norm="blocks.0.self_attn.norm_q.weight" in infos,
        cross_attn_norm="blocks.0.norm3.weight" in infos,
    )
    if "audio_proj.proj1.weight" in infos:
        cfg = cfg.with_audio(detect_audio_config(infos))
    return cfg


def _meta_config(metadata: dict | None) -> dict | None:
    raw = (metadata or {}).get("config")
    if not raw:
        return None
    try:
        d = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return d if isinstance(d, dict) and "dim" in d and "num_layers" in d else None


def is_audio_key(key: str) -> bool:
    return key.startswith("audio_proj.") or any(p in key for p in AUDIO_BLOCK_PARTS)


def describe_transformer(infos: TensorInfos, metadata: dict | None = None, literals=()) -> dict | None:
    """Detection dict for normalized DiT / audio keys, or None when they are not a Wan transformer."""
    has_base = "patch_embedding.weight" in infos
    audio_keys = [k for k in infos if is_audio_key(k)]
    if not has_base and not audio_keys:
        return None
    if not has_base:
        non_audio = [k for k in infos if not is_audio_key(k)]
        if non_audio:
            raise NotThisModel(f"has InfiniteTalk audio keys and '{non_audio[0]}' but no 'patch_embedding.weight'; "
                               "the transformer is incomplete")
        a = detect_audio_config(infos)
        q = _dim0(infos, "blocks.0.audio_cross_attn.q_linear.bias", "audio cross-attention")
        out = {"kind": "infinitetalk-audio", "dim": q, "layers": _num_layers(infos),
               "heads": q // WAN_HEAD_DIM if q % WAN_HEAD_DIM == 0 else max(1, q // 16),
               "in_dim": None, "audio": a.__dict__, "config": None}
    else:
        cfg = detect_wan_config(infos, metadata)
        kind = "wan2.1-i2v" if cfg.is_i2v else "wan2.1-t2v"
        if cfg.has_audio:
            kind += "+infinitetalk"
        out = {"kind": kind, "dim": cfg.dim, "layers": cfg.num_layers, "heads": cfg.num_heads, "in_dim": cfg.in_dim,
               "out_dim": cfg.out_dim, "ffn_dim": cfg.ffn_dim, "text_dim": cfg.text_dim, "freq_dim": cfg.freq_dim,
               "image_dim": cfg.image_dim if cfg.is_i2v else None, "patch_size": list(cfg.patch_size),
               "audio": cfg.audio.__dict__ if cfg.audio else None, "config": cfg}
    out.update(storage_summary(infos, tuple(literals), metadata))
    out["params"] = count_params(infos)
    out["tensors"] = sum(1 for k in infos if split_key(k)[1] not in QUANT_COMPANIONS)
    return out


@register_detector
def detect_wan_transformer(raw: TensorInfos, metadata: dict) -> dict | None:
    """Built-in detector: any Wan DiT / InfiniteTalk layout (normalizes the keys first)."""
    try:
        km = normalize_transformer_keys(list(raw), metadata)
    except LayoutError as e:
        if any("audio_proj" in k or "patch_embedding" in k for k in raw):
            raise NotThisModel(str(e)) from None
        return None
    infos = {name: raw[stored] for name, stored in km.keys.items()}
    infos.update({k: (torch.uint8, tuple(v.shape)) for k, v in km.literals.items()})
    out = describe_transformer(infos, metadata, tuple(km.literals))
    if out is not None:
        out["layout"] = km.layout + (" (kijai audio prefix)" if km.kijai_audio else "")
        if km.prefix:
            out["prefix"] = km.prefix
        if km.markers:
            out["markers"] = sorted(km.markers)
        if km.ignored:
            out["ignored_keys"] = len(km.ignored)
    return out


def detect_infos(raw: TensorInfos, metadata: dict | None = None) -> dict | None:
    """Run the detectors; the first non-None answer (NotThisModel propagates with its reason)."""
    from . import formats_vae, inspect  # noqa: F401  (register the VAE and encoder detectors)

    for fn in _DETECTORS:
        out = fn(raw, metadata or {})
        if out is not None:
            return out
    return None
