"""The implementations registered at import: torch SDPA, the optional packages, the PyTorch references.

Package wrappers import their package on first call (the capability table found it with find_spec
only), convert our [B, L, H, D] layout where needed and return [B, Lq, H, D]. An import that fails
at call time raises PackageImportError; the dispatch then drops that package and resolves again.
"""
from __future__ import annotations

import importlib
from functools import partial

import torch
import torch.nn.functional as F

from .capabilities import Env, needs_package, version_major
from .reference import REFERENCES
from .registry import Implementation, register

_HALF = (torch.float16, torch.bfloat16)


class PackageImportError(RuntimeError):
    def __init__(self, module: str, error: BaseException):
        super().__init__(f"importing {module} failed: {type(error).__name__}: {error}")
        self.module, self.error = module, error


_imported: dict[str, object] = {}


def _module(name: str):
    mod = _imported.get(name)
    if mod is None:
        try:
            mod = importlib.import_module(name)
        except Exception as err:  # ImportError, OSError (missing CUDA libs), ...: never crash the run
            raise PackageImportError(name, err) from err
        _imported[name] = mod
    return mod


def _half(*ts: torch.Tensor, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, ...]:
    """Cast to `dtype` (default: q's dtype when fp16/bf16, else bf16) for kernels without fp32."""
    dtype = dtype or (ts[0].dtype if ts[0].dtype in _HALF else torch.bfloat16)
    return tuple(t.to(dtype).contiguous() for t in ts)


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """torch scaled_dot_product_attention on [B, L, H, D] tensors (scale 1/sqrt(D), no mask)."""
    k, v = k.to(q.dtype), v.to(q.dtype)
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def flash_attn_2(q, k, v):
    """flash_attn.flash_attn_func takes and returns [B, L, H, D]."""
    return _first(_module("flash_attn").flash_attn_func(*_half(q, k, v)))


def flash_attn_3(module: str, q, k, v):
    """FA3's flash_attn_func ([B, L, H, D]); fa3-fwd is built without fp16, so it gets bf16."""
    dtype = torch.bfloat16 if module == "fa3_fwd_interface" else None
    return _first(_module(module).flash_attn_func(*_half(q, k, v, dtype=dtype)))


def sageattn(q, k, v):
    return _module("sageattention").sageattn(*_half(q, k, v), tensor_layout="NHD", is_causal=False)


def sageattn3(q, k, v):
    """SageAttention3 (HND layout), per-128-token Q mean smoothing as in our fp4 reference."""
    qh, kh, vh = (t.transpose(1, 2) for t in _half(q, k, v))
    return _module("sageattn3").sageattn3_blackwell(qh, kh, vh, is_causal=False, per_block_mean=True).transpose(1, 2)


def _package(*modules: str):
    def supports(env: Env, head_dim, dtype):
        return needs_package(env, *modules)
    return supports


def _fa3_supports(module: str):
    """Each FA3 wrapper needs its own module; the message names both ways to get FA3."""
    def supports(env: Env, head_dim, dtype):
        if module in env.packages:
            return None
        return needs_package(env, "fa3_fwd_interface", "flash_attn_interface") or f"needs the {module} package"
    return supports


def _sageattention_supports(env: Env, head_dim, dtype):
    """SageAttention 2 raises on sm_100 and 1.x (Triton) is not usable on sm_120 (kernels doc 8.2, 8.8)."""
    missing = needs_package(env, "sageattention")
    if missing or (env.sm or 0) < 100:
        return missing
    major = version_major(env.version("sageattention")) or 0
    if env.sm in (120, 121) and major >= 2:
        return None
    return f"not supported on this GPU ({env.gpu_text()}) by sageattention {env.version('sageattention') or '?'}"


def _sageattn3_supports(env: Env, head_dim, dtype):
    if head_dim is not None and head_dim not in (64, 128):
        return f"sageattn3 does not support head dim {head_dim} (needs 64 or 128)"
    return needs_package(env, "sageattn3")


def _reference_fn(mode: str, q, k, v):
    return REFERENCES[mode](q, k, v)


def register_builtin() -> None:
    register(Implementation("sdpa", "torch sdpa", sdpa))
    register(Implementation("flash_attn_2", "flash_attn", flash_attn_2, _package("flash_attn")))
    register(Implementation("flash_attn_3", "flash_attn_interface", partial(flash_attn_3, "flash_attn_interface"),
                            _fa3_supports("flash_attn_interface"), priority=10))
    register(Implementation("flash_attn_3", "fa3_fwd_interface", partial(flash_attn_3, "fa3_fwd_interface"),
                            _fa3_supports("fa3_fwd_interface"), priority=5))
    register(Implementation("sageattn", "sageattention", sageattn, _sageattention_supports))
    register(Implementation("sageattn_3_fp4", "sageattn3", sageattn3, _sageattn3_supports, priority=10))
    for mode in REFERENCES:
        register(Implementation(mode, "reference", partial(_reference_fn, mode), fast=False, priority=-100))
    try:  # our Triton kernels (GPU); absent Triton leaves the references and packages above
        from .triton_sageattn import register_attention
        register_attention()
    except ImportError:
        pass


register_builtin()
