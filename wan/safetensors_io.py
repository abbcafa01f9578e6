"""Reading safetensors files safely: memory-mapped, lazily, with errors that name the file.

Every model file of the pack is read through here, so truncated downloads and files that are
not safetensors at all fail with one clear message instead of a deep library traceback.
"""
from __future__ import annotations

import json
import os
import pickle
import re
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


# ----------------------------------------------------------------------------- several files
SAFETENSORS_EXT = ".safetensors"
PICKLE_EXTS = (".pth", ".pt", ".bin", ".ckpt")
_SHARD = re.compile(r"^(?P<stem>.+)-(?P<i>\d{5})-of-(?P<n>\d{5})\.safetensors$")


def read_index(path: str) -> dict[str, str]:
    """`weight_map` of a `*.safetensors.index.json` as {key: absolute shard path}."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise ModelFileError(f"{path}: file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{path}: not a valid JSON shard index ({e})") from None
    wmap = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(wmap, dict) or not wmap:
        raise ModelFileError(f"{path}: shard index has no 'weight_map'; point at the .safetensors shards instead")
    folder = os.path.dirname(os.path.abspath(path))
    return {k: os.path.join(folder, v) for k, v in wmap.items()}


def _index_for_shard(path: str) -> str | None:
    """The index next to a shard that lists it (`name-00001-of-00007.safetensors`), if any."""
    folder, name = os.path.split(os.path.abspath(path))
    m = _SHARD.match(name)
    candidates = [os.path.join(folder, m.group("stem") + ".safetensors.index.json")] if m else []
    candidates += sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".safetensors.index.json"))
    for idx in candidates:
        if os.path.exists(idx):
            try:
                if os.path.abspath(path) in set(read_index(idx).values()):
                    return idx
            except ModelFileError:
                continue
    return None


def resolve_checkpoint_files(path_or_paths) -> list[str]:
    """Expand an index file, or one shard of a sharded checkpoint, into all its shard files.

    Accepts one path or a list (files of one model, e.g. the 7 Wan2.1 shards). Order is kept.
    """
    paths = [path_or_paths] if isinstance(path_or_paths, (str, os.PathLike)) else list(path_or_paths)
    if not paths:
        raise ModelFileError("no model file given")
    out: list[str] = []
    for p in map(os.fspath, paths):
        if p.endswith(".index.json"):
            files = list(dict.fromkeys(read_index(p).values()))
        elif p.endswith(SAFETENSORS_EXT) and _SHARD.match(os.path.basename(p)) and os.path.exists(p):
            idx = _index_for_shard(p)
            if idx is not None:
                files = list(dict.fromkeys(read_index(idx).values()))
            else:
                m = _SHARD.match(os.path.basename(p))
                folder = os.path.dirname(os.path.abspath(p))
                n = int(m.group("n"))
                files = [os.path.join(folder, f"{m.group('stem')}-{i:05d}-of-{n:05d}.safetensors") for i in range(1, n + 1)]
            missing = [f for f in files if not os.path.exists(f)]
            if missing:
                raise ModelFileError(f"{p}: shard {missing[0]} of this sharded checkpoint is missing; download all shards")
        else:
            files = [p]
        out.extend(f for f in files if f not in out)
    return out


def load_pickle_state(path: str) -> dict[str, torch.Tensor]:
    """A `.pth` state dict read with `weights_only=True` (never arbitrary code), memory-mapped when possible."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelFileError(f"{path}: file not found")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)   # legacy (non-zip) format
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "GLOBAL" in ln or "global" in ln.split(" ", 3)[:3]), None)
        if why is None:
            raise ModelFileError(f"{path}: cannot be read as a PyTorch state dict ({lines[-1] if lines else e}); "
                                 "re-download it") from None
        raise ModelFileError(f"{path}: refused to load: the pickle holds more than tensors ({why}); only plain "
                             "state dicts are loaded (weights_only=True). Use a .safetensors file") from None
    except Exception as e:  # truncated zip, not a torch file at all, ...
        raise ModelFileError(f"{path}: cannot be read as a PyTorch state dict ({type(e).__name__}: {e}); "
                             "re-download it") from None
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict) and len(obj) <= 3:
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelFileError(f"{path}: not a state dict of tensors (got {type(obj).__name__}); use a .safetensors file")
    return obj


DTYPE_NAMES = {  # safetensors header dtype -> torch dtype
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "U8": torch.uint8, "I8": torch.int8,
    "I16": torch.int16, "I32": torch.int32, "I64": torch.int64, "BOOL": torch.bool,
}


def torch_dtype(name: str) -> torch.dtype | None:
    """torch dtype of a safetensors header dtype name (None when torch has no such dtype)."""
    return DTYPE_NAMES.get(name) or getattr(torch, {"F8_E8M0": "float8_e8m0fnu"}.get(name, "_none_"), None)


class TensorFiles:
    """Lazy access to the tensors of several files: {key: (file, dtype, shape)}, data read on demand.

    safetensors files stay memory-mapped (one open handle per file); `.pth` files are read with
    weights_only=True and mmap. `get(key)` returns one tensor, so callers convert one at a time.
    """

    def __init__(self, files: list[str]):
        self.files = list(files)
        self.infos: dict[str, tuple[str, torch.dtype | None, tuple[int, ...]]] = {}
        self.metadata: dict[str, dict[str, str]] = {}
        self._handles: dict[str, object] = {}
        self._pickles: dict[str, dict[str, torch.Tensor]] = {}
        for f in self.files:
            if f.endswith(PICKLE_EXTS):
                sd = load_pickle_state(f)
                self._pickles[f] = sd
                self.metadata[f] = {}
                entries = {k: (f, v.dtype, tuple(v.shape)) for k, v in sd.items()}
            else:
                infos, meta = read_header(f)
                self.metadata[f] = meta
                entries = {k: (f, torch_dtype(i["dtype"]), tuple(i["shape"])) for k, i in infos.items()}
            dup = next((k for k in entries if k in self.infos), None)
            if dup is not None:
                raise ModelFileError(f"{f}: tensor '{dup}' is also in {self.infos[dup][0]}; pass each shard once")
            self.infos.update(entries)

    def get(self, key: str) -> torch.Tensor:
        f = self.infos[key][0]
        if f in self._pickles:
            return self._pickles[f][key]
        h = self._handles.get(f)
        if h is None:
            try:
                h = self._handles[f] = safe_open(f, framework="pt", device="cpu")
            except Exception as e:
                raise ModelFileError(f"{f}: cannot be read as safetensors ({e})") from None
        try:
            return h.get_tensor(key)
        except Exception as e:
            raise ModelFileError(f"{f}: tensor '{key}' cannot be read ({e}); re-download the file") from None

    def close(self) -> None:
        self._handles.clear()
        self._pickles.clear()

    def __enter__(self) -> "TensorFiles":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
