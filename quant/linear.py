"""QuantLinear: the one module that stores a Linear's weight in any mode and computes with it.

Storage per kind (these are also the state-dict names of our pre-quantized files):
- dense: `weight` [N, K] base dtype (nn.Parameter)
- fp8:   `weight` [N, K] fp8, `weight_scale` [N] fp32 (1.0 for the unscaled modes)
- nvfp4: `weight` [N, Kp/2] uint8 (low nibble = even element), `weight_block_scale` [N, Kp/16]
         float8_e4m3fn, `weight_tensor_scale` [] fp32 (Kp = K rounded up to 16, zero padded)
- mxfp4: `weight` [N, Kp/2] uint8, `weight_block_scale` [N, Kp/32] uint8 e8m0 (Kp: multiple of 32)
`bias` [N] stays in base precision. The forward goes through backends.quant_linear_forward.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..log import info
from .backends import quant_linear_forward
from .fp4 import MXFP4_BLOCK, NVFP4_BLOCK, dequantize_mxfp4, dequantize_nvfp4, padded_k, quantize_mxfp4, quantize_nvfp4
from .fp8 import dequantize_fp8_weight, quantize_fp8_weight
from .incoming import IncomingWeight, QuantFormatError, dequantize_incoming, parse_linear_state
from .modes import get_mode

_QUANT_NAMES = ("weight", "weight_scale", "weight_block_scale", "weight_tensor_scale")
_REQUANT_LOGGED: set[tuple[str, str]] = set()


def storage_layout(storage: str, n: int, k: int, base_dtype: torch.dtype,
                   fp8_dtype: torch.dtype | None = None) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """name -> (shape, dtype) of the weight tensors of one Linear (bias not included)."""
    if storage == "dense":
        return {"weight": ((n, k), base_dtype)}
    if storage == "fp8":
        return {"weight": ((n, k), fp8_dtype), "weight_scale": ((n,), torch.float32)}
    if storage == "nvfp4":
        kp = padded_k(k, NVFP4_BLOCK)
        return {"weight": ((n, kp // 2), torch.uint8), "weight_block_scale": ((n, kp // NVFP4_BLOCK), torch.float8_e4m3fn),
                "weight_tensor_scale": ((), torch.float32)}
    if storage == "mxfp4":
        kp = padded_k(k, MXFP4_BLOCK)
        return {"weight": ((n, kp // 2), torch.uint8), "weight_block_scale": ((n, kp // MXFP4_BLOCK), torch.uint8)}
    raise ValueError(f"unknown storage kind {storage!r}")


def linear_storage_bytes(mode: str, n: int, k: int, bias: bool, base_dtype: torch.dtype = torch.bfloat16) -> int:
    """Exact bytes one quantized Linear holds (weights, scales and the base-precision bias)."""
    spec = get_mode(mode)
    total = 0
    for shape, dtype in storage_layout(spec.storage, n, k, base_dtype, spec.fp8_dtype).values():
        numel = 1
        for d in shape:
            numel *= d
        total += numel * torch.empty((), dtype=dtype).element_size()
    return total + (n * torch.empty((), dtype=base_dtype).element_size() if bias else 0)


class QuantLinear(nn.Module):
    """A Linear whose weight is stored in `mode` (modes.py) and computed along `compute_path`."""

    accepts_raw_state = True   # the loader passes checkpoint tensors through untouched (any layout/device)

    def __init__(self, in_features: int, out_features: int, bias: bool = True, mode: str = "fp4_scaled",
                 base_dtype: torch.dtype = torch.bfloat16, device=None, compute_path: str | None = None):
        super().__init__()
        spec = get_mode(mode)
        self.in_features, self.out_features = in_features, out_features
        self.mode, self.storage, self.fp8_dtype = mode, spec.storage, spec.fp8_dtype
        self.base_dtype = base_dtype
        self.compute_path = compute_path or spec.compute
        self.target_device: torch.device | None = None   # where loaded tensors go (None: see _target)
        for name, (shape, dtype) in storage_layout(self.storage, out_features, in_features, base_dtype,
                                                   self.fp8_dtype).items():
            self._set(name, torch.empty(shape, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=base_dtype, device=device),
                                 requires_grad=False) if bias else None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_linear(cls, linear: nn.Linear, mode: str, base_dtype: torch.dtype = torch.bfloat16,
                    compute_path: str | None = None) -> "QuantLinear":
        """Quantize a Linear (on meta: allocate only, the loader fills it later)."""
        dev = linear.weight.device
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, mode, base_dtype, dev, compute_path)
        if dev.type != "meta":
            q.quantize_weight_(linear.weight.detach())
            if linear.bias is not None:
                q.bias = nn.Parameter(linear.bias.detach().to(base_dtype), requires_grad=False)
        return q

    def _set(self, name: str, t: torch.Tensor) -> None:
        if self.storage == "dense" and name == "weight":
            self._buffers.pop(name, None)
            self._parameters[name] = nn.Parameter(t, requires_grad=False)
        else:
            self._buffers[name] = t

    def _target(self, incoming: torch.Tensor) -> torch.device:
        if self.target_device is not None:
            return torch.device(self.target_device)
        cur = self.weight.device
        return incoming.device if cur.type == "meta" else cur

    @torch.no_grad()
    def quantize_weight_(self, w: torch.Tensor) -> "QuantLinear":
        """Store a base-precision weight [N, K] in this module's mode (on w's device)."""
        if tuple(w.shape) != (self.out_features, self.in_features):
            raise ValueError(f"weight shape {tuple(w.shape)} != ({self.out_features}, {self.in_features})")
        spec = get_mode(self.mode)
        if self.storage == "dense":
            self._set("weight", w.to(self.base_dtype).contiguous())
        elif self.storage == "fp8":
            wq, s = quantize_fp8_weight(w, self.fp8_dtype, scaled=spec.scaled)
            self._set("weight", wq)
            self._set("weight_scale", s)
        elif self.storage == "nvfp4":
            p, bs, ts = quantize_nvfp4(w)
            self._set("weight", p)
            self._set("weight_block_scale", bs)
            self._set("weight_tensor_scale", ts)
        else:
            p, e = quantize_mxfp4(w)
            self._set("weight", p)
            self._set("weight_block_scale", e)
        return self

    def dequantize_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight as [N, K] in `dtype` (dequantization in fp32, then one cast)."""
        k = self.in_features
        if self.storage == "dense":
            return self.weight.to(dtype)
        if self.storage == "fp8":
            w = dequantize_fp8_weight(self.weight, self.weight_scale)
        elif self.storage == "nvfp4":
            w = dequantize_nvfp4(self.weight, self.weight_block_scale, self.weight_tensor_scale, k)
        else:
            w = dequantize_mxfp4(self.weight, self.weight_block_scale, k)
        return w.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quant_linear_forward(self, x)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"mode={self.mode}, compute={self.compute_path}")

    # ------------------------------------------------------------------ device/dtype moves
    def _apply(self, fn, recurse=True):
        """`.to(dtype)` / `.half()` must not cast quantized storage (fp8 / scales); device moves still apply."""
        if self.storage == "dense":
            return super()._apply(fn, recurse)
        keep = {n: b for n, b in self._buffers.items() if n in _QUANT_NAMES and b is not None}
        super()._apply(fn, recurse)
        for n, orig in keep.items():
            new = self._buffers[n]
            if new.dtype != orig.dtype:
                self._buffers[n] = orig.to(new.device)
        return self

    # ------------------------------------------------------------------ loading
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        local = {k[len(prefix):]: v for k, v in state_dict.items()
                 if k.startswith(prefix) and "." not in k[len(prefix):]}
        inc = parse_linear_state(local, prefix, self.out_features, self.in_features)
        if inc is None:
            missing_keys.append(prefix + "weight")
        else:
            self._load_incoming(inc, prefix)
        used = set(inc.consumed) if inc is not None else set()
        if self.bias is not None:
            b = local.get("bias")
            if b is None:
                missing_keys.append(prefix + "bias")
            else:
                if tuple(b.shape) != (self.out_features,):
                    raise QuantFormatError(f"{prefix}bias: shape {tuple(b.shape)}, the model expects ({self.out_features},)")
                self.bias = nn.Parameter(b.to(self._target(b), self.base_dtype), requires_grad=False)
                used.add("bias")
        if strict:
            unexpected_keys.extend(prefix + k for k in local if k not in used)

    @torch.no_grad()
    def _load_incoming(self, inc: IncomingWeight, prefix: str) -> None:
        dev = self._target(inc.tensors["weight"])
        t = {n: v.to(dev) for n, v in inc.tensors.items()}
        same_fp8 = self.storage == "fp8" and inc.kind == "fp8" and t["weight"].dtype == self.fp8_dtype
        if same_fp8 or (self.storage == inc.kind and self.storage in ("nvfp4", "mxfp4")):
            for n, v in t.items():            # bit-exact copy of an already-quantized weight
                self._set(n, v.contiguous())
            return
        if self.storage == "dense" and inc.kind == "dense":
            self._set("weight", t["weight"].to(self.base_dtype).contiguous())
            return
        if inc.kind != "dense" and (inc.source, self.mode) not in _REQUANT_LOGGED:
            _REQUANT_LOGGED.add((inc.source, self.mode))
            info(f"{prefix}weight is {inc.source}: dequantizing and storing as {self.mode} (first of such layers)")
        self.quantize_weight_(dequantize_incoming(IncomingWeight(inc.kind, t, inc.source), self.in_features))
