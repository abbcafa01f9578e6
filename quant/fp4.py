"""4-bit float (e2m1) storage: code tables, packing, NVFP4 and MXFP4 block quantization.

Everything here is plain PyTorch on any device; it is both the storage format and the
reference numerics the GPU kernels must reproduce.

e2m1 code (4 bits, sign in bit 3): magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6 for codes 0..7; codes
8..15 are their negatives (code 8 is -0). Rounding is to nearest, ties to the even code (the one
whose mantissa bit is 0), saturating at 6.

Packing order (our own files): two codes per uint8, element 2i in the LOW nibble and element
2i+1 in the HIGH nibble (the order of torch.float4_e2m1fn_x2 and of the PTX/cuBLAS FP4 operands).
ComfyUI/comfy-kitchen files put element 2i in the HIGH nibble; `swap_nibbles` converts.

NVFP4 (block 16): decode scale per tensor ``s = amax / (6 * 448)`` (fp32), per block an e4m3
scale ``b = e4m3(amax_block / 6 / s)``; value = e2m1(x / (s * b)) * b * s.
MXFP4 (block 32, OCP MX v1.0): per block a power-of-two scale stored as e8m0 (biased exponent,
2^(code - 127)) = 2^(floor(log2 amax_block) - 2) (2 = largest e2m1 exponent), values saturate at
6. (Measured: this spec rule beats "smallest power of two >= amax/6" on Gaussian and t3 data.)
"""
from __future__ import annotations

import torch

E2M1_MAX = 6.0
E4M3_MAX = 448.0
NVFP4_BLOCK = 16
MXFP4_BLOCK = 32
E8M0_BIAS = 127
E2M1_EMAX = 2

# Value of each 4-bit code, index = code.
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)

# Midpoints between neighbouring magnitudes; at a tie the even code wins, so a tie rounds DOWN
# at 0.25, 1.25, 2.5, 5.0 (codes 0, 2, 4, 6 below) and UP at 0.75, 1.75, 3.5 (codes 2, 4, 6 above).
_TIE_DOWN = (0.25, 1.25, 2.5, 5.0)
_TIE_UP = (0.75, 1.75, 3.5)

_LUT_CACHE: dict = {}


def _lut(device: torch.device) -> torch.Tensor:
    key = str(device)
    if key not in _LUT_CACHE:
        _LUT_CACHE[key] = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=device)
    return _LUT_CACHE[key]


def encode_e2m1(x: torch.Tensor) -> torch.Tensor:
    """Round already-scaled values to e2m1 codes (uint8 0..15), nearest-even, saturating at +-6."""
    a = x.float().abs()
    mag = torch.zeros(a.shape, dtype=torch.uint8, device=a.device)
    for b in _TIE_DOWN:
        mag += (a > b).to(torch.uint8)
    for b in _TIE_UP:
        mag += (a >= b).to(torch.uint8)
    mag = torch.where(torch.isnan(a), torch.zeros_like(mag), mag)
    return mag | (torch.signbit(x).to(torch.uint8) << 3)


def decode_e2m1(codes: torch.Tensor) -> torch.Tensor:
    """e2m1 codes (any integer dtype, values 0..15) -> fp32 values."""
    return _lut(codes.device)[codes.long()]


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """[..., 2n] codes -> [..., n] uint8, element 2i in the low nibble (see module docstring)."""
    if codes.shape[-1] % 2:
        raise ValueError(f"pack_nibbles: last dimension must be even, got {tuple(codes.shape)}")
    c = codes.to(torch.uint8)
    return c[..., 0::2] | (c[..., 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """[..., n] uint8 -> [..., 2n] codes (uint8), inverse of `pack_nibbles`."""
    p = packed.view(torch.uint8)
    return torch.stack((p & 0x0F, p >> 4), dim=-1).reshape(*p.shape[:-1], 2 * p.shape[-1])


def swap_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Convert between low-first and high-first packing (ComfyUI files are high-first)."""
    p = packed.view(torch.uint8)
    return (p >> 4) | ((p & 0x0F) << 4)


# ----------------------------------------------------------------------------- scales
def encode_e8m0(scale_pow2: torch.Tensor) -> torch.Tensor:
    """Power-of-two fp32 scales -> e8m0 codes (uint8, biased exponent; 255 (NaN) never produced)."""
    e = torch.log2(scale_pow2.double()).round().long() + E8M0_BIAS
    return e.clamp(0, 254).to(torch.uint8)


def decode_e8m0(codes: torch.Tensor) -> torch.Tensor:
    """e8m0 codes -> fp32 scales 2^(code - 127) (code 255 -> NaN, per the OCP spec)."""
    c = codes.view(torch.uint8).long()
    out = torch.exp2((c - E8M0_BIAS).double()).float()
    return torch.where(c == 255, torch.full_like(out, float("nan")), out)


def to_blocked(scales: torch.Tensor) -> torch.Tensor:
    """[rows, cols] block scales -> cuBLAS/ComfyUI swizzled layout [ceil128(rows), ceil4(cols)].

    Tiles of 128 rows x 4 columns (zero padded), row-major over tiles; inside a tile the scale of
    (r, c) sits at byte (r % 32) * 16 + (r // 32) * 4 + c.
    """
    rows, cols = scales.shape
    rp, cp = -(-rows // 128) * 128, -(-cols // 4) * 4
    padded = torch.zeros(rp, cp, dtype=scales.dtype, device=scales.device)
    padded[:rows, :cols] = scales
    t = padded.view(rp // 128, 128, cp // 4, 4).permute(0, 2, 1, 3)          # [R, C, 128, 4]
    t = t.reshape(rp // 128, cp // 4, 4, 32, 4).transpose(2, 3)             # [R, C, 32, 4(r//32), 4(c)]
    return t.reshape(rp, cp).contiguous()


def from_blocked(blocked: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Inverse of `to_blocked`: any tensor holding ceil128(rows) * ceil4(cols) swizzled scales."""
    rp, cp = -(-rows // 128) * 128, -(-cols // 4) * 4
    if blocked.numel() != rp * cp:
        raise ValueError(f"swizzled block scales: expected {rp * cp} values for a {rows}x{cols} grid, "
                         f"got {blocked.numel()} (shape {tuple(blocked.shape)})")
    t = blocked.reshape(rp // 128, cp // 4, 32, 4, 4).transpose(2, 3)       # [R, C, 4, 32, 4]
    t = t.reshape(rp // 128, cp // 4, 128, 4).permute(0, 2, 1, 3)           # [R, 128, C, 4]
    return t.reshape(rp, cp)[:rows, :cols].contiguous()


# ----------------------------------------------------------------------------- padding
def padded_k(k: int, block: int) -> int:
    """K rounded up to a whole number of blocks (storage pads with zeros)."""
    return -(-k // block) * block


def pad_k(x: torch.Tensor, block: int) -> torch.Tensor:
    k = x.shape[-1]
    kp = padded_k(k, block)
    return x if kp == k else torch.nn.functional.pad(x, (0, kp - k))


# ----------------------------------------------------------------------------- NVFP4
def nvfp4_tensor_scale(x: torch.Tensor) -> torch.Tensor:
    """fp32 decode scale amax / (6 * 448) (1.0 for an all-zero tensor)."""
    amax = x.detach().abs().amax().float()
    return torch.where(amax > 0, amax / (E2M1_MAX * E4M3_MAX), torch.ones_like(amax))


def quantize_nvfp4(x: torch.Tensor, tensor_scale: torch.Tensor | None = None):
    """[R, K] -> (packed uint8 [R, Kp/2], e4m3 block scales [R, Kp/16], fp32 tensor scale []).

    K is zero-padded to a multiple of 16 (Kp).
    """
    x = pad_k(x.float(), NVFP4_BLOCK)
    rows, kp = x.shape
    ts = nvfp4_tensor_scale(x) if tensor_scale is None else tensor_scale.float().reshape(())
    blocks = x.view(rows, kp // NVFP4_BLOCK, NVFP4_BLOCK)
    bs = (blocks.abs().amax(dim=-1) / E2M1_MAX / ts).clamp(max=E4M3_MAX).to(torch.float8_e4m3fn)
    total = bs.float() * ts
    safe = torch.where(total > 0, total, torch.ones_like(total))
    scaled = torch.where(total[..., None] > 0, blocks / safe[..., None], torch.zeros_like(blocks))
    codes = encode_e2m1(scaled.clamp(-E2M1_MAX, E2M1_MAX)).view(rows, kp)
    return pack_nibbles(codes), bs, ts


def dequantize_nvfp4(packed: torch.Tensor, block_scale: torch.Tensor, tensor_scale: torch.Tensor,
                     k: int | None = None) -> torch.Tensor:
    """Inverse of `quantize_nvfp4` in fp32: code * (block_scale * tensor_scale); first k columns."""
    vals = decode_e2m1(unpack_nibbles(packed))
    rows, kp = vals.shape
    scale = block_scale.float() * tensor_scale.float().reshape(())
    out = (vals.view(rows, kp // NVFP4_BLOCK, NVFP4_BLOCK) * scale[..., None]).view(rows, kp)
    return out if k is None or k == kp else out[:, :k]


# ----------------------------------------------------------------------------- MXFP4
def quantize_mxfp4(x: torch.Tensor):
    """[R, K] -> (packed uint8 [R, Kp/2], e8m0 block scales uint8 [R, Kp/32]); K zero-padded to 32."""
    x = pad_k(x.float(), MXFP4_BLOCK)
    rows, kp = x.shape
    blocks = x.view(rows, kp // MXFP4_BLOCK, MXFP4_BLOCK)
    amax = blocks.abs().amax(dim=-1)
    exp = torch.floor(torch.log2(torch.where(amax > 0, amax, torch.ones_like(amax)))) - E2M1_EMAX
    exp = exp.clamp(-E8M0_BIAS, 127)
    codes_e8 = (exp + E8M0_BIAS).to(torch.uint8)
    scale = torch.exp2(exp)
    codes = encode_e2m1((blocks / scale[..., None]).clamp(-E2M1_MAX, E2M1_MAX)).view(rows, kp)
    return pack_nibbles(codes), codes_e8


def dequantize_mxfp4(packed: torch.Tensor, block_scale_e8m0: torch.Tensor, k: int | None = None) -> torch.Tensor:
    vals = decode_e2m1(unpack_nibbles(packed))
    rows, kp = vals.shape
    scale = decode_e8m0(block_scale_e8m0)
    out = (vals.view(rows, kp // MXFP4_BLOCK, MXFP4_BLOCK) * scale[..., None]).view(rows, kp)
    return out if k is None or k == kp else out[:, :k]


def nvfp4_to_fp8_rows(packed: torch.Tensor, block_scale: torch.Tensor, tensor_scale: torch.Tensor,
                      k: int | None = None):
    """W4A8 weight operand: NVFP4 -> (e4m3 [N, K], fp32 per-output-channel scale [N]).

    s_n = tensor_scale * max_b(block_scale[n, b]) * 6 / 448 (the largest value the row can hold,
    mapped to 448), then W8 = e4m3(W / s_n). e2m1 x e4m3 products are not all representable
    in e4m3, so this re-rounds (kernels_quant_perf.md §3.3, §7.3).
    """
    w = dequantize_nvfp4(packed, block_scale, tensor_scale, k)
    s = tensor_scale.float().reshape(()) * block_scale.float().amax(dim=1) * (E2M1_MAX / E4M3_MAX)
    s = torch.where(s > 0, s, torch.ones_like(s))
    return (w / s[:, None]).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), s
