"""One read-only view over a weights file, whether safetensors or a weights-only PyTorch pickle.

The encoders detect their layout from names and shapes before reading any data, then pull
tensors one at a time (so an 11 GB file never needs two full copies in RAM). This hides the two
file kinds behind `shapes` + `get(key)` and turns every read failure into a ModelFileError.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch

from .safetensors_io import ModelFileError, open_safetensors, read_header

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


class CheckpointView:
    """`shapes` {key: tuple}, `dtypes` {key: str}, `metadata`, and `get(key)` -> CPU tensor."""

    def __init__(self, path: str, shapes: dict[str, tuple], dtypes: dict[str, str], getter, metadata=None):
        self.path, self.shapes, self.dtypes, self._get = path, shapes, dtypes, getter
        self.metadata: dict[str, str] = metadata or {}

    def __contains__(self, key: str) -> bool:
        return key in self.shapes

    def get(self, key: str) -> torch.Tensor:
        try:
            return self._get(key)
        except ModelFileError:
            raise
        except Exception as e:
            raise ModelFileError(f"{self.path}: tensor '{key}' cannot be read ({e}); re-download the file") from None


def _load_pickle(path: str) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # mmap needs the zip format; older files load fully
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ModelFileError(f"{path}: cannot be read as a weights-only PyTorch checkpoint ({e}); "
                                 "re-download it or use the .safetensors version") from None
    except Exception as e:
        raise ModelFileError(f"{path}: cannot be read as a weights-only PyTorch checkpoint ({e}); "
                             "re-download it or use the .safetensors version") from None
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict) and len(obj) <= 4:
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelFileError(f"{path}: is not a state dict of tensors (found {type(obj).__name__}); "
                             "expected the model's weights file")
    return obj


@contextmanager
def open_checkpoint(path: str) -> Iterator[CheckpointView]:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelFileError(f"{path}: file not found")
    if path.lower().endswith(PICKLE_SUFFIXES):
        sd = _load_pickle(path)
        yield CheckpointView(path, {k: tuple(v.shape) for k, v in sd.items()},
                             {k: str(v.dtype).removeprefix("torch.") for k, v in sd.items()}, sd.__getitem__)
        return
    infos, meta = read_header(path)
    with open_safetensors(path) as f:
        yield CheckpointView(path, {k: tuple(i["shape"]) for k, i in infos.items()},
                             {k: i["dtype"] for k, i in infos.items()}, f.get_tensor, meta)


def shapes_of(keys_shapes) -> dict[str, tuple]:
    """Accept {key: shape} with shape as a sequence, a torch.Size, or a read_header info dict."""
    out = {}
    for k, v in keys_shapes.items():
        if isinstance(v, dict):
            v = v.get("shape", ())
        elif isinstance(v, torch.Tensor):
            v = v.shape
        out[k] = tuple(int(d) for d in v)
    return out


def find_prefix(keys, anchors: tuple[str, ...]) -> tuple[str, str] | None:
    """(prefix, anchor) of the first key equal to `prefix + anchor` (prefix empty or ending in '.')."""
    for anchor in anchors:
        for k in keys:
            if k.endswith(anchor):
                p = k[: len(k) - len(anchor)]
                if p == "" or p.endswith("."):
                    return p, anchor
    return None
