"""The one place the pack touches ComfyUI. Every function falls back to plain behaviour when the
host is absent (tests, the CLI's headless runner), so nodes run the same everywhere.

ComfyUI modules are looked up at call time (never cached at import): the host may re-bind them
at start-up, and tests may install a fake host.
"""
from __future__ import annotations

import importlib
import os
import sys
import time
from typing import Callable

# Folders ComfyUI users keep these files in (folder_paths names).
MODEL_FOLDERS = (
    "diffusion_models", "model_patches", "text_encoders", "clip_vision", "vae", "audio_encoders", "loras",
)
_LEGACY = {"diffusion_models": ("unet",), "text_encoders": ("clip",)}
_MODEL_EXTS = (".safetensors", ".sft", ".pth", ".pt", ".ckpt", ".bin")

_state = {"models_dir": os.environ.get("WANFP4_MODELS_DIR"), "output_dir": None, "temp_dir": None, "interrupt": False}


def _module(name: str):
    """The host module if ComfyUI is running (already imported), else None. Never imports ComfyUI itself."""
    mod = sys.modules.get(name)
    if mod is not None:
        return mod
    if "comfy" in sys.modules or "folder_paths" in sys.modules:
        try:
            return importlib.import_module(name)
        except Exception:
            return None
    return None


def has_host() -> bool:
    return _module("folder_paths") is not None


# ----------------------------------------------------------------------------- folders
def set_models_dir(path: str | None) -> None:
    """Headless: a ComfyUI-style models folder (diffusion_models/, vae/, ...)."""
    _state["models_dir"] = path


def set_output_dirs(output_dir: str | None, temp_dir: str | None = None) -> None:
    _state["output_dir"] = output_dir
    _state["temp_dir"] = temp_dir


def folder_paths_for(kind: str) -> list[str]:
    """Every folder searched for model files of `kind`."""
    fp = _module("folder_paths")
    if fp is not None:
        dirs: list[str] = []
        for name in (kind, *_LEGACY.get(kind, ())):
            try:
                dirs += [d for d in fp.get_folder_paths(name) if d not in dirs]
            except Exception:
                pass
        return dirs
    base = _state["models_dir"] or os.path.join(os.getcwd(), "models")
    return [os.path.join(base, kind)] + [os.path.join(base, alt) for alt in _LEGACY.get(kind, ())]


def list_models(kind: str) -> list[str]:
    """File names (relative to their folder) offered in a loader's combo."""
    fp = _module("folder_paths")
    if fp is not None:
        try:
            return sorted(fp.get_filename_list(kind))
        except Exception:
            return []
    out: set[str] = set()
    for d in folder_paths_for(kind):
        if not os.path.isdir(d):
            continue
        for root, _, files in os.walk(d, followlinks=True):
            for f in files:
                if f.lower().endswith(_MODEL_EXTS) or f.endswith(".index.json"):
                    out.add(os.path.relpath(os.path.join(root, f), d).replace(os.sep, "/"))
    return sorted(out)


def resolve_model(kind: str, name: str) -> str:
    """Full path of a model file; a missing file names the file and every folder searched."""
    if name and os.path.isabs(name) and os.path.exists(name):
        return name
    dirs = folder_paths_for(kind)
    fp = _module("folder_paths")
    if fp is not None:
        try:
            path = fp.get_full_path(kind, name)
            if path:
                return path
        except Exception:
            pass
    for d in dirs:
        path = os.path.join(d, name)
        if os.path.exists(path):
            return path
    searched = "\n  ".join(dirs) or "(no folders registered)"
    raise FileNotFoundError(
        f"Model not found: '{name}' ({kind}). Searched:\n  {searched}\nPut the file in one of these folders "
        f"(or add a folder in extra_model_paths.yaml) and press R in ComfyUI to refresh the list."
    )


def output_directory(temp: bool = False) -> str:
    fp = _module("folder_paths")
    if fp is not None:
        return fp.get_temp_directory() if temp else fp.get_output_directory()
    if temp:
        return _state["temp_dir"] or os.path.join(os.getcwd(), "temp")
    return _state["output_dir"] or os.path.join(os.getcwd(), "output")


# ----------------------------------------------------------------------------- progress / interrupt
def request_interrupt(flag: bool = True) -> None:
    """Headless/tests: ask the running sampler to stop at its next model call."""
    _state["interrupt"] = flag


class InterruptedByUser(BaseException):
    """Raised headless when an interrupt was requested (BaseException, like ComfyUI's own)."""


def check_interrupt() -> None:
    """Raise ComfyUI's InterruptProcessingException (or ours, headless) if the user pressed Cancel."""
    mm = _module("comfy.model_management")
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()
    if _state["interrupt"]:
        _state["interrupt"] = False
        raise InterruptedByUser("interrupted by the user")


class Progress:
    """ComfyUI ProgressBar when hosted; otherwise a plain text line on stderr (throttled)."""

    def __init__(self, total: int, label: str = "Sampling", started: float | None = None):
        """`started`: time.time() when the work began, if that was before the bar was made."""
        self.total = max(1, int(total))
        self.value = 0
        self.label = label
        self._t0 = time.time() if started is None else started
        self._last = 0.0
        utils = _module("comfy.utils")
        self._bar = utils.ProgressBar(self.total) if utils is not None else None

    def update(self, n: int = 1) -> None:
        self.value = min(self.total, self.value + n)
        if self._bar is not None:
            self._bar.update_absolute(self.value, self.total)
            return
        now = time.time()
        if now - self._last > 0.5 or self.value == self.total:
            self._last = now
            el = now - self._t0
            eta = el / self.value * (self.total - self.value) if self.value else 0.0
            sys.stderr.write(f"\r[INFO] {self.label}: {self.value}/{self.total} ({el:.1f}s, eta {eta:.1f}s)")
            if self.value == self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()


# ----------------------------------------------------------------------------- memory
_free_hooks: list[Callable[[], None]] = []
_patched = {"done": False}


def on_free_memory(fn: Callable[[], None]) -> None:
    """Run `fn` when ComfyUI unloads models / frees memory (the Manager's and /free's buttons)."""
    _free_hooks.append(fn)
    mm = _module("comfy.model_management")
    if mm is None or _patched["done"]:
        return
    original = mm.unload_all_models

    def unload_all_models(*args, **kwargs):
        for hook in list(_free_hooks):
            hook()
        return original(*args, **kwargs)

    mm.unload_all_models = unload_all_models
    _patched["done"] = True


def torch_device():
    import torch

    mm = _module("comfy.model_management")
    if mm is not None:
        return mm.get_torch_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
