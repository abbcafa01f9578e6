"""Moving inference-only modules between the host and the GPU without copying them back.

The encoders (umT5-XXL: 9.3 GB of blocks in bf16) visit the GPU once per prompt and leave it again.
Their weights never change, so leaving only needs the GPU copies dropped: the host tensors are kept
and re-bound, instead of a device-to-host copy into freshly allocated (page-faulted) host memory
every time. The cost is that the host copy stays allocated while the module is on the GPU.
When even one visit does not fit (a 12 GB budget next to the DiT), StreamedBlocks brings the blocks
over one at a time during the forward, on the same kept host tensors.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn


class HostResidency:
    """`to(device)` for a list of modules whose tensors are read-only; `to("cpu")` re-binds the kept
    host tensors (made by the first move to the CPU, or the ones the modules started with)."""

    def __init__(self, modules: list[nn.Module]):
        self.modules = list(modules)
        self._host: list[tuple[nn.Module, str, bool, torch.Tensor]] | None = None  # (owner, name, is_param, data)
        self.device = self._current()
        if self.device.type == "cpu":
            self._remember()

    def _current(self) -> torch.device:
        for m in self.modules:
            for t in list(m.parameters()) + list(m.buffers()):
                return t.device
        return torch.device("cpu")

    def _remember(self) -> None:
        self._host = []
        for m in self.modules:
            for sub in m.modules():
                self._host += [(sub, n, True, p.data) for n, p in sub._parameters.items() if p is not None]
                self._host += [(sub, n, False, b) for n, b in sub._buffers.items() if b is not None]

    def to(self, device) -> None:
        device = torch.device(device)
        if device == self.device:
            return
        if device.type == "cpu" and self._host is not None:
            for sub, name, is_param, data in self._host:
                if is_param:   # a new Parameter around the kept tensor (set_data can refuse device changes)
                    old = sub._parameters[name]
                    sub._parameters[name] = nn.Parameter(data, requires_grad=old.requires_grad)
                else:
                    sub._buffers[name] = data
        else:
            for m in self.modules:
                m.to(device)
            if device.type == "cpu":
                self._remember()
        self.device = device


class StreamedBlocks:
    """Runs a chain of modules (umT5's 24 blocks) with only the one computing on the device: a forward
    pre-hook brings a block over, a forward hook re-binds its kept host tensors, so the encoder's GPU
    share is one block instead of all of them (9.3 GB -> 0.4 GB for umT5-XXL in bf16). Every block
    crosses the bus once per call, as a whole-encoder move would, so an encode costs about the same."""

    def __init__(self, modules: list[nn.Module]):
        self.parts = [HostResidency([m]) for m in modules]

    @contextmanager
    def streaming(self, device):
        """Hooks installed for the `with` body only; on exit every block is back on the host."""
        device = torch.device(device)
        handles = []
        for part in self.parts:
            m = part.modules[0]
            handles.append(m.register_forward_pre_hook(lambda _m, _a, p=part: p.to(device)))
            handles.append(m.register_forward_hook(lambda _m, _a, _o, p=part: p.to("cpu")))
        try:
            yield self
        finally:
            for h in handles:
                h.remove()
            for part in self.parts:
                part.to("cpu")

    def on_device(self) -> int:
        """How many blocks are off the host now (1 at most inside a block's forward)."""
        return sum(p.device.type != "cpu" for p in self.parts)
