"""Bit-level formats (e2m1 codes, nibble packing, e4m3 / e8m0 scales, cuBLAS swizzle) and
quantize -> dequantize error bounds.

Measured relative RMS errors (512x1024, seed 0; Gaussian / Student-t df 3):
  fp8 e4m3 per-channel 0.026 / 0.025, fp8 e5m2 per-channel 0.053 / 0.050,
  NVFP4 0.095 / 0.091, MXFP4 0.115 / 0.141, NVFP4 -> fp8 re-rounding (W4A8 operand) 0.028 / 0.025.
Asserted bounds (with margin): fp8 e4m3 0.03, e5m2 0.06, NVFP4 0.10, MXFP4 0.125 (Gaussian) / 0.16 (t3).
"""
import math

import pytest
import torch

from wanfp4.quant.fp4 import (E2M1_VALUES, decode_e2m1, decode_e8m0, dequantize_mxfp4, dequantize_nvfp4,
                              encode_e2m1, encode_e8m0, from_blocked, nvfp4_to_fp8_rows, pack_nibbles,
                              quantize_mxfp4, quantize_nvfp4, swap_nibbles, to_blocked, unpack_nibbles)
from wanfp4.quant.fp8 import dequantize_fp8_weight, quantize_fp8_rows, quantize_fp8_weight

# Hand-made e2m1 table: code -> (sign, exponent bits, mantissa bit) -> value, per the OCP spec:
# exponent 0 is subnormal (0.5 * m), else 2^(e-1) * (1 + m/2).
HAND_TABLE = {0b0000: 0.0, 0b0001: 0.5, 0b0010: 1.0, 0b0011: 1.5, 0b0100: 2.0, 0b0101: 3.0, 0b0110: 4.0,
              0b0111: 6.0, 0b1000: -0.0, 0b1001: -0.5, 0b1010: -1.0, 0b1011: -1.5, 0b1100: -2.0,
              0b1101: -3.0, 0b1110: -4.0, 0b1111: -6.0}


def _spec_value(code: int) -> float:
    s, e, m = code >> 3, (code >> 1) & 3, code & 1
    mag = 0.5 * m if e == 0 else 2.0 ** (e - 1) * (1 + m / 2)
    return -mag if s else mag


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_e2m1_table_matches_hand_table_and_spec():
    codes = torch.arange(16, dtype=torch.uint8)
    vals = decode_e2m1(codes)
    for c in range(16):
        assert vals[c].item() == HAND_TABLE[c] == _spec_value(c)
        assert math.copysign(1, vals[c].item()) == math.copysign(1, HAND_TABLE[c])  # -0 keeps its sign
    assert list(E2M1_VALUES) == [HAND_TABLE[c] for c in range(16)]


def test_every_code_round_trips_through_encode():
    codes = torch.arange(16, dtype=torch.uint8)
    assert torch.equal(encode_e2m1(decode_e2m1(codes)), codes)


def test_e2m1_rounding_nearest_even_and_saturation():
    x = torch.tensor([0.24, 0.25, 0.26, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 5.01, 7.0, 1e9, -0.75, -2.6])
    want = [0.0, 0.0, 0.5, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, 6.0, 6.0, -1.0, -3.0]
    assert decode_e2m1(encode_e2m1(x)).tolist() == want


def test_nibble_packing_low_first_bit_exact():
    codes = torch.tensor([[1, 2, 15, 0, 7, 8]], dtype=torch.uint8)
    packed = pack_nibbles(codes)
    assert packed.tolist() == [[0x21, 0x0F, 0x87]]            # element 0 in the low nibble
    assert torch.equal(unpack_nibbles(packed), codes)
    all_pairs = torch.cartesian_prod(torch.arange(16), torch.arange(16)).to(torch.uint8).reshape(1, -1)
    assert torch.equal(unpack_nibbles(pack_nibbles(all_pairs)), all_pairs)
    assert swap_nibbles(torch.tensor([0x21], dtype=torch.uint8)).item() == 0x12
    # our order is that of torch.float4_e2m1fn_x2 storage: same bytes reinterpretable
    assert pack_nibbles(all_pairs).view(torch.float4_e2m1fn_x2).view(torch.uint8).equal(pack_nibbles(all_pairs))


def test_e8m0_codes_bit_exact():
    codes = torch.arange(0, 255, dtype=torch.uint8)
    scales = decode_e8m0(codes)
    assert scales[127].item() == 1.0 and scales[128].item() == 2.0 and scales[126].item() == 0.5
    assert scales[0].item() == 2.0 ** -127 and scales[254].item() == 2.0 ** 127
    assert torch.equal(encode_e8m0(scales), codes)
    assert math.isnan(decode_e8m0(torch.tensor([255], dtype=torch.uint8)).item())
    # torch's own e8m0 dtype agrees with our decoding
    assert torch.equal(codes.view(torch.float8_e8m0fnu).float()[1:], scales[1:])


def test_e4m3_block_scale_codes_round_trip_every_finite_code():
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    vals = codes.view(torch.float8_e4m3fn).float()
    finite = ~torch.isnan(vals)
    back = vals[finite].to(torch.float8_e4m3fn).view(torch.uint8)
    assert torch.equal(back, codes[finite])
    assert vals[finite].abs().max().item() == 448.0


def test_swizzle_matches_the_cublas_tile_formula():
    rows, cols = 200, 6
    grid = torch.arange(rows * cols, dtype=torch.int32).reshape(rows, cols)
    flat = to_blocked(grid).flatten()
    rp, cp = 256, 8
    for r in range(rows):
        for c in range(cols):
            tile = (r // 128) * (cp // 4) + c // 4
            rr, cc = r % 128, c % 4
            assert flat[tile * 512 + (rr % 32) * 16 + (rr // 32) * 4 + cc].item() == grid[r, c].item()
    assert flat.numel() == rp * cp
    assert torch.equal(from_blocked(flat, rows, cols), grid)


def test_nvfp4_layout_and_decode_formula():
    x = torch.randn(3, 40)
    p, bs, ts = quantize_nvfp4(x)
    assert p.shape == (3, 24) and p.dtype == torch.uint8            # K padded 40 -> 48
    assert bs.shape == (3, 3) and bs.dtype == torch.float8_e4m3fn
    assert ts.item() == pytest.approx(x.abs().max().item() / (6 * 448), rel=1e-6)
    codes = unpack_nibbles(p).long()
    ref = torch.tensor(E2M1_VALUES)[codes].view(3, 3, 16) * (bs.float() * ts)[..., None]
    assert torch.equal(dequantize_nvfp4(p, bs, ts, 40), ref.view(3, 48)[:, :40])
    assert torch.all(unpack_nibbles(p)[:, 40:] % 8 == 0)             # padding encodes zeros


def test_mxfp4_scale_rule_is_ocp():
    x = torch.zeros(1, 64)
    x[0, 0], x[0, 32] = 5.0, 0.3   # amax 5 -> 2^(2-2) = 1 ; amax 0.3 -> 2^(-2-2)
    p, e = quantize_mxfp4(x)
    assert decode_e8m0(e).tolist() == [[1.0, 2.0 ** -4]]
    assert dequantize_mxfp4(p, e)[0, 0].item() == 4.0      # 5 -> tie -> even code (4)


@pytest.mark.parametrize("dist", ["gauss", "t3"])
def test_error_bounds(dist):
    g = torch.Generator().manual_seed(0)
    if dist == "gauss":
        x = torch.randn(512, 1024, generator=g)
    else:
        torch.manual_seed(0)
        x = torch.distributions.StudentT(3.0).sample((512, 1024))
    w, s = quantize_fp8_weight(x)
    assert 0.015 < _rel(dequantize_fp8_weight(w, s), x) < 0.03
    w, s = quantize_fp8_weight(x, torch.float8_e5m2)
    assert 0.03 < _rel(dequantize_fp8_weight(w, s), x) < 0.06
    xq, sx = quantize_fp8_rows(x)
    assert _rel(xq.float() * sx, x) < 0.03
    p, bs, ts = quantize_nvfp4(x)
    nv = dequantize_nvfp4(p, bs, ts)
    assert 0.06 < _rel(nv, x) < 0.10
    w8, s8 = nvfp4_to_fp8_rows(p, bs, ts)
    assert _rel(w8.float() * s8[:, None], nv) < 0.035
    p, e = quantize_mxfp4(x)
    assert 0.08 < _rel(dequantize_mxfp4(p, e), x) < (0.125 if dist == "gauss" else 0.16)


def test_unscaled_fp8_saturates_instead_of_overflowing():
    w, s = quantize_fp8_weight(torch.tensor([[1000.0, -1000.0, 1.0]]), scaled=False)
    assert torch.equal(s, torch.ones(1))
    assert dequantize_fp8_weight(w, s).tolist() == [[448.0, -448.0, 1.0]]


def test_zero_tensors_quantize_to_zero():
    z = torch.zeros(4, 32)
    assert torch.equal(dequantize_nvfp4(*quantize_nvfp4(z)), z)
    assert torch.equal(dequantize_mxfp4(*quantize_mxfp4(z)), z)
    w, s = quantize_fp8_weight(z)
    assert torch.equal(dequantize_fp8_weight(w, s), z)
