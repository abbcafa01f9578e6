"""Number formats used by the quantized attention references, simulated exactly in fp32.

Each function returns the *dequantized* values (what the tensor core sees, times its scales), so the
reference attention can do its arithmetic in fp32 and still reproduce every rounding of the format.
Rounding is round-to-nearest, ties-to-even, and values beyond a format's range saturate to its max.
"""
from __future__ import annotations

import torch

INT8_MAX = 127.0
FP8_E4M3_MAX = 448.0
E2M1_MAX = 6.0
E2M1_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)   # |values| of fp4 e2m1; index parity == mantissa bit
_E2M1_MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)


def round_int8(x: torch.Tensor) -> torch.Tensor:
    """Round to the symmetric INT8 range [-127, 127] (ties to even), as float."""
    return torch.round(x).clamp_(-INT8_MAX, INT8_MAX)


def round_fp8_e4m3(x: torch.Tensor) -> torch.Tensor:
    """Round fp32 values to float8_e4m3fn (saturating at +-448), returned as fp32."""
    return x.clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn).to(torch.float32)


def round_e2m1(x: torch.Tensor) -> torch.Tensor:
    """Round fp32 values to fp4 e2m1 {0, +-0.5, ..., +-6} (ties to even mantissa, saturating), as fp32.

    Written out with two bucketizes (ties down / ties up) because torch has no e2m1 cast on CPU.
    """
    a = x.abs()
    mids = torch.tensor(_E2M1_MIDPOINTS, dtype=a.dtype, device=a.device)
    grid = torch.tensor(E2M1_GRID, dtype=a.dtype, device=a.device)
    down = torch.bucketize(a, mids, right=False)      # a == midpoint -> lower neighbour
    up = torch.bucketize(a, mids, right=True)         # a == midpoint -> upper neighbour
    idx = torch.where(down == up, down, torch.where(down % 2 == 0, down, up))
    return torch.sign(x) * grid[idx]


def _pad_dim(x: torch.Tensor, dim: int, multiple: int) -> tuple[torch.Tensor, int]:
    n = x.shape[dim]
    pad = (-n) % multiple
    if pad:
        shape = list(x.shape)
        shape[dim] = pad
        x = torch.cat([x, x.new_zeros(shape)], dim=dim)
    return x, n


def nvfp4_quant(x: torch.Tensor, dim: int, tensor_dims: tuple[int, ...], block: int = 16
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """NVFP4 of fp32 `x`: e2m1 values in blocks of `block` along `dim`, one e4m3 scale per block and
    one fp32 scale per "tensor" (the slice spanned by `tensor_dims`, which must include `dim`).

    tensor scale  s_t = amax(tensor) / (448 * 6)          (fp32, so block scales use the full e4m3 range)
    block scale   s_b = e4m3(amax(block) / 6 / s_t)
    code          c   = e2m1((x / s_t) / s_b)             (saturating at +-6; zero block -> 0)
    Returns (c * s_b, s_t): the dequantized tensor is their product. c * s_b has at most 6
    significant bits, so matmuls of it are exact in fp32 and TF32 alike; s_t is applied outside.
    A length along `dim` that is not a multiple of `block` is padded with zeros, which change no amax.
    """
    x = x.float()
    dim = dim % x.dim()
    tensor_dims = tuple(d % x.dim() for d in tensor_dims)
    if dim not in tensor_dims:
        raise ValueError(f"nvfp4_quant: block dim {dim} must be one of the tensor dims {tensor_dims}")
    amax = x.abs().amax(dim=tensor_dims, keepdim=True)
    s_t = torch.where(amax > 0, amax / (FP8_E4M3_MAX * E2M1_MAX), torch.ones_like(amax))
    xp, n = _pad_dim(x / s_t, dim, block)
    shape = list(xp.shape)
    blocked = xp.reshape(shape[:dim] + [shape[dim] // block, block] + shape[dim + 1:])
    s_b = round_fp8_e4m3(blocked.abs().amax(dim=dim + 1, keepdim=True) / E2M1_MAX)
    safe = torch.where(s_b > 0, s_b, torch.ones_like(s_b))
    vals = torch.where(s_b > 0, round_e2m1(blocked / safe) * s_b, torch.zeros_like(blocked))
    return vals.reshape(shape).narrow(dim, 0, n), s_t


def nvfp4_fake_quant(x: torch.Tensor, dim: int, tensor_dims: tuple[int, ...], block: int = 16) -> torch.Tensor:
    """NVFP4 round trip of `x` (see nvfp4_quant), as one fp32 tensor."""
    vals, s_t = nvfp4_quant(x, dim, tensor_dims, block)
    return vals * s_t
