"""Reading safetensors files safely: memory-mapped, lazily, with errors that name the file.

Every model file of the pack is read through here, so truncated downloads and files that are
not safetensors at all fail with one clear message instead of a deep library traceback.
"""
from __future__ import annotations

import json
import os
import struct
from contextlib import contextmanager
from typing import Iterator

import torch
from safetensors import safe_open


class ModelFileError(ValueError):
    """A model file is missing, unreadable, truncated, or not in a layout the pack knows."""


def _check_header(path: str) -> dict:
    """Validate the safetensors header and data size without reading tensor data."""
    if not os.path.exists(path):
        raise ModelFileError(f"{path}: file not found")
    size = os.path.getsize(path)
    if size < 8:
        raise ModelFileError(f"{path}: file is too small to be a safetensors file ({size} bytes); re-download it")
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if n <= 0 or 8 + n > size:
            raise ModelFileError(
                f"{path}: not a safetensors file or truncated (header claims {n} bytes, file has {size}); re-download it"
            )
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelFileError(f"{path}: corrupt safetensors header ({e}); re-download it") from None
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        end = max(end, int(info["data_offsets"][1]))
    if 8 + n + end > size:
        first_bad = next(
            (k for k, i in header.items() if k != "__metadata__" and 8 + n + int(i["data_offsets"][1]) > size), "?"
        )
        raise ModelFileError(
            f"{path}: truncated file ({size} bytes, tensors need {8 + n + end}); first incomplete tensor "
            f"'{first_bad}'. Re-download it"
        )
    return header


def read_header(path: str) -> tuple[dict[str, dict], dict[str, str]]:
    """(tensor infos {key: {'dtype','shape'}}, metadata) without reading any tensor data."""
    header = _check_header(os.fspath(path))
    meta = header.pop("__metadata__", None) or {}
    infos = {k: {"dtype": v["dtype"], "shape": list(v["shape"])} for k, v in header.items()}
    return infos, meta


@contextmanager
def open_safetensors(path: str) -> Iterator:
    """Context manager yielding a memory-mapped `safe_open` handle (framework 'pt', CPU)."""
    path = os.fspath(path)
    _check_header(path)
    try:
        handle = safe_open(path, framework="pt", device="cpu")
    except Exception as e:  # safetensors raises its own error types
        raise ModelFileError(f"{path}: cannot be read as safetensors ({e})") from None
    with handle as f:
        yield f


def load_tensors(path: str, keys: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Load (some) tensors of a file. Tensors are memory-mapped views until they are converted."""
    out: dict[str, torch.Tensor] = {}
    with open_safetensors(path) as f:
        for k in keys if keys is not None else f.keys():
            out[k] = f.get_tensor(k)
    return out


def read_metadata(path: str) -> dict[str, str]:
    return read_header(path)[1]
