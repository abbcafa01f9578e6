"""`python -m wanfp4 inspect FILE [FILE...]`: one JSON line per file saying what the loaders see.

Fields: file, kind, dim, layers, heads, in_dim, format (weight storage), params, plus extras
(layout, ffn_dim, audio config, per-format Linear counts, dtypes, ...). A file that cannot be used
gets its reason on stderr and a non-zero exit code; the other files are still printed.
"""
from __future__ import annotations

import json
import sys

import torch

from .detect import register_detector
from .safetensors_io import ModelFileError

MAIN_FIELDS = ("file", "kind", "dim", "layers", "heads", "in_dim", "format", "params")


def _meta_sd(infos: dict) -> dict:
    """Shape-only stand-ins (meta tensors) for detectors that look at `.shape` of a state dict."""
    return {k: torch.empty(shape, dtype=dt or torch.float32, device="meta") for k, (dt, shape) in infos.items()}


def _umt5(infos: dict, metadata: dict) -> dict | None:
    if not any(".SelfAttention." in k or "self_attn.relative" in k or "token_embedding" in k for k in infos):
        return None
    from .text_encoder import detect_text_encoder

    d = detect_text_encoder({k: shape for k, (_, shape) in infos.items()})
    if d is None:
        return None
    return {"kind": "umt5-xxl" if d["d_model"] == 4096 else "umt5", "dim": d["d_model"], "layers": d["num_layers"],
            "heads": d["num_heads"], "in_dim": None, "layout": d.get("layout"), "ffn_dim": d.get("d_ff")}


def _wav2vec2(infos: dict, metadata: dict) -> dict | None:
    if not any(k.endswith("feature_extractor.conv_layers.0.conv.weight") for k in infos):
        return None
    from .audio_encoder import detect_wav2vec2_config

    c = detect_wav2vec2_config(_meta_sd(infos), source="wav2vec2 weights")
    return {"kind": "wav2vec2", "dim": c.hidden_size, "layers": c.num_hidden_layers,
            "heads": c.num_attention_heads, "in_dim": 1}


def _melband(infos: dict, metadata: dict) -> dict | None:
    if not any(k.endswith("band_split.to_features.0.1.weight") for k in infos):
        return None
    from .vocal_separation import detect_melband_config

    c = detect_melband_config(_meta_sd(infos))
    return {"kind": "melband-roformer", "dim": c.dim, "layers": c.depth, "heads": c.heads, "in_dim": None}


def _clip_vision(infos: dict, metadata: dict) -> dict | None:
    """CLIP ViT (HF / ComfyUI `vision_model.*`, or Wan's open-clip `visual.*`): width, depth, heads (dim/80)."""
    import re

    for pat, emb in ((r"vision_model\.encoder\.layers\.(\d+)\.", "vision_model.embeddings.class_embedding"),
                     (r"visual\.transformer\.resblocks\.(\d+)\.", "visual.class_embedding")):
        key = next((k for k in infos if k.endswith(emb)), None)
        if key is None:
            continue
        layers = {int(m.group(1)) for k in infos if (m := re.search(pat, k))}
        dim = infos[key][1][-1]
        return {"kind": "clip-vision-h" if dim == 1280 else "clip-vision", "dim": dim, "layers": len(layers),
                "heads": max(1, dim // 80), "in_dim": 3}
    return None


def _guarded(fn):
    """Encoder adapters must never break inspect when an encoder module changes: unknown -> skip."""

    def run(infos, metadata):
        try:
            return fn(infos, metadata)
        except ModelFileError:
            raise
        except (ImportError, AttributeError, TypeError, KeyError, ValueError, RuntimeError):
            return None

    run.__name__ = fn.__name__
    return run


for _fn in (_umt5, _clip_vision, _wav2vec2, _melband):
    register_detector(_guarded(_fn))


def _row(path: str, det: dict) -> dict:
    row = {"file": path, **{k: det.get(k) for k in MAIN_FIELDS[1:]}}
    row.update({k: v for k, v in det.items() if k not in row})
    return row


def inspect_files(files: list[str]) -> tuple[list[dict], list[str]]:
    """(rows for the usable files, error messages for the others)."""
    from .loader import detect_file

    rows, errors = [], []
    for f in files:
        try:
            rows.append(_row(f, detect_file(f)))
        except ModelFileError as e:
            errors.append(str(e))
    return rows, errors


def inspect_main(files: list[str]) -> int:
    from .loader import detect_file

    rc = 0
    for f in files:
        try:
            row = _row(f, detect_file(f))
        except ModelFileError as e:
            print(f"inspect: {e}", file=sys.stderr)
            rc = 1
            continue
        print(json.dumps(row, default=str), flush=True)
    return rc
