"""Wan VAE layouts -> original names (`Wan2.1_VAE.pth`, ComfyUI `wan_2.1_vae.safetensors`,
diffusers `AutoencoderKLWan`), and the VAE structure read from the keys.

The diffusers mapping is generic in the number of residual blocks per level (diffusers' own
converter hard-codes the released layout), so small test VAEs of the same structure also map.
"""
from __future__ import annotations

import re

from .detect import NotThisModel, TensorInfos, count_params, dtype_label, register_detector

VAE_PREFIXES = ("first_stage_model.", "vae.")
ORIGINAL_MARKER = "decoder.middle.0.residual.0.gamma"
DIFFUSERS_MARKER = "decoder.mid_block.resnets.0.norm1.gamma"

_RES = {"norm1.gamma": "residual.0.gamma", "conv1": "residual.2", "norm2.gamma": "residual.3.gamma",
        "conv2": "residual.6", "conv_shortcut": "shortcut"}
_TOP = {"encoder.conv_in": "encoder.conv1", "decoder.conv_in": "decoder.conv1", "quant_conv": "conv1",
        "post_quant_conv": "conv2", "encoder.norm_out.gamma": "encoder.head.0.gamma",
        "decoder.norm_out.gamma": "decoder.head.0.gamma", "encoder.conv_out": "encoder.head.2",
        "decoder.conv_out": "decoder.head.2"}


def _resnet_part(rest: str) -> str:
    for src, dst in _RES.items():
        if rest == src or rest.startswith(src + "."):
            return dst + rest[len(src):]
    return rest


def diffusers_vae_to_original(key: str, res_per_up_block: int) -> str:
    """One AutoencoderKLWan key -> original Wan VAE key. `res_per_up_block` = num_res_blocks + 1."""
    for src, dst in _TOP.items():
        if key == src or key.startswith(src + "."):
            return dst + key[len(src):]
    m = re.match(r"^(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.+)$", key)
    if m:
        side, kind, i, rest = m.groups()
        if kind == "attentions":
            return f"{side}.middle.1.{rest}"
        return f"{side}.middle.{0 if i == '0' else 2}.{_resnet_part(rest)}"
    m = re.match(r"^encoder\.down_blocks\.(\d+)\.(.+)$", key)
    if m:
        return f"encoder.downsamples.{m.group(1)}.{_resnet_part(m.group(2))}"
    m = re.match(r"^decoder\.up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.(.+)$", key)
    if m:
        b, kind, i, rest = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
        per = res_per_up_block + 1
        if kind == "upsamplers":
            return f"decoder.upsamples.{b * per + res_per_up_block}.{rest}"
        return f"decoder.upsamples.{b * per + i}.{_resnet_part(rest)}"
    return key


def normalize_vae_keys(stored: list[str]) -> tuple[dict[str, str], str]:
    """({original key: stored key}, layout) for a VAE file; layout '' when the keys are not a Wan VAE."""
    prefix = next((p for p in VAE_PREFIXES if any(k.startswith(p + "decoder.") for k in stored)), "")
    inside = {k[len(prefix):]: k for k in stored if k.startswith(prefix)}
    if ORIGINAL_MARKER in inside:
        return inside, "original"
    if DIFFUSERS_MARKER in inside:
        res = 1 + max(int(m.group(1)) for k in inside
                      if (m := re.match(r"^decoder\.up_blocks\.0\.resnets\.(\d+)\.", k)))
        return {diffusers_vae_to_original(k, res): v for k, v in inside.items()}, "diffusers"
    return {}, ""


def vae_structure(infos: TensorInfos) -> dict:
    """dim, z_dim, dim_mult, num_res_blocks, temporal_downsample of an original-name VAE state."""
    try:
        dim = infos["encoder.conv1.weight"][1][0]
        z_dim = infos["conv2.weight"][1][0]
    except KeyError as e:
        raise NotThisModel(f"Wan VAE without {e.args[0]!r}; the file is incomplete") from None
    idx = sorted({int(m.group(1)) for k in infos if (m := re.match(r"^encoder\.downsamples\.(\d+)\.", k))})
    levels, cur, mult, temporal = [], 0, [], []
    for i in idx:
        if f"encoder.downsamples.{i}.resample.1.weight" in infos:
            levels.append(cur)
            cur = 0
            temporal.append(f"encoder.downsamples.{i}.time_conv.weight" in infos)
        else:
            cur += 1
            if f"encoder.downsamples.{i}.residual.6.weight" in infos and cur == 1:
                mult.append(infos[f"encoder.downsamples.{i}.residual.6.weight"][1][0] // dim)
    levels.append(cur)
    attn = any(re.match(r"^encoder\.downsamples\.\d+\.(norm|to_qkv)", k) for k in infos)
    return {"dim": dim, "z_dim": z_dim, "dim_mult": mult, "num_res_blocks": levels[0],
            "temporal_downsample": temporal, "attn_scales": [] if not attn else None}


@register_detector
def detect_wan_vae(raw: TensorInfos, metadata: dict) -> dict | None:
    keys, layout = normalize_vae_keys(list(raw))
    if not layout:
        return None
    infos = {k: raw[v] for k, v in keys.items()}
    out = {"kind": "wan-vae", **vae_structure(infos), "layout": layout, "in_dim": 3}
    dtypes: dict[str, int] = {}
    for dt, _ in infos.values():
        dtypes[dtype_label(dt)] = dtypes.get(dtype_label(dt), 0) + 1
    out.update({"format": next(iter(dtypes)) if len(dtypes) == 1 else "mixed", "dtypes": dtypes,
                "params": count_params(infos), "tensors": len(infos)})
    return out
