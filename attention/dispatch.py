"""The one attention entry point of the pack.

Every attention call of the DiT goes through :func:`attention`. Inputs are laid out as
``[B, L, H, D]`` (batch, tokens, heads, head dim), as Wan's flash-attn calls use, and the
output has the same layout and dtype as ``q``. The capability table (capabilities.py) decides,
once per (mode, device, head dim, dtype), which mode and implementation actually run; the
decision is cached, so a call costs one dict lookup on top of the kernel.
"""
from __future__ import annotations

import threading

import torch

from . import backends, registry
from .backends import PackageImportError
from .capabilities import ALL_MODES, MODES, ModeSpec, Resolution, announce, current_env, mark_broken, resolve
from .registry import AttentionFn, Implementation, always

sdpa = backends.sdpa

_CHOICES: dict[tuple, Resolution] = {}
_lock = threading.Lock()


def clear_choices() -> None:
    """Forget cached decisions (the registry calls this when implementations change)."""
    with _lock:
        _CHOICES.clear()


registry.on_change(clear_choices)


def register_mode(name: str, fn: AttentionFn, supports=always, fast: bool = True, priority: int = 0,
                  impl_name: str = "custom") -> None:
    """Add an implementation of mode `name` (e.g. a Triton kernel for sageattn_3_fp8).

    A name the table does not know becomes a mode with no requirements that falls back to sdpa.
    """
    if name not in MODES:
        MODES[name] = ModeSpec(name, fallback="sdpa", doc="registered at run time")
    registry.register(Implementation(name, impl_name, fn, supports, fast, priority))


def unregister_mode(name: str) -> None:
    """Remove a mode added with register_mode (tests); built-in modes only lose custom implementations."""
    for impl in registry.implementations(name):
        if impl.name == "custom":
            registry.unregister(name, impl.name)
    if name not in _BUILTIN:
        MODES.pop(name, None)


_BUILTIN = frozenset(MODES)
_MODES = MODES   # older name: popping a custom mode here also makes it unknown again


def registered_modes() -> list[str]:
    return list(MODES) + ["auto"]


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mode: str) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"attention({mode!r}): q, k, v must be [B, L, H, D]; got shapes "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"attention({mode!r}): k and v must be [B, Lk, H, D] with q's B, H, D; got q "
                         f"{tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")


def choice(mode: str, q: torch.Tensor, force_reference: bool = False) -> Resolution:
    """The (cached, logged once) decision for `mode` on q's device, head dim and dtype."""
    key = (mode, q.device, q.shape[-1], q.dtype, force_reference)
    res = _CHOICES.get(key)
    if res is None:
        if mode not in MODES and mode != "auto":
            raise ValueError(f"unknown attention mode {mode!r}; known modes: {', '.join(registered_modes())}")
        res = resolve(mode, current_env(q.device), q.shape[-1], q.dtype, force_reference)
        announce(res)
        with _lock:
            _CHOICES[key] = res
    return res


@torch.compiler.disable   # opaque to TorchDynamo (wan/block_compile.py): the dispatch picks and runs a kernel
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mode: str = "sdpa", *,
              force_reference: bool = False, _retry: bool = True) -> torch.Tensor:
    """Softmax attention of q [B, Lq, H, D] over k, v [B, Lk, H, D]; returns [B, Lq, H, D] in q's dtype.

    `mode` is one of ALL_MODES ("auto" included). Unsupported modes fall back (capabilities.py).
    `force_reference=True` runs the PyTorch reference of a quantized mode on any device (tests).
    """
    _check(q, k, v, mode)
    res = choice(mode, q, force_reference)
    try:
        out = res.impl.fn(q, k, v)
    except PackageImportError as err:
        if not _retry:
            raise
        mark_broken(err.module, err.error)
        clear_choices()
        return attention(q, k, v, mode, force_reference=force_reference, _retry=False)
    return out.to(q.dtype)


__all__ = ["attention", "choice", "clear_choices", "register_mode", "unregister_mode", "registered_modes", "sdpa",
           "ALL_MODES"]
