"""QuantLinear numerics per mode and compute path against fp32 references written here from the
format definitions (hand e2m1 table, explicit scale formulas), plus capability decisions."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from wanfp4.quant import QuantLinear, choose_auto_mode, resolve_compute
from wanfp4.quant.capabilities import Environment, log_plan

E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])
ENVS = {name: Environment.simulate(name) for name in ("cpu", "sm_86", "sm_89", "sm_90", "sm_120")}


def ref_weight(q: QuantLinear) -> torch.Tensor:
    """fp32 weight from the stored bits, written independently of the package."""
    n, k = q.out_features, q.in_features
    if q.storage == "dense":
        return q.weight.float()
    if q.storage == "fp8":
        return q.weight.float() * q.weight_scale.float()[:, None]
    p = q.weight.view(torch.uint8).long()
    vals = E2M1[torch.stack([p & 15, p >> 4], -1).reshape(n, -1)]
    if q.storage == "nvfp4":
        scale = q.weight_block_scale.float() * q.weight_tensor_scale.float()
        block = 16
    else:
        scale = 2.0 ** (q.weight_block_scale.long().float() - 127)
        block = 32
    return (vals.view(n, -1, block) * scale[..., None]).reshape(n, -1)[:, :k]


def ref_fp8_rows(t: torch.Tensor) -> torch.Tensor:
    s = t.abs().amax(1, keepdim=True) / 448
    return (t / s).to(torch.float8_e4m3fn).float() * s


def ref_nvfp4_rows(t: torch.Tensor) -> torch.Tensor:
    """Simulated NVFP4 of activations: nearest e2m1 value (argmin), block 16, e4m3 scale, tensor scale."""
    m, k = t.shape
    kp = -(-k // 16) * 16
    tp = F.pad(t, (0, kp - k)).view(m, -1, 16)
    ts = t.abs().max() / (6 * 448)
    bs = (tp.abs().amax(-1) / 6 / ts).to(torch.float8_e4m3fn).float()
    y = tp / (bs * ts)[..., None]
    mags = E2M1[:8]
    q = mags[(y.abs()[..., None] - mags).abs().argmin(-1)] * torch.sign(y)
    return (q * (bs * ts)[..., None]).view(m, kp)[:, :k]


def ref_output(q: QuantLinear, x: torch.Tensor, path: str, w0: torch.Tensor) -> torch.Tensor:
    w = ref_weight(q)
    b = q.bias.float()
    if path in ("dense", "upcast", "w4a16"):
        return x @ w.t() + b
    if path == "w8a8":
        return ref_fp8_rows(x) @ ref_fp8_rows(w).t() + b
    if path == "w4a8":
        # NVFP4 weight re-rounded to e4m3 with s_n = tensor_scale * max block scale * 6 / 448
        s = (q.weight_tensor_scale.float() * q.weight_block_scale.float().amax(1) * 6 / 448)[:, None]
        w8 = (w / s).to(torch.float8_e4m3fn).float() * s
        return ref_fp8_rows(x) @ w8.t() + b
    if path == "w4a4":
        return ref_nvfp4_rows(x) @ w.t() + b
    raise AssertionError(path)


CASES = [  # mode, environment, expected compute path, weight error bound (nn.Linear's uniform init is
    # harder for 4-bit than Gaussian data: measured NVFP4 0.100, MXFP4 0.13 here)
    ("disabled", "cpu", "dense", 0.0), ("fp8_e4m3fn", "cpu", "upcast", 0.03), ("fp8_e5m2", "cpu", "upcast", 0.06),
    ("fp8_e4m3fn_scaled", "cpu", "upcast", 0.03), ("fp8_e4m3fn_fast", "sm_90", "w8a8", 0.03),
    ("fp8_e4m3fn_fast", "cpu", "upcast", 0.03), ("fp4_experimental", "cpu", "w4a16", 0.15),
    ("fp4_scaled", "cpu", "w4a16", 0.12), ("fp4_scaled_fast", "sm_90", "w4a8", 0.12),
    ("fp4_scaled_fast", "sm_120", "w4a4", 0.12), ("fp4_scaled_fast", "sm_86", "w4a16", 0.12),
]


@pytest.mark.parametrize("mode,env,path,bound", CASES)
def test_quant_linear_matches_reference(mode, env, path, bound):
    lin = nn.Linear(80, 48)   # K = 80: not a multiple of 32 -> exercises MXFP4 padding
    w0 = lin.weight.detach().clone()
    plan = resolve_compute(mode, ENVS[env])
    assert plan.path == path
    q = QuantLinear.from_linear(lin, mode, base_dtype=torch.float32, compute_path=plan.path)
    rel = ((q.dequantize_weight() - w0).norm() / w0.norm()).item()
    assert rel <= bound + 1e-9 and (bound == 0 or rel > bound / 10)
    x = torch.randn(2, 7, 80)
    out = q(x)
    assert out.shape == (2, 7, 48) and out.dtype == torch.float32
    ref = ref_output(q, x.reshape(14, 80), path, w0).reshape(2, 7, 48)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # and the quantized layer still approximates the float one
    full = lin(x)
    err = ((out - full).norm() / full.norm()).item()
    assert err < {"dense": 1e-6, "upcast": 0.08, "w8a8": 0.08, "w4a16": 0.2, "w4a8": 0.2, "w4a4": 0.25}[path]


def test_bf16_activations_keep_dtype_and_stay_close():
    lin = nn.Linear(64, 32)
    q = QuantLinear.from_linear(lin, "fp4_scaled", base_dtype=torch.bfloat16)
    x = torch.randn(5, 64)
    out = q(x.bfloat16())
    assert out.dtype == torch.bfloat16 and q.bias.dtype == torch.bfloat16
    ref = x @ ref_weight(q).t() + q.bias.float()
    assert ((out.float() - ref).norm() / ref.norm()).item() < 0.01


def test_fp4_storage_is_real_4bit():
    q = QuantLinear.from_linear(nn.Linear(64, 32), "fp4_scaled")
    assert q.weight.dtype == torch.uint8 and q.weight.shape == (32, 32)
    assert q.weight_block_scale.shape == (32, 4) and q.weight_block_scale.dtype == torch.float8_e4m3fn
    q = QuantLinear.from_linear(nn.Linear(64, 32), "fp4_experimental")
    assert q.weight.shape == (32, 32) and q.weight_block_scale.shape == (32, 2)


def test_dtype_moves_do_not_cast_quantized_storage():
    q = QuantLinear.from_linear(nn.Linear(32, 16), "fp4_scaled", base_dtype=torch.float32)
    ts = q.weight_tensor_scale.clone()
    q.to(torch.bfloat16)
    assert q.weight.dtype == torch.uint8 and q.weight_block_scale.dtype == torch.float8_e4m3fn
    assert q.weight_tensor_scale.dtype == torch.float32 and torch.equal(q.weight_tensor_scale, ts)
    assert q.bias.dtype == torch.bfloat16
    f = QuantLinear.from_linear(nn.Linear(32, 16), "fp8_e4m3fn_scaled").half()
    assert f.weight.dtype == torch.float8_e4m3fn and f.weight_scale.dtype == torch.float32


# ----------------------------------------------------------------------------- capabilities
EXPECTED_PATHS = {  # mode -> {env: path}
    "fp8_e4m3fn_fast": {"cpu": "upcast", "sm_86": "upcast", "sm_89": "w8a8", "sm_90": "w8a8", "sm_120": "w8a8"},
    "fp4_scaled_fast": {"cpu": "w4a16", "sm_86": "w4a16", "sm_89": "w4a8", "sm_90": "w4a8", "sm_120": "w4a4"},
    "fp4_scaled": {e: "w4a16" for e in ENVS},
    "fp4_experimental": {e: "w4a16" for e in ENVS},
    "fp8_e4m3fn_scaled": {e: "upcast" for e in ENVS},
    "disabled": {e: "dense" for e in ENVS},
}


@pytest.mark.parametrize("mode", list(EXPECTED_PATHS))
@pytest.mark.parametrize("env", list(ENVS))
def test_capability_table(mode, env):
    assert resolve_compute(mode, ENVS[env]).path == EXPECTED_PATHS[mode][env]


def test_capability_needs_torch_features():
    old_torch = Environment(cc=(9, 0), name="H200", has_scaled_mm=False)
    assert resolve_compute("fp8_e4m3fn_fast", old_torch).path == "upcast"
    no_fp4 = Environment(cc=(12, 0), name="RTX 5090", has_fp4_dtype=False)
    assert resolve_compute("fp4_scaled_fast", no_fp4).path == "w4a8"


def test_fallback_and_enabled_log_lines():
    lines = log_plan(resolve_compute("fp4_scaled_fast", ENVS["cpu"]), ENVS["cpu"])
    assert lines == ["[INFO] fp4_scaled_fast not supported on this device (CPU): using fp4_scaled",
                     "[INFO] FP4 quantization mode enabled (fp4_scaled_fast, W4A16 on cpu)"]
    env = Environment(cc=(8, 6), name="NVIDIA GeForce RTX 3090")
    assert log_plan(resolve_compute("fp8_e4m3fn_fast", env), env)[0] == (
        "[INFO] fp8_e4m3fn_fast not supported on this GPU (NVIDIA GeForce RTX 3090, sm_86): using fp8_e4m3fn_scaled")
    h200 = Environment(cc=(9, 0), name="NVIDIA H200")
    assert log_plan(resolve_compute("fp4_scaled_fast", h200), h200) == [
        "[INFO] FP4 quantization mode enabled (fp4_scaled_fast, W4A8 on sm_90)"]


GB = 10**9
SIZES = {"disabled": 38 * GB, "fp8_e4m3fn_scaled": 19 * GB, "fp8_e4m3fn_fast": 19 * GB,
         "fp4_scaled": 11 * GB, "fp4_scaled_fast": 11 * GB}


@pytest.mark.parametrize("cc,vram,mode,fits", [
    (None, None, "disabled", True),
    ((9, 0), 141 * GB, "fp8_e4m3fn_fast", True),
    ((8, 9), 24 * GB, "fp4_scaled_fast", True),      # 4090: fp8 (19 GB) + 8 GB reserve does not fit
    ((12, 0), 32 * GB, "fp8_e4m3fn_fast", True),     # 5090
    ((12, 0), 16 * GB, "fp4_scaled_fast", False),    # nothing fits: smallest fast mode + block swap
    ((8, 6), 24 * GB, "fp4_scaled", True),           # 3090: no fp8 compute, NVFP4 W4A16 fits
    ((8, 6), 48 * GB, "disabled", True),             # A6000: bf16 fits
    ((8, 6), 30 * GB, "fp8_e4m3fn_scaled", True),
])
def test_auto_policy(cc, vram, mode, fits):
    choice = choose_auto_mode(cc, vram, SIZES)
    assert (choice.mode, choice.fits) == (mode, fits)
