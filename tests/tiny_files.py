"""Tiny model files in every real checkpoint layout (shared by the loader, inspect and node tests).

Each writer takes an original-name state dict (as `WanModel.state_dict()` gives) and writes it the
way that ecosystem does; the quantizing writers also return the round-tripped reference state
(what an exact loader must reproduce).
"""
from __future__ import annotations

import json
import os

import torch
from safetensors.torch import save_file

from wanfp4.wan.config import TINY_INFINITETALK, WanConfig
from wanfp4.wan.detect import is_audio_key
from wanfp4.wan.model import WanModel

COMFY_PREFIX = "model.diffusion_model."
FP8_MAX = {torch.float8_e4m3fn: 448.0, torch.float8_e5m2: 57344.0}


def tiny_model(config: WanConfig = TINY_INFINITETALK, seed: int = 1) -> WanModel:
    """fp32 tiny model, every tensor random (non-degenerate)."""
    return WanModel(config).init_weights(seed=seed).float().eval()


def tiny_inputs(config: WanConfig = TINY_INFINITETALK, seed: int = 3) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = dict(x=torch.randn(1, 16, 5, 4, 4, generator=g), timestep=torch.tensor([500.0]),
               context=torch.randn(1, 8, config.text_dim, generator=g))
    if config.is_i2v:
        out.update(clip_fea=torch.randn(1, 257, config.image_dim, generator=g),
                   y=torch.randn(1, config.in_dim - 16, 5, 4, 4, generator=g))
    if config.has_audio:
        a = config.audio
        out["audio"] = torch.randn(1, 1, 17, 5, a.blocks, a.channels, generator=g)
    return out


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def split_audio(sd: dict) -> tuple[dict, dict]:
    """(base keys, InfiniteTalk audio keys) of a merged state dict."""
    return ({k: v for k, v in sd.items() if not is_audio_key(k)}, {k: v for k, v in sd.items() if is_audio_key(k)})


def cast(sd: dict, dtype: torch.dtype | None) -> dict:
    return {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous() for k, v in sd.items()}


def save(path: str, sd: dict, metadata: dict | None = None) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, path, metadata=metadata)
    return path


# ----------------------------------------------------------------------------- layouts
def write_original(path: str, sd: dict, dtype=None, metadata=None) -> str:
    return save(path, cast(sd, dtype), metadata)


def write_comfy(path: str, sd: dict, dtype=None, prefix: str = COMFY_PREFIX, metadata=None) -> str:
    return save(path, {prefix + k: v for k, v in cast(sd, dtype).items()}, metadata)


def to_diffusers(sd: dict) -> dict:
    """diffusers WanTransformer3DModel names (via diffusers' own converter; audio keys pass through)."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    base, audio = split_audio(sd)
    out = convert_wan_transformer_to_diffusers(dict(base))
    out.update(audio)
    return out


def write_diffusers(path: str, sd: dict, dtype=None) -> str:
    return save(path, cast(to_diffusers(sd), dtype))


def write_sharded(folder: str, sd: dict, shards: int = 3, stem: str = "diffusion_pytorch_model", dtype=None) -> str:
    """`stem-0000i-of-0000n.safetensors` + `stem.safetensors.index.json`; returns the index path."""
    os.makedirs(folder, exist_ok=True)
    keys = list(sd)
    per = -(-len(keys) // shards)
    wmap = {}
    for i in range(shards):
        name = f"{stem}-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: sd[k] for k in keys[i * per:(i + 1) * per]}
        save(os.path.join(folder, name), cast(part, dtype))
        wmap.update({k: name for k in part})
    index = os.path.join(folder, f"{stem}.safetensors.index.json")
    with open(index, "w", encoding="utf-8") as fh:
        json.dump({"metadata": {"total_size": 0}, "weight_map": wmap}, fh)
    return index


def write_kijai_audio(path: str, audio_sd: dict, dtype=None) -> str:
    """kijai's naming: `multitalk_audio_proj.*` instead of `audio_proj.*` (block keys unchanged)."""
    return save(path, {("multitalk_" + k if k.startswith("audio_proj.") else k): v
                       for k, v in cast(audio_sd, dtype).items()})


# ----------------------------------------------------------------------------- weight formats
def _is_block_linear_weight(k: str, v: torch.Tensor) -> bool:
    return k.startswith("blocks.") and k.endswith(".weight") and v.dim() == 2


def to_fp8(sd: dict, fp8: torch.dtype = torch.float8_e4m3fn) -> tuple[dict, dict]:
    """Plain fp8 file (every >=2-D weight cast, like ComfyUI's *_fp8_e4m3fn files); (file sd, reference)."""
    file_sd, ref = {}, {}
    for k, v in sd.items():
        if k.endswith(".weight") and v.dim() >= 2:
            file_sd[k] = v.to(fp8)
            ref[k] = file_sd[k].float()
        else:
            file_sd[k], ref[k] = v, v.clone()
    return file_sd, ref


def to_scaled_fp8(sd: dict, per_channel: bool = False, scale_input: bool = True,
                  fp8: torch.dtype = torch.float8_e4m3fn) -> tuple[dict, dict]:
    """ComfyUI / kijai "scaled fp8": block Linears fp8 + fp32 `scale_weight` (+ `scale_input`), marker `scaled_fp8`."""
    file_sd, ref = {"scaled_fp8": torch.empty(0, dtype=fp8)}, {}
    for k, v in sd.items():
        if _is_block_linear_weight(k, v):
            amax = v.abs().amax(dim=1, keepdim=True) if per_channel else v.abs().amax()
            scale = (amax / FP8_MAX[fp8]).float().clamp_min(1e-12)
            q = (v / scale).to(fp8)
            mod = k[: -len(".weight")]
            file_sd[k] = q
            file_sd[mod + ".scale_weight"] = scale.reshape(-1) if per_channel else scale.reshape(())
            if scale_input:
                file_sd[mod + ".scale_input"] = torch.ones((), dtype=torch.float32)
            ref[k] = q.float() * scale
        else:
            file_sd[k], ref[k] = v, v.clone()
    return file_sd, ref


def comfy_quant_entry(fmt: str) -> torch.Tensor:
    return torch.tensor(list(json.dumps({"format": fmt}).encode("utf-8")), dtype=torch.uint8)


def to_comfy_quant_fp8(sd: dict, as_metadata: bool = False) -> tuple[dict, dict, dict]:
    """ComfyUI mixed-precision fp8: `weight` e4m3 + `weight_scale` + `.comfy_quant` (or `_quantization_metadata`).

    Returns (file sd, reference sd, safetensors metadata).
    """
    file_sd, ref, layers = {}, {}, {}
    for k, v in sd.items():
        if _is_block_linear_weight(k, v):
            scale = (v.abs().amax() / 448.0).float()
            q = (v / scale).to(torch.float8_e4m3fn)
            mod = k[: -len(".weight")]
            file_sd[k], file_sd[mod + ".weight_scale"] = q, scale.reshape(())
            if as_metadata:
                layers[mod] = {"format": "float8_e4m3fn"}
            else:
                file_sd[mod + ".comfy_quant"] = comfy_quant_entry("float8_e4m3fn")
            ref[k] = q.float() * scale
        else:
            file_sd[k], ref[k] = v, v.clone()
    meta = {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})} if as_metadata else {}
    return file_sd, ref, meta


def load_into(model: torch.nn.Module, sd: dict) -> torch.nn.Module:
    model.load_state_dict(sd, strict=True)
    return model


def meta_infos(config: WanConfig = TINY_INFINITETALK, dtype: torch.dtype = torch.bfloat16) -> dict:
    """{key: (dtype, shape)} of a model built on meta (detection input without any data)."""
    with torch.device("meta"):
        m = WanModel(config)
    return {k: (dtype, tuple(v.shape)) for k, v in m.state_dict().items()}
