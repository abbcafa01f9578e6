"""Optional torch.compile of the transformer blocks (the tuning node's `torch_compile`).

Each block's forward is compiled on its own (all 40 share one graph: same code, parameters are graph
inputs), so block swap, LoRA merges and the model cache keep working on the same modules. The pack's
own kernels (attention dispatch, QuantLinear kernels, fused element-wise launches) are opaque to
TorchDynamo (`torch.compiler.disable` at their entry points); what inductor gets is the PyTorch glue
between them, and the element-wise reference path when the fused kernels are off.

`auto` compiles only where a measurement says it helps (MEASURED_GAIN, from bench/kernels.py
--dit --compile; bench/RESULTS.md). Compiling costs 5-10 s on the first forward of a shape (H200 host).
"""
from __future__ import annotations

import importlib

import torch
import torch.nn as nn

CHOICES = ("auto", "off", "on")

# Speed-up of one DiT forward from compiling the blocks, per (GPU architecture, fused element-wise kernels
# on): the smaller of bf16 + sdpa and fp8_e4m3fn_fast + sageattn_3 (batch 1 and 3) at the seed shape
# (bench/RESULTS.md, session 4: `python3 -m wanfp4.bench.kernels --dit --fused --compile`). Inductor fuses
# what the fused kernels fuse, so on top of them it adds nothing; without them it wins back the same 1.2x.
# Only pairs measured at >= MIN_GAIN turn compile on under `auto`; GPUs not measured stay eager.
MEASURED_GAIN: dict[tuple[str, bool], float] = {("sm_90", True): 1.00, ("sm_90", False): 1.20}
MIN_GAIN = 1.03
# Extra peak VRAM measured with compile on (same runs, 37 800 tokens): graph breaks at the opaque kernels
# keep some activations alive longer than eager does.
COMPILE_PEAK_NOTE = ("torch.compile added 1.5-2.5 GiB (batch 1) and 4.4-7.5 GiB (batch 3) of peak VRAM at the "
                     "seed shape on the H200")


def compile_available() -> str | None:
    """None when torch.compile can run here, else why not (user-facing)."""
    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile"
    try:
        importlib.import_module("torch._dynamo")
    except Exception as err:  # noqa: BLE001 - broken or stripped installs
        return f"TorchDynamo does not import ({type(err).__name__})"
    if torch.cuda.is_available():
        try:
            import triton  # noqa: F401 - inductor's GPU code generator
        except ImportError:
            return "inductor needs Triton on the GPU (pip install triton)"
    return None


def decide_compile(choice: str, sm: str | None, fused_on: bool, auto_tuning: bool = True) -> tuple[bool, str]:
    """(compile?, why) for the tuning node's choice on a GPU of architecture `sm` (e.g. "sm_90")."""
    if choice not in CHOICES:
        raise ValueError(f"torch_compile: expected one of {', '.join(CHOICES)}, got {choice!r}")
    if choice == "off":
        return False, "off on the tuning node"
    why_not = compile_available()
    if why_not:
        return False, f"not available: {why_not}"
    if choice == "on":
        return True, "on at the tuning node (the first forward of each shape compiles)"
    if not auto_tuning:
        return False, "auto needs auto tuning on; set torch_compile to on to force it"
    gain = MEASURED_GAIN.get((sm or "cpu", bool(fused_on)))
    if gain is None:
        return False, f"no measured gain on {sm or 'this device'}" + (" with the fused kernels" if fused_on else "")
    if gain < MIN_GAIN:
        return False, f"measured {gain:.2f}x on {sm}: not worth the compile time"
    return True, f"measured {gain:.2f}x per forward on {sm}"


def is_compiled(block: nn.Module) -> bool:
    """compile_blocks sets a compiled `forward` on the instance; removing it restores the class's."""
    return "forward" in block.__dict__


def compile_blocks(model: nn.Module, enabled: bool, *, backend: str = "inductor", mode: str | None = None) -> int:
    """Compile (or restore) the forward of every block of `model.blocks`; returns how many are compiled.
    Idempotent: already compiled blocks are left as they are."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise TypeError(f"{type(model).__name__} has no transformer blocks to compile")
    if enabled:
        from . import fused
        fused.fused_active()      # imports the Triton module now, not inside a trace
    count = 0
    for block in blocks:
        if not enabled:
            block.__dict__.pop("forward", None)
            continue
        if not is_compiled(block):
            block.forward = torch.compile(type(block).forward.__get__(block), backend=backend, mode=mode,
                                          dynamic=False)
        count += 1
    return count
