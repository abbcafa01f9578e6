"""Attention modes, the capability table and the single dispatch used by the DiT.

    attention(q, k, v, mode)            [B, L, H, D] in, same out; mode in ALL_MODES ("auto" too)
    resolve_mode(mode, env) -> (mode that runs, reason or None), logged once
    current_env(), Env.simulated(sm=90, packages=...)
    modes_for_model(mode) -> {"self", "cross", "audio"}
    register_mode(name, fn, supports=..., fast=...)   the seam for GPU kernels
Reference numerics of the quantized modes: attention/reference.py.
"""
from .capabilities import ALL_MODES, AUTO_ORDER, MODES, Env, current_env, reset_announcements, resolve_mode
from .dispatch import attention, register_mode, registered_modes, unregister_mode
from .roles import ROLES, modes_for_model

__all__ = ["attention", "register_mode", "unregister_mode", "registered_modes", "resolve_mode", "current_env", "Env",
           "modes_for_model", "reset_announcements", "ALL_MODES", "AUTO_ORDER", "MODES", "ROLES"]
