"""Models stay loaded across prompts and workflows: T5, CLIP, VAE, wav2vec2 and the quantized DiT.

The key is what makes a load different: the files (path + size + mtime, so a replaced file is
reloaded) and the load options (precision, quantization, LoRAs ...). Sampler settings are not
part of any key, so changing them never reloads a model. ComfyUI's "unload models / free memory"
empties the cache (nodes/host.py wires that up).
"""
from __future__ import annotations

import gc
import os
import threading
import time
from typing import Any, Callable

from ..log import cache as log_cache
from ..log import load as log_load


def file_signature(path: str) -> tuple:
    st = os.stat(path)
    return (os.path.realpath(path), st.st_size, int(st.st_mtime_ns))


def make_key(kind: str, paths: list[str | None], **options: Any) -> tuple:
    sig = tuple(file_signature(p) if p else None for p in paths)
    return (kind, sig, tuple(sorted((k, repr(v)) for k, v in options.items())))


def _collect() -> None:
    """Free dropped models now: swapped models hold pinned host buffers in reference cycles."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            host_empty = getattr(torch._C, "_host_emptyCache", None)   # pinned blocks torch keeps for reuse
            if host_empty is not None:
                host_empty()
    except Exception:
        pass


class ModelCache:
    def __init__(self) -> None:
        self._items: dict[tuple, Any] = {}
        self._lock = threading.Lock()
        self.loads = 0
        self.hits = 0

    def get_or_load(self, key: tuple, label: str, loader: Callable[[], Any]) -> Any:
        """Return the cached object for `key`, or load it (logging `[LOAD]`/`[CACHE]` with timings).

        One cached object per kind+files: a load with other options first drops the old one (and
        collects it, so its GPU memory and pinned host memory are free before the new load starts)."""
        t0 = time.perf_counter()
        with self._lock:
            if key in self._items:
                self.hits += 1
                obj = self._items[key]
                log_cache(f"Using cached {label} ({time.perf_counter() - t0:.2f} s)")
                return obj
            stale = [k for k in self._items if k[:2] == key[:2]]
            for old in stale:
                del self._items[old]
        if stale:
            _collect()
            log_cache(f"Dropped the cached {label} with other load options")
        obj = loader()
        with self._lock:
            self._items[key] = obj
            self.loads += 1
        log_load(f"Loading {label}... ({time.perf_counter() - t0:.1f} s)")
        log_cache(f"{label[:1].upper() + label[1:]} cached")
        return obj

    def clear(self) -> int:
        with self._lock:
            n = len(self._items)
            self._items.clear()
        _collect()
        if n:
            log_cache(f"Cleared {n} cached model(s)")
        return n

    def __len__(self) -> int:
        return len(self._items)


MODEL_CACHE = ModelCache()
