"""Implementations per attention mode: the seam where GPU kernels plug in.

A mode (e.g. ``sageattn_3_fp8``) can have several implementations: a package wrapper, an in-house
Triton kernel (a later issue registers it here), and the PyTorch reference. Each says whether it can
run through ``supports(env, head_dim, dtype)``; the capability table (capabilities.py) asks them in
priority order. ``fast=False`` marks the reference: it runs only when its mode was asked for by name
(never as a fallback target, never for ``auto``), because it is far slower than sdpa.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

if TYPE_CHECKING:
    from .capabilities import Env

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
SupportsFn = Callable[["Env", "int | None", "torch.dtype | None"], "str | None"]


def always(env: "Env", head_dim: int | None, dtype: torch.dtype | None) -> None:
    """supports() of an implementation with no limits beyond its mode's (head_dim/dtype None: unknown)."""
    return None


@dataclass(frozen=True)
class Implementation:
    """One way to run a mode. `supports` returns None when it can run, else why not (user-facing text)."""

    mode: str
    name: str
    fn: AttentionFn
    supports: SupportsFn = always
    fast: bool = True
    priority: int = 0


_IMPLS: dict[str, list[Implementation]] = {}
_listeners: list[Callable[[], None]] = []


def register(impl: Implementation) -> Implementation:
    """Add (or replace, by mode and name) an implementation; higher priority is tried first."""
    impls = [i for i in _IMPLS.get(impl.mode, []) if i.name != impl.name] + [impl]
    _IMPLS[impl.mode] = sorted(impls, key=lambda i: -i.priority)
    for fn in _listeners:
        fn()
    return impl


def unregister(mode: str, name: str) -> None:
    _IMPLS[mode] = [i for i in _IMPLS.get(mode, []) if i.name != name]
    for fn in _listeners:
        fn()


def implementations(mode: str) -> list[Implementation]:
    return list(_IMPLS.get(mode, []))


def registered_modes() -> list[str]:
    return [m for m, impls in _IMPLS.items() if impls]


def on_change(fn: Callable[[], None]) -> None:
    """Call `fn` whenever the registry changes (the dispatch drops its cached choices)."""
    _listeners.append(fn)
