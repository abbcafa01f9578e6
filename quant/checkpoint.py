"""Pre-quantized checkpoints: save a quantized model, load it straight into QuantLinear storage.

File = safetensors with the model's state dict (our layout, quant/linear.py) and metadata:
  format "wanfp4-quantized", format_version, quant_mode, compute_dtype, keep (json),
  fp4_packing "e2m1, two per byte, low nibble = even element", nvfp4_block_size 16,
  mxfp4_block_size 32, config (WanConfig json, when the model has one).
Loading builds the model on the meta device, calls quantize_model, then assigns the file's
tensors: no base-precision copy of the quantized weights is ever materialised.
"""
from __future__ import annotations

import json
import os
from typing import Callable

import torch
import torch.nn as nn
from safetensors.torch import save_file

from ..log import load
from ..wan.safetensors_io import ModelFileError, load_tensors, read_header
from .apply import quantize_model
from .capabilities import Environment

FORMAT = "wanfp4-quantized"
FORMAT_VERSION = "1"


def save_quantized(model: nn.Module, path: str, config=None, extra_metadata: dict | None = None) -> dict[str, str]:
    """Write a model prepared by quantize_model to `path`; returns the metadata written."""
    q = getattr(model, "wanfp4_quant", None)
    if q is None:
        raise ValueError("save_quantized: the model was not prepared by quantize_model (no wanfp4_quant record)")
    config = config if config is not None else getattr(model, "config", None)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "quant_mode": q["mode"],
            "compute_dtype": q["compute_dtype"], "keep": json.dumps(q["keep"]),
            "fp4_packing": "e2m1, two per byte, low nibble = even element",
            "nvfp4_block_size": "16", "mxfp4_block_size": "32"}
    if config is not None:
        meta["config"] = json.dumps(config.to_dict() if hasattr(config, "to_dict") else dict(config))
    meta.update({k: str(v) for k, v in (extra_metadata or {}).items()})
    tensors = {}
    for k, v in model.state_dict().items():
        if v.is_meta:
            raise ValueError(f"save_quantized: {k} is still on the meta device (the model was never filled)")
        tensors[k] = v.detach().to("cpu").contiguous()
    tmp = f"{os.fspath(path)}.partial"
    save_file(tensors, tmp, metadata=meta)
    os.replace(tmp, path)
    load(f"saved {q['mode']} checkpoint {path} ({os.path.getsize(path) / 1e9:.2f} GB)")
    return meta


def read_quantized_metadata(path: str) -> dict:
    """The metadata of a pre-quantized file; ModelFileError if it is not one."""
    _, meta = read_header(path)
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a WanFP4 pre-quantized checkpoint (metadata format="
                             f"{meta.get('format')!r}); load it as a regular model file instead")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{path}: pre-quantized format version {meta.get('format_version')!r} is not supported "
                             f"(this pack reads version {FORMAT_VERSION}); re-create it with save_quantized")
    return meta


def load_quantized(path: str, model_factory: Callable[[], nn.Module] | None = None, mode: str | None = None,
                   device: torch.device | str = "cpu", env: Environment | None = None) -> nn.Module:
    """Build the model on meta, quantize_model(file's mode or `mode`), assign the file's tensors.

    `model_factory` builds the (float) model; default: WanModel(config from the file metadata).
    A different `mode` than the file's re-quantizes layer by layer while loading.
    """
    meta = read_quantized_metadata(path)
    if model_factory is None:
        if "config" not in meta:
            raise ModelFileError(f"{path}: no config in the metadata; pass model_factory=")
        from ..wan.config import WanConfig
        from ..wan.model import WanModel
        config = WanConfig.from_dict(json.loads(meta["config"]))
        model_factory = lambda: WanModel(config)  # noqa: E731
    dtype = getattr(torch, meta.get("compute_dtype", "bfloat16"))
    with torch.device("meta"):
        model = model_factory()
    quantize_model(model, mode or meta["quant_mode"], keep=tuple(json.loads(meta["keep"])),
                   compute_dtype=dtype, env=env, device=device)
    # copy out of the memory map: aligned, file-independent tensors (also what a GPU upload does)
    state = {k: v.to(device=device, copy=True) for k, v in load_tensors(path).items()}
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise ModelFileError(f"{path}: does not match the model it describes ({str(e).splitlines()[0]} ...)") from None
    load(f"loaded pre-quantized {meta['quant_mode']} checkpoint {path}")
    return model
