"""The one capability table: which attention mode runs, from the GPU, packages, head dim and dtype.

Requirements per mode (kernels_quant_perf.md sections 5, 8, 9):

| mode            | device / GPU                     | inputs           | head dim            | implementations (first that fits)          |
|-----------------|----------------------------------|------------------|---------------------|--------------------------------------------|
| sdpa            | any                              | any float        | any                 | torch SDPA                                  |
| flash_attn_2    | CUDA sm_80+                      | fp16, bf16       | multiple of 8, <=256 | `flash_attn`                                |
| flash_attn_3    | CUDA sm_90 (Hopper)              | fp16, bf16       | multiple of 8, <=256 | `flash_attn_interface`, `fa3_fwd_interface` |
| sageattn        | CUDA sm_80..sm_90; sm_120/121 with SageAttention 2.x | fp16, bf16 | 64, 96, 128 | `sageattention`                      |
| sageattn_3      | CUDA sm_80+ (INT8 MMA)           | fp16, bf16, fp32 | multiple of 16, <=256 | (Triton kernel, later), PyTorch reference |
| sageattn_3_fp8  | CUDA sm_89+ (FP8 MMA)            | fp16, bf16, fp32 | multiple of 16, <=256 | (Triton kernel, later), PyTorch reference |
| sageattn_3_fp4  | CUDA sm_100+ (FP4 MMA: sm_100, sm_120) | fp16, bf16, fp32 | multiple of 16, <=256 | `sageattn3` (head dim 64/128), (our kernel, later), PyTorch reference |

Fallback chains (an unsupported choice walks its chain to the first mode that can run with a fast
implementation, passing over a mode measured both slower and less accurate than the next one on this GPU:
sageattn_3_fp8 with the Triton kernels on Hopper; sdpa always can):
    sageattn_3_fp4 -> sageattn_3_fp8 -> sageattn_3 -> sdpa
    sageattn       -> sageattn_3 -> sdpa
    flash_attn_3   -> flash_attn_2 -> sdpa
    flash_attn_2   -> sdpa

CPU (and any non-CUDA device): the quantized modes are GPU speed modes, so they fall back to sdpa.
Their PyTorch reference (attention/reference.py) runs instead when `force_reference=True` (tests,
numerics checks). On a capable GPU, a mode asked for by name whose only implementation is the
reference runs the reference (exact numerics, much slower than sdpa) with one [WARN] line; the
reference is never a fallback target and never chosen by `auto`.

`auto` takes the first of AUTO_ORDER that can run with a fast implementation:
    sageattn (SageAttention 2.x anywhere it runs; 1.x only below sm_90, where cuDNN SDPA beats it) >
    flash_attn_3 (1.22x cuDNN SDPA on H200) > sageattn_3 (our Triton kernel: 1.02x cuDNN SDPA on H200,
    0.019 relative error) > sdpa. sageattn_3_fp8 is left out of auto: its e4m3 P.V has a 0.037 error floor
    and our Triton kernel measured no faster than sageattn_3 on Hopper (bench/RESULTS.md).
    flash_attn_2 is left out (SDPA's flash backend is the same FA2 class, and cuDNN SDPA is faster on
    Hopper); sageattn_3_fp4 is left out (not lossless per SageAttention3's README; Wan not listed).

Log lines (via log.py, each once per process): the fallback,
    [INFO] sageattn_3_fp4 not supported on this GPU (NVIDIA GeForce RTX 4090, sm_89): using sageattn_3_fp8
and the mode that runs, `[INFO] Using sageattn_3_fp8 attention`.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import threading
from dataclasses import dataclass, field, replace

import torch

from ..log import info, warn
from . import registry
from .registry import Implementation

# module -> (distribution for its version, how to get it)
PACKAGES: dict[str, tuple[str, str]] = {
    "flash_attn": ("flash-attn", "pip install flash-attn"),
    "flash_attn_interface": ("flash_attn_3", "build FlashAttention 3 from flash-attention/hopper"),
    "fa3_fwd_interface": ("fa3-fwd", "pip install fa3-fwd"),
    "sageattention": ("sageattention", "pip install sageattention"),
    "sageattn3": ("sageattn3", "build sageattn3 from SageAttention's sageattention3_blackwell"),
    "triton": ("triton", "pip install triton (comes with CUDA builds of torch)"),
}

_GPU_NAMES = {80: "NVIDIA A100", 86: "NVIDIA GeForce RTX 3090", 89: "NVIDIA GeForce RTX 4090", 90: "NVIDIA H200",
              100: "NVIDIA B200", 120: "NVIDIA GeForce RTX 5090"}


@dataclass(frozen=True)
class Env:
    """What the capability table looks at: device type, compute capability, importable packages."""

    device_type: str = "cpu"
    capability: tuple[int, int] | None = None
    gpu_name: str = ""
    packages: frozenset[str] = frozenset()
    versions: tuple[tuple[str, str], ...] = ()

    @property
    def sm(self) -> int | None:
        return None if self.capability is None else self.capability[0] * 10 + self.capability[1]

    @property
    def is_cuda(self) -> bool:
        return self.device_type == "cuda" and self.capability is not None

    def version(self, module: str) -> str | None:
        return dict(self.versions).get(module)

    def gpu_text(self) -> str:
        return f"{self.gpu_name}, sm_{self.sm}" if self.is_cuda else self.device_type

    @classmethod
    def simulated(cls, sm: int | None = None, packages=(), gpu_name: str | None = None,
                  versions: dict[str, str] | None = None) -> "Env":
        """An Env for tests and docs: sm=None is a CPU; sm=90 an H200, 86 an RTX 3090, ..."""
        if sm is None:
            return cls(packages=frozenset(packages), versions=tuple(sorted((versions or {}).items())))
        return cls("cuda", divmod(sm, 10), gpu_name or _GPU_NAMES.get(sm, f"GPU sm_{sm}"),
                   frozenset(packages), tuple(sorted((versions or {}).items())))


_ENV_CACHE: dict[tuple[str, int | None], Env] = {}
_BROKEN: dict[str, str] = {}
_lock = threading.Lock()


def _probe_packages() -> tuple[frozenset[str], tuple[tuple[str, str], ...]]:
    found, versions = set(), {}
    for module, (dist, _) in PACKAGES.items():
        if module in _BROKEN:
            continue
        try:
            if importlib.util.find_spec(module) is None:
                continue
        except (ImportError, ValueError):
            continue
        found.add(module)
        try:
            versions[module] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return frozenset(found), tuple(sorted(versions.items()))


def current_env(device: torch.device | str | None = None) -> Env:
    """The Env of `device` (default: the current CUDA device, else CPU); probed once, then cached.

    Packages are found with importlib.util.find_spec, without importing them.
    """
    if device is None:
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    key = (device.type, device.index)
    env = _ENV_CACHE.get(key)
    if env is None:
        packages, versions = _probe_packages()
        if device.type == "cuda" and torch.cuda.is_available():
            env = Env("cuda", tuple(torch.cuda.get_device_capability(device)), torch.cuda.get_device_name(device),
                      packages, versions)
        else:
            env = Env(device.type, None, "", packages, versions)
        _ENV_CACHE[key] = env
    return env


def mark_broken(module: str, error: BaseException) -> None:
    """A package that was found but failed to import: drop it from every Env and say so once."""
    with _lock:
        if module in _BROKEN:
            return
        _BROKEN[module] = f"{type(error).__name__}: {error}"
        for key, env in list(_ENV_CACHE.items()):
            _ENV_CACHE[key] = replace(env, packages=env.packages - {module})
    warn(f"the {module} package is installed but failed to import ({_BROKEN[module]}); not using it")


def needs_package(env: Env, *modules: str) -> str | None:
    """None when one of `modules` is importable in `env`, else which package to install."""
    if any(m in env.packages for m in modules):
        return None
    hints = " or ".join(f"the {m} package ({PACKAGES.get(m, (m, f'pip install {m}'))[1]})" for m in modules)
    return f"needs {hints}"


@dataclass(frozen=True)
class ModeSpec:
    """The GPU features and input shapes a mode needs, whatever implementation runs it."""

    name: str
    min_sm: int | None = None            # None: runs on any device, CPU included
    max_sm: int | None = None
    dtypes: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32)
    head_dim_multiple: int = 1
    head_dim_max: int | None = None
    head_dim_set: tuple[int, ...] | None = None
    fallback: str | None = None
    has_reference: bool = False
    doc: str = field(default="", compare=False)

    def problem(self, env: Env, head_dim: int | None, dtype: torch.dtype | None) -> str | None:
        """Why this mode cannot run (user-facing text), or None."""
        if self.min_sm is not None:
            if not env.is_cuda:
                return f"not supported on this device ({env.device_type})"
            if env.sm < self.min_sm or (self.max_sm is not None and env.sm > self.max_sm):
                return f"not supported on this GPU ({env.gpu_text()})"
        if dtype is not None and dtype not in self.dtypes:
            names = " or ".join(str(d).replace("torch.", "") for d in self.dtypes)
            return f"does not take {str(dtype).replace('torch.', '')} inputs (needs {names})"
        if head_dim is not None and self.head_dim_set is not None:
            if head_dim not in self.head_dim_set:
                return f"does not support head dim {head_dim} (needs {', '.join(map(str, self.head_dim_set))})"
        elif head_dim is not None and (head_dim % self.head_dim_multiple
                                     or (self.head_dim_max is not None and head_dim > self.head_dim_max)):
            limit = f" up to {self.head_dim_max}" if self.head_dim_max else ""
            return f"does not support head dim {head_dim} (needs a multiple of {self.head_dim_multiple}{limit})"
        return None


_HALF = (torch.float16, torch.bfloat16)
MODES: dict[str, ModeSpec] = {m.name: m for m in (
    ModeSpec("sdpa", doc="torch scaled_dot_product_attention"),
    ModeSpec("flash_attn_2", 80, dtypes=_HALF, head_dim_multiple=8, head_dim_max=256, fallback="sdpa",
             doc="the flash_attn package (FlashAttention 2)"),
    ModeSpec("flash_attn_3", 90, 90, dtypes=_HALF, head_dim_multiple=8, head_dim_max=256, fallback="flash_attn_2",
             doc="FlashAttention 3: flash_attn_interface or the fa3-fwd package's fa3_fwd_interface"),
    ModeSpec("sageattn", 80, dtypes=_HALF, head_dim_set=(64, 96, 128), fallback="sageattn_3",
             doc="the sageattention package (SageAttention 1 from PyPI, or SageAttention 2 built from source)"),
    ModeSpec("sageattn_3", 80, head_dim_multiple=16, head_dim_max=256, fallback="sdpa", has_reference=True,
             doc="INT8 Q.K with K smoothing, fp16/bf16 P.V"),
    ModeSpec("sageattn_3_fp8", 89, head_dim_multiple=16, head_dim_max=256, fallback="sageattn_3", has_reference=True,
             doc="INT8 Q.K with K smoothing, FP8 e4m3 P.V with per-channel V scale, fp32 accumulation"),
    ModeSpec("sageattn_3_fp4", 100, head_dim_multiple=16, head_dim_max=256, fallback="sageattn_3_fp8",
             has_reference=True, doc="NVFP4 Q, K, P, V (block 16, e4m3 scales): sageattn3 or our kernel"),
)}

AUTO_ORDER = ("sageattn", "flash_attn_3", "sageattn_3", "sdpa")
ALL_MODES = tuple(MODES) + ("auto",)   # the built-in choices (UI lists); register_mode can add more


@dataclass(frozen=True)
class Resolution:
    requested: str
    mode: str
    impl: Implementation
    reason: str | None = None        # why `requested` did not run as itself (None: it did)
    slow_note: str | None = None     # set when the reference runs because no fast kernel could
    hint: str | None = None          # a better choice on this GPU (measured), logged once


def _dominated(mode: str, impl: Implementation, env: Env) -> bool:
    """Measured (bench/RESULTS.md, H200): with our Triton kernels on Hopper, sageattn_3_fp8 is both slower and
    less accurate than sageattn_3, the next mode of its chain. Asked for by name it still runs (with _hint);
    as a fallback target it is passed over."""
    return mode == "sageattn_3_fp8" and impl.name == "triton" and env.sm == 90


def _hint(mode: str, impl: Implementation, env: Env) -> str | None:
    """Measured advice for a mode asked for by name (see _dominated)."""
    if _dominated(mode, impl, env):
        return ("sageattn_3_fp8 on Hopper (sm_90) with the Triton kernels: sageattn_3 is faster here "
                "(49 vs 53 ms per 37,800-token call on an H200) and more accurate (error 0.009 vs 0.037)")
    return None


def version_major(version: str | None) -> int | None:
    head = (version or "").split(".")[0]
    return int(head) if head.isdigit() else None


def _auto_skip(mode: str, env: Env) -> bool:
    """auto-only preference: SageAttention 1.x (or unknown) is measured slower than cuDNN SDPA from sm_90 on."""
    if mode != "sageattn":
        return False
    major = version_major(env.version("sageattention"))
    return major is None or (major < 2 and (env.sm or 0) >= 90)


def _find_impl(mode: str, env: Env, head_dim, dtype, allow_slow: bool, force_reference: bool
               ) -> tuple[Implementation | None, str | None, str | None]:
    """(implementation, None, slow note) when `mode` can run, else (None, reason, None)."""
    spec = MODES[mode]
    impls = registry.implementations(mode)
    if force_reference and spec.has_reference:
        ref = [i for i in impls if not i.fast]
        if ref:
            return ref[0], None, None
    problem = spec.problem(env, head_dim, dtype)
    if problem:
        return None, problem, None
    first = None
    for impl in impls:
        why = impl.supports(env, head_dim, dtype)
        if why is None and (impl.fast or allow_slow):
            return impl, None, None if impl.fast else (first or "no fast kernel is installed yet")
        first = first or why
    return None, first or "has no fast kernel installed yet", None


def resolve(requested: str, env: Env | None = None, head_dim: int | None = None,
            dtype: torch.dtype | None = None, force_reference: bool = False) -> Resolution:
    """Decide what runs for `requested` in `env` (no logging; see announce)."""
    if requested not in MODES and requested != "auto":
        raise ValueError(f"unknown attention mode {requested!r}; known modes: {', '.join(list(MODES) + ['auto'])}")
    env = current_env() if env is None else env
    if requested == "auto":
        for mode in AUTO_ORDER:
            if _auto_skip(mode, env):
                continue
            impl, _, _ = _find_impl(mode, env, head_dim, dtype, allow_slow=False, force_reference=False)
            if impl is not None:
                return Resolution("auto", mode, impl)
        raise RuntimeError("no attention implementation registered for sdpa")  # sdpa is always registered
    impl, reason, note = _find_impl(requested, env, head_dim, dtype, allow_slow=True, force_reference=force_reference)
    if impl is not None:
        return Resolution(requested, requested, impl, None, note, _hint(requested, impl, env))
    mode, passed = MODES[requested].fallback, None
    while mode is not None:
        impl, _, _ = _find_impl(mode, env, head_dim, dtype, allow_slow=False, force_reference=False)
        if impl is not None and _dominated(mode, impl, env):
            passed = mode
        elif impl is not None:
            hint = _hint(mode, impl, env) or (passed and f"{requested}: {passed} passed over on this GPU, {mode} is "
                                              "faster and more accurate here (bench/RESULTS.md)")
            return Resolution(requested, mode, impl, reason, hint=hint)
        mode = MODES[mode].fallback
    raise RuntimeError(f"attention mode {requested!r}: nothing in its fallback chain can run")


_announced: set[tuple] = set()


def announce(res: Resolution) -> None:
    """Log the decision: fallback line once per (mode, reason); 'Using X attention' once per mode."""
    lines = []
    if res.reason is not None:
        lines.append(("fallback", res.requested, res.reason, f"{res.requested} {res.reason}: using {res.mode}"))
    if res.slow_note is not None:
        lines.append(("slow", res.mode, "", f"{res.mode}: running the PyTorch reference (exact numerics, much "
                                               f"slower than sdpa): {res.slow_note}"))
    suffix = " (auto)" if res.requested == "auto" else ""
    lines.append(("using", res.mode + suffix, "", f"Using {res.mode} attention{suffix}"))
    if res.hint is not None:
        lines.append(("hint", res.mode, "", res.hint))
    for kind, a, b, text in lines:
        with _lock:
            if (kind, a, b) in _announced:
                continue
            _announced.add((kind, a, b))
        (warn if kind == "slow" else info)(text)


def reset_announcements() -> None:
    """Forget what was logged (tests; a new run that should show its choices again)."""
    with _lock:
        _announced.clear()


def resolve_mode(requested: str, env: Env | None = None, head_dim: int | None = None,
                 dtype: torch.dtype | None = None, force_reference: bool = False,
                 log: bool = True) -> tuple[str, str | None]:
    """(mode that runs, why `requested` does not run as itself or None); logs the choice once."""
    res = resolve(requested, env, head_dim, dtype, force_reference)
    if log:
        announce(res)
    return res.mode, res.reason
