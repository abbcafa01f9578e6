"""Attention modes, the capability table and the single dispatch used by the DiT."""
from .dispatch import attention, register_mode, registered_modes

__all__ = ["attention", "register_mode", "registered_modes"]
