"""Which compute path a mode gets on a device, and the `auto` mode policy.

Every decision is a pure function of an `Environment` (compute capability + torch features), so
tests simulate CPU, sm_86, sm_89, sm_90, sm_120 without the hardware.

Compute paths: dense (F.linear), upcast (fp8 -> compute dtype x scale), w8a8 (fp8 x fp8
`torch._scaled_mm`), w4a16 (FP4 dequantized to the compute dtype), w4a8 (NVFP4 re-rounded to
per-channel fp8 x per-token fp8 activations), w4a4 (NVFP4 x NVFP4 activations).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple

import torch

from ..log import info
from .modes import get_mode


@dataclass(frozen=True)
class Environment:
    """What the compute device can do. cc=None means CPU (or any non-CUDA device)."""

    cc: tuple[int, int] | None = None
    name: str = "CPU"
    has_scaled_mm: bool = True        # torch._scaled_mm exists (fp8 GEMM)
    has_fp4_dtype: bool = True        # torch.float4_e2m1fn_x2 exists (native FP4 GEMM operands)

    @property
    def sm(self) -> str:
        return "cpu" if self.cc is None else f"sm_{self.cc[0]}{self.cc[1]}"

    @property
    def fp8_compute(self) -> bool:
        return self.cc is not None and self.cc >= (8, 9) and self.has_scaled_mm

    @property
    def fp4_compute(self) -> bool:
        return self.cc is not None and self.cc[0] >= 10 and self.has_scaled_mm and self.has_fp4_dtype

    def describe(self) -> str:
        return "CPU" if self.cc is None else f"{self.name}, {self.sm}"

    @classmethod
    def simulate(cls, sm: str, name: str | None = None) -> "Environment":
        """'cpu', 'sm_86', 'sm_89', 'sm_90', 'sm_100', 'sm_120' -> an Environment with current torch features."""
        if sm == "cpu":
            return cls()
        digits = sm.removeprefix("sm_")
        cc = (int(digits[:-1]), int(digits[-1]))
        return cls(cc=cc, name=name or f"simulated {sm}")


def detect_environment(device: torch.device | str | None = None) -> Environment:
    """Environment of a real device (default: cuda:0 when available, else CPU)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    feats = dict(has_scaled_mm=hasattr(torch, "_scaled_mm"), has_fp4_dtype=hasattr(torch, "float4_e2m1fn_x2"))
    if device.type != "cuda" or not torch.cuda.is_available():
        return Environment(**feats)
    idx = device.index if device.index is not None else torch.cuda.current_device()
    return Environment(cc=torch.cuda.get_device_capability(idx), name=torch.cuda.get_device_name(idx), **feats)


class ComputePlan(NamedTuple):
    mode: str
    path: str              # the compute path that will run
    fallback: str | None   # the mode whose path runs instead, when the requested one can't


def resolve_compute(mode: str, env: Environment) -> ComputePlan:
    """The compute path of `mode` on `env` (fallbacks: fast fp8 -> _scaled, fast fp4 -> fp4_scaled)."""
    spec = get_mode(mode)
    if spec.compute == "w8a8":
        return ComputePlan(mode, "w8a8", None) if env.fp8_compute else ComputePlan(mode, "upcast", "fp8_e4m3fn_scaled")
    if spec.compute == "w4a4":
        if env.fp4_compute:
            return ComputePlan(mode, "w4a4", None)
        if env.fp8_compute:
            return ComputePlan(mode, "w4a8", None)
        return ComputePlan(mode, "w4a16", "fp4_scaled")
    return ComputePlan(mode, spec.compute, None)


_PATH_WORDS = {"dense": "base precision", "upcast": "upcast to the compute dtype", "w8a8": "W8A8",
               "w4a16": "W4A16", "w4a8": "W4A8", "w4a4": "W4A4"}


def log_plan(plan: ComputePlan, env: Environment) -> list[str]:
    """The user-facing lines for a plan: one fallback line (if any) and one 'enabled' line."""
    lines = []
    if plan.fallback:
        where = "this device (CPU)" if env.cc is None else f"this GPU ({env.describe()})"
        lines.append(info(f"{plan.mode} not supported on {where}: using {plan.fallback}"))
    if plan.mode != "disabled":
        kind = "FP4" if get_mode(plan.mode).storage in ("nvfp4", "mxfp4") else "FP8"
        lines.append(info(f"{kind} quantization mode enabled ({plan.mode}, {_PATH_WORDS[plan.path]} on {env.sm})"))
    return lines


# ----------------------------------------------------------------------------- auto
DEFAULT_RESERVE_BYTES = 8 * 1024**3   # activations, VAE decode, CUDA context at 480p-720p


class AutoChoice(NamedTuple):
    mode: str
    reason: str
    fits: bool             # False: even the smallest mode needs block swap


def choose_auto_mode(cc: tuple[int, int] | None, vram_bytes: int | None, model_bytes: Mapping[str, int],
                     reserve_bytes: int = DEFAULT_RESERVE_BYTES, env: Environment | None = None) -> AutoChoice:
    """Pick the weight mode for `auto`.

    Policy (quality first among the modes that run fast on this GPU, then memory):
    - CPU: `disabled` (quantized storage only costs time there).
    - fp8 tensor cores (sm_89 / sm_90 / sm_100+): `fp8_e4m3fn_fast` (W8A8, near-lossless, ~1.6x bf16
      GEMM) if the weights fit in VRAM - reserve; else `fp4_scaled_fast` (W4A8 on sm_89/90, W4A4 on
      sm_100+), which also is the choice when nothing fits (block swap then streams NVFP4 blocks).
    - no fp8 compute (sm_86 and older): `disabled` if bf16 fits; else `fp8_e4m3fn_scaled` (half the
      bytes, same GEMM speed); else `fp4_scaled` (W4A16).
    `model_bytes` maps mode -> weight bytes (see sizes.model_bytes_per_mode).
    """
    env = env or (Environment() if cc is None else Environment(cc=tuple(cc), name="GPU"))
    if env.cc is None:
        return AutoChoice("disabled", "CPU: no quantized compute, keep base precision", True)
    budget = None if vram_bytes is None else vram_bytes - reserve_bytes
    if env.fp8_compute:
        order = ("fp8_e4m3fn_fast", "fp4_scaled_fast")
    else:
        order = ("disabled", "fp8_e4m3fn_scaled", "fp4_scaled")
    for mode in order:
        need = model_bytes[mode]
        if budget is None or need <= budget:
            return AutoChoice(mode, f"{env.sm}: {mode} weights {need / 1e9:.1f} GB fit in "
                                    f"{'unknown' if budget is None else f'{budget / 1e9:.1f} GB'} usable VRAM", True)
    mode = order[-1]
    return AutoChoice(mode, f"{env.sm}: no mode fits in {budget / 1e9:.1f} GB usable VRAM; {mode} "
                            f"({model_bytes[mode] / 1e9:.1f} GB) with block swap", False)

