"""Moving inference-only modules between the host and the GPU without copying them back.

The encoders (umT5-XXL: 9.3 GB of blocks in bf16) visit the GPU once per prompt and leave it again.
Their weights never change, so leaving only needs the GPU copies dropped: the host tensors are kept
and re-bound, instead of a device-to-host copy into freshly allocated (page-faulted) host memory
every time. The cost is that the host copy stays allocated while the module is on the GPU.
"""
from __future__ import annotations

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
