"""Block swap: the last N transformer blocks live in host memory in their stored (quantized) form and
are streamed to the GPU just before they run (kernels_quant_perf.md §3.4).

How it works
- Each swapped block's parameters AND buffers (QuantLinear packed uint8 / fp8 weights, scales, biases,
  norms, modulation) are packed once into one flat host buffer: pinned while the pin cap allows
  (about 55 GB/s), pageable past it (about 19.5 GB/s, one [WARN] line). At rest the block's tensors
  are views into that host buffer, so nothing of it stays on the GPU.
- The GPU holds a ring of `prefetch + 1` slots (flat buffers of the largest block), allocated once and
  reused: "the memory of finished blocks is reused, not reallocated". Before block k runs, its tensors
  are re-pointed to views into its slot; afterwards back to the host views.
- A dedicated copy stream fills the slots; events order the work: the compute stream waits on the copy
  of block k, the copy of block k + slots into the same slot waits on block k's compute.
- Optionally the text/image embedding layers and the audio projection are offloaded too: they are
  copied in for their single call per forward and dropped after it.

`device="cpu"` runs the same slot ring with synchronous `copy_` (no streams): the CPU tests use it to
prove bit-exact outputs, slot reuse and byte counts. `apply_block_swap` is what callers use: it is a
no-op on CPU and re-plans an already swapped model.
"""
from __future__ import annotations

import os
import weakref
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..log import info, warn

ALIGN = 256                                     # byte alignment of every tensor inside a flat buffer
EMBEDDING_MODULES = ("text_embedding", "img_emb", "audio_proj")
DEFAULT_PIN_FRACTION = 0.5                      # of physical RAM (as mmgp / Wan2GP default on Linux)
_PINNED_TOTAL = [0]                             # pinned bytes held by all swappers of this process


def _release_pins(cell: list) -> None:
    """A swapped model dropped from the cache without uninstall() must not keep counting against the cap."""
    _PINNED_TOTAL[0] -= cell[0]
    cell[0] = 0


def system_ram_bytes() -> int | None:
    """Physical RAM of this machine (psutil when installed, else sysconf), None when unknown."""
    try:
        import psutil
        return int(psutil.virtual_memory().total)
    except Exception:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def default_pin_limit() -> int | None:
    ram = system_ram_bytes()
    return None if ram is None else int(ram * DEFAULT_PIN_FRACTION)


def _alloc_pinned(nbytes: int) -> torch.Tensor:
    """Page-locked host bytes (tests replace this to simulate pinning on CPU-only machines)."""
    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


# ----------------------------------------------------------------------------- flat tensor layouts
@dataclass
class _Entry:
    module: nn.Module
    name: str
    is_param: bool
    shape: tuple
    dtype: torch.dtype
    offset: int
    nbytes: int


def _layout(root: nn.Module) -> tuple[list[_Entry], int, int]:
    """Every parameter and buffer under `root` -> (entries, payload bytes, padded buffer bytes)."""
    entries, offset, payload = [], 0, 0
    for _, mod in root.named_modules():
        for is_param, table in ((True, mod._parameters), (False, mod._buffers)):
            for name, t in table.items():
                if t is None:
                    continue
                if t.is_meta:
                    raise RuntimeError(f"block swap: {type(mod).__name__}.{name} is on the meta device; load the "
                                       f"weights before enabling block swap")
                nb = t.numel() * t.element_size()
                entries.append(_Entry(mod, name, is_param, tuple(t.shape), t.dtype, offset, nb))
                offset = _align(offset + nb)
                payload += nb
    return entries, payload, offset


def _current(e: _Entry) -> torch.Tensor:
    return (e.module._parameters if e.is_param else e.module._buffers)[e.name]


def _views(buf: torch.Tensor, entries: list[_Entry]) -> list[torch.Tensor]:
    """Typed views of a flat uint8 buffer, one per entry (no allocation)."""
    return [buf[e.offset:e.offset + e.nbytes].view(e.dtype).view(e.shape) for e in entries]


def _bind(entries: list[_Entry], tensors: list[torch.Tensor]) -> None:
    """Point every entry's module tensor at `tensors` (parameters keep their identity)."""
    for e, t in zip(entries, tensors):
        if e.is_param:
            e.module._parameters[e.name].data = t
        else:
            e.module._buffers[e.name] = t


def _pack(entries: list[_Entry], buf: torch.Tensor) -> None:
    """Copy the entries' current tensors (any device) into the flat buffer."""
    for e in entries:
        src = _current(e).detach().reshape(-1).view(torch.uint8)
        buf[e.offset:e.offset + e.nbytes].copy_(src)


@dataclass
class _HostStore:
    """One offloaded module: its layout, the flat host buffer and the host views bound at rest."""

    name: str
    entries: list
    payload: int
    padded: int
    host: torch.Tensor
    pinned: bool
    host_views: list = field(default_factory=list)


@dataclass
class SwapStats:
    forwards: int = 0
    block_copies: int = 0
    bytes_copied: int = 0        # payload bytes (stored tensor bytes) moved host -> device
    embedding_bytes: int = 0


# ----------------------------------------------------------------------------- copy engines
class _SyncEngine:
    """device="cpu": copies run inline; the scheduling is the same as on CUDA."""

    def __init__(self, device, slots):
        pass

    def begin(self) -> None:
        pass

    def copy(self, dst: torch.Tensor, src: torch.Tensor, slot: int) -> None:
        dst.copy_(src)

    def wait_copy(self, slot: int) -> None:
        pass

    def computed(self, slot: int) -> None:
        pass

    def synchronize(self) -> None:
        pass


class _CudaEngine:
    """A side stream for host -> device copies; per slot one 'copied' and one 'computed' event."""

    def __init__(self, device: torch.device, slots: int):
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self.copied = [torch.cuda.Event() for _ in range(slots)]
        self.done = [torch.cuda.Event() for _ in range(slots)]

    def begin(self) -> None:
        # Order this forward's copies after everything already queued on the compute stream (slot memory
        # handed out by the caching allocator, and the previous forward's use of the slots).
        self.stream.wait_stream(torch.cuda.current_stream(self.device))

    def copy(self, dst: torch.Tensor, src: torch.Tensor, slot: int) -> None:
        with torch.cuda.stream(self.stream):
            self.stream.wait_event(self.done[slot])     # the slot's previous block has finished computing
            dst.copy_(src, non_blocking=True)
            self.copied[slot].record(self.stream)

    def wait_copy(self, slot: int) -> None:
        torch.cuda.current_stream(self.device).wait_event(self.copied[slot])

    def computed(self, slot: int) -> None:
        self.done[slot].record(torch.cuda.current_stream(self.device))

    def synchronize(self) -> None:
        self.stream.synchronize()


# ----------------------------------------------------------------------------- the swapper
class BlockSwapper:
    """Keeps the last `blocks_to_swap` blocks of `model.blocks` in host memory and streams them in.

    Use `install()` (moves the model: resident parts to `device`, swapped blocks to host memory, wraps
    `model._run_blocks`) and `uninstall()`. Do not call `model.to(...)` while installed.
    pin_limit_bytes: cap on pinned host memory for the whole process (default 50% of RAM).
    prefetch: blocks copied ahead of the one computing (slots = prefetch + 1).
    pin_memory: None -> pin when the device is CUDA.
    """

    def __init__(self, model: nn.Module, blocks_to_swap: int, device, pin_limit_bytes: int | None = None,
                 offload_embeddings: bool = False, prefetch: int = 1, pin_memory: bool | None = None):
        blocks = getattr(model, "blocks", None)
        if not isinstance(blocks, nn.ModuleList):
            raise TypeError("block swap: the model has no `blocks` ModuleList (expected a WanModel)")
        n_layers = len(blocks)
        if not 0 <= int(blocks_to_swap) <= n_layers:
            raise ValueError(f"blocks_to_swap: must be between 0 and {n_layers} (the model's blocks), "
                             f"got {blocks_to_swap}")
        if prefetch < 1:
            raise ValueError(f"prefetch: must be at least 1, got {prefetch}")
        self.model = model
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("block swap: device is CUDA but torch sees no CUDA GPU")
        if self.device.type not in ("cuda", "cpu"):
            raise ValueError(f"block swap: device {self.device} is not supported (cuda or cpu)")
        self.blocks_to_swap = int(blocks_to_swap)
        self.first_swapped = n_layers - self.blocks_to_swap
        self.offload_embeddings = bool(offload_embeddings)
        self.num_slots = min(prefetch + 1, self.blocks_to_swap)
        self.pin_memory = (self.device.type == "cuda") if pin_memory is None else bool(pin_memory)
        self.pin_limit = default_pin_limit() if pin_limit_bytes is None else int(pin_limit_bytes)
        self.stats = SwapStats()
        self.trace: list | None = None   # set to [] to record ("copy"/"compute", block, slot) events
        self.stores: list[_HostStore] = []          # swapped blocks, in order
        self.embedding_stores: dict[str, _HostStore] = {}
        self.slots: list[torch.Tensor] = []
        self._slot_views: dict[tuple[int, int], list] = {}
        self._hooks: list = []
        self._emb_by_module: dict[int, _HostStore] = {}
        self._pin_cell = [0]                      # pinned bytes of this swapper (released on uninstall or GC)
        weakref.finalize(self, _release_pins, self._pin_cell)
        self._engine = None
        self.installed = False

    # ------------------------------------------------------------------ host storage
    def _host_store(self, name: str, module: nn.Module, pageable: list) -> _HostStore:
        entries, payload, padded = _layout(module)
        buf, pinned = None, False
        if self.pin_memory:
            if self.pin_limit is None or _PINNED_TOTAL[0] + padded <= self.pin_limit:
                try:
                    with torch.inference_mode(False):
                        buf = _alloc_pinned(padded)
                    pinned = True
                except RuntimeError as err:
                    warn(f"Block swap: pinning {padded / 1e6:.0f} MB of host memory failed ({err}); "
                         f"using pageable memory (slower copies)")
                    self.pin_memory = False
            if buf is None:
                pageable.append(name)
        if buf is None:
            with torch.inference_mode(False):
                buf = torch.empty(padded, dtype=torch.uint8)
        if pinned:
            _PINNED_TOTAL[0] += padded
            self._pin_cell[0] += padded
        _pack(entries, buf)
        store = _HostStore(name, entries, payload, padded, buf, pinned, _views(buf, entries))
        _bind(entries, store.host_views)
        return store

    # ------------------------------------------------------------------ install / uninstall
    def install(self) -> "BlockSwapper":
        if self.installed:
            return self
        if getattr(self.model, "wanfp4_block_swap", None) not in (None, self):
            raise RuntimeError("block swap: the model already has a swapper installed; uninstall it first "
                               "(or use apply_block_swap)")
        m, pageable = self.model, []
        meta = next((n for n, t in list(m.named_parameters()) + list(m.named_buffers()) if t.is_meta), None)
        if meta is not None:
            raise RuntimeError(f"block swap: {meta} is on the meta device; load the weights before enabling "
                               f"block swap")
        for name, child in m.named_children():
            if name == "blocks":
                continue
            if self.offload_embeddings and name in EMBEDDING_MODULES:
                self.embedding_stores[name] = self._emb_by_module[id(child)] = self._host_store(name, child, pageable)
                self._hooks += [child.register_forward_pre_hook(self._embedding_in),
                                child.register_forward_hook(self._embedding_out, always_call=True)]
            else:
                child.to(self.device)
        for i, block in enumerate(m.blocks):       # one block at a time: never all 40 on the GPU at once
            if i < self.first_swapped:
                block.to(self.device)
            else:
                self.stores.append(self._host_store(f"block {i}", block, pageable))
        if pageable:
            cap = "unknown" if self.pin_limit is None else f"{self.pin_limit / 1e9:.1f} GB"
            warn(f"Block swap: pinned memory cap ({cap}) reached; {_names(pageable)} use pageable memory "
                 f"(host-to-GPU copies about 3x slower). Swap fewer blocks, use a smaller quantization mode "
                 f"or add RAM.")
        if self.stores:
            size = max(s.padded for s in self.stores)
            with torch.inference_mode(False):
                self.slots = [torch.empty(size, dtype=torch.uint8, device=self.device) for _ in range(self.num_slots)]
            engine = _CudaEngine if self.device.type == "cuda" else _SyncEngine
            self._engine = engine(self.device, self.num_slots)
        m._run_blocks = self._run_blocks           # instance attribute shadows WanModel._run_blocks
        m.wanfp4_block_swap = self
        self.installed = True
        if self.stores or self.embedding_stores:
            info(self.describe())
        return self

    def describe(self) -> str:
        host = sum(s.payload for s in self.stores) + sum(s.payload for s in self.embedding_stores.values())
        slot = self.slots[0].numel() if self.slots else 0
        pinned = sum(s.pinned for s in self.stores)
        emb = f", embeddings offloaded ({', '.join(self.embedding_stores)})" if self.embedding_stores else ""
        return (f"Block swap: {self.blocks_to_swap}/{len(self.model.blocks)} blocks in host memory "
                f"({host / 1e9:.2f} GB, {pinned} pinned), {self.num_slots} GPU slots of {slot / 1e6:.0f} MB{emb}")

    @torch.no_grad()
    def uninstall(self, device=None) -> None:
        """Restore the plain model; swapped/offloaded tensors are copied to `device` (default: the swap
        device; "cpu" gives ordinary pageable CPU tensors) and the host buffers and slots are released."""
        if not self.installed:
            return
        if self._engine is not None:
            self._engine.synchronize()
        target = self.device if device is None else torch.device(device)
        for h in self._hooks:
            h.remove()
        for store in list(self.stores) + list(self.embedding_stores.values()):
            _bind(store.entries, [v.to(target, copy=True) for v in store.host_views])
        self.model.__dict__.pop("_run_blocks", None)
        if getattr(self.model, "wanfp4_block_swap", None) is self:
            del self.model.wanfp4_block_swap
        _release_pins(self._pin_cell)
        self.stores, self.embedding_stores, self.slots, self._slot_views, self._hooks = [], {}, [], {}, []
        self._emb_by_module = {}
        self._engine = None
        self.installed = False

    # ------------------------------------------------------------------ the block loop
    def _copy_in(self, k: int) -> None:
        s = k % self.num_slots
        store = self.stores[k]
        self._engine.copy(self.slots[s][:store.padded], store.host[:store.padded], s)
        self.stats.block_copies += 1
        self.stats.bytes_copied += store.payload
        if self.trace is not None:
            self.trace.append(("copy", self.first_swapped + k, s))

    def _run_blocks(self, x: torch.Tensor, inp) -> torch.Tensor:
        """WanModel._run_blocks with the swapped blocks streamed through the slot ring."""
        blocks, n = self.model.blocks, len(self.stores)
        self.stats.forwards += 1
        if n:
            self._engine.begin()
            for k in range(self.num_slots):                 # prefetch: overlaps the resident blocks
                self._copy_in(k)
        for i, block in enumerate(blocks):
            if i < self.first_swapped:
                x = block(x, inp)
                continue
            k = i - self.first_swapped
            s = k % self.num_slots
            store = self.stores[k]
            views = self._slot_views.get((k, s))
            if views is None:
                views = self._slot_views[(k, s)] = _views(self.slots[s], store.entries)
            self._engine.wait_copy(s)
            _bind(store.entries, views)
            try:
                if self.trace is not None:
                    self.trace.append(("compute", i, s))
                x = block(x, inp)
            finally:
                self._engine.computed(s)
                _bind(store.entries, store.host_views)     # at rest the block points at host memory
            if k + self.num_slots < n:
                self._copy_in(k + self.num_slots)           # into the slot this block just used
        return x

    # ------------------------------------------------------------------ embedding offload hooks
    def _embedding_in(self, module, args):
        store = self._emb_by_module[id(module)]
        dev = torch.empty(store.padded, dtype=torch.uint8, device=self.device)
        dev.copy_(store.host, non_blocking=store.pinned)   # same stream as the call: ordered
        _bind(store.entries, _views(dev, store.entries))
        self.stats.embedding_bytes += store.payload

    def _embedding_out(self, module, args, output):
        store = self._emb_by_module[id(module)]
        _bind(store.entries, store.host_views)


def _names(items: list[str]) -> str:
    blocks = [int(s.split()[1]) for s in items if s.startswith("block ")]
    other = [s for s in items if not s.startswith("block ")]
    parts = other + ([f"blocks {blocks[0]}-{blocks[-1]}" if len(blocks) > 1 else f"block {blocks[0]}"] if blocks else [])
    return ", ".join(parts)


def apply_block_swap(model: nn.Module, blocks_to_swap: int, device, *, offload_embeddings: bool = False,
                     pin_limit_bytes: int | None = None, prefetch: int = 1) -> BlockSwapper | None:
    """Put `model` on `device` with `blocks_to_swap` blocks swapped (idempotent; re-plans a swapped model).

    Returns the installed swapper, or None when nothing is swapped. On a CPU device block swap is
    meaningless: the model is simply moved there (one [INFO] line if swapping was asked for).
    """
    device = torch.device(device)
    current = getattr(model, "wanfp4_block_swap", None)
    if current is not None:
        same = (current.blocks_to_swap == int(blocks_to_swap) and current.device == device
                and current.offload_embeddings == bool(offload_embeddings) and current.num_slots ==
                min(prefetch + 1, int(blocks_to_swap)))
        if same:
            return current
        current.uninstall(device="cpu")    # back to plain CPU tensors: never all blocks on the GPU at once
    if device.type != "cuda" or (int(blocks_to_swap) == 0 and not offload_embeddings):
        if device.type != "cuda" and (blocks_to_swap or offload_embeddings):
            info(f"Block swap: not used on {device.type.upper()} (the weights already live in host memory)")
        model.to(device)
        return None
    return BlockSwapper(model, blocks_to_swap, device, pin_limit_bytes=pin_limit_bytes,
                        offload_embeddings=offload_embeddings, prefetch=prefetch).install()
