"""Peak live bytes of the tensors an operation creates, on any device (CPU included): the stand-in for
torch.cuda.max_memory_allocated in the memory tests."""
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class PeakTracker(TorchDispatchMode):
    """Live bytes of every storage created inside the mode (freed when the storage dies)."""

    def __init__(self, known=()):
        super().__init__()
        self.known = {id(t.untyped_storage()) for t in known}
        self.live, self.cur, self.peak = {}, 0, 0

    def _free(self, key):
        self.cur -= self.live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                key = id(st)
                if st.nbytes() and key not in self.live and key not in self.known:
                    self.live[key] = st.nbytes()
                    self.cur += st.nbytes()
                    self.peak = max(self.peak, self.cur)
                    weakref.finalize(st, self._free, key)
        return out
