"""`python -m wanfp4 demo-models DIR`: a complete tiny model set with RANDOM weights, in the real
file formats and ComfyUI's folder layout, under the file names the example workflow uses.

It lets the example workflow run end to end on a CPU (headless or inside ComfyUI; about 4 minutes at
the workflow's 640x720 / 81 frames on 2 cores, seconds at the tests' tiny sizes) and exercises every
loader on real layouts. Random weights produce noise, not a talking person: the
files carry `wanfp4_demo` metadata and the loaders say so in the log.
"""
from __future__ import annotations

import os

import torch
from safetensors.torch import save_file

from .config import AudioConfig, WanConfig

DEMO_META = {"wanfp4_demo": "random weights: output is noise, for testing the pipeline only"}
TEXT_DIM = 32
IMAGE_DIM = 32
AUDIO_CHANNELS = 32
DEMO_DIT = WanConfig(
    model_type="i2v", dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=36, text_dim=TEXT_DIM,
    image_dim=IMAGE_DIM,
    audio=AudioConfig(blocks=12, channels=AUDIO_CHANNELS, intermediate_dim=32, output_dim=32, context_tokens=4),
)

FILES = {
    "dit": ("diffusion_models", "wan2.1_i2v_480p_14B_bf16.safetensors"),
    "patch": ("model_patches", "wan2.1_infiniteTalk_single_fp16.safetensors"),
    "vae": ("vae", "wan_2.1_vae.safetensors"),
    "t5": ("text_encoders", "umt5_xxl_fp16.safetensors"),
    "clip": ("clip_vision", "clip_vision_h.safetensors"),
    "wav2vec2": ("audio_encoders", "wav2vec2-chinese-base_fp16.safetensors"),
    "vocals": ("diffusion_models", "MelBandRoformer_fp16.safetensors"),
}


def _save(sd: dict, path: str, dtype: torch.dtype | None = None, extra_meta: dict | None = None) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    out = {}
    for k, v in sd.items():
        v = v.detach()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        out[k] = v.contiguous().clone()
    tmp = path + ".part"
    save_file(out, tmp, metadata={**DEMO_META, **(extra_meta or {})})
    os.replace(tmp, path)
    return path


def write_dit(root: str) -> list[str]:
    """Base I2V transformer (original keys, bf16) + the InfiniteTalk patch (330-key layout, fp16)."""
    from .model import build_model

    model = build_model(DEMO_DIT, device="cpu", dtype=torch.float32, seed=1)
    sd = model.state_dict()
    audio_keys = {k for k in sd if k.startswith("audio_proj.") or ".audio_cross_attn." in k or ".norm_x." in k}
    base = {k: v for k, v in sd.items() if k not in audio_keys}
    patch = {k: v for k, v in sd.items() if k in audio_keys}
    return [
        _save(base, os.path.join(root, *FILES["dit"]), torch.bfloat16),
        _save(patch, os.path.join(root, *FILES["patch"]), torch.float16),
    ]


def write_wav2vec2(root: str) -> list[str]:
    """chinese-wav2vec2-base structure (12 layers, post-LN, group-norm conv) at width 32, ComfyUI layout."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    cfg = Wav2Vec2Config(
        hidden_size=AUDIO_CHANNELS, num_hidden_layers=12, num_attention_heads=1, intermediate_size=64,
        feat_extract_norm="group", conv_bias=False, do_stable_layer_norm=False, num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4, conv_dim=(32,) * 7,
    )
    torch.manual_seed(2)
    sd = Wav2Vec2Model(cfg).state_dict()
    sd = {k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1",
                                                                               "weight_v"): v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if k != "masked_spec_embed"}
    return [_save(sd, os.path.join(root, *FILES["wav2vec2"]), torch.float16)]


def write_vocals(root: str) -> list[str]:
    """MelBand RoFormer (Kim layout) with a tiny width."""
    from .vocal_separation import MelBandConfig, _build

    cfg = MelBandConfig(dim=8, depth=1, heads=2, dim_head=4, num_bands=60, time_transformer_depth=1,
                        freq_transformer_depth=1, mask_estimator_depth=1, stereo=True)
    torch.manual_seed(3)
    model = _build(**cfg.model_kwargs())
    return [_save(model.state_dict(), os.path.join(root, *FILES["vocals"]), torch.float16)]


def write_demo_models(root: str) -> list[str]:
    """Write every demo file; returns their paths."""
    from .demo_encoders import write_clip, write_t5, write_vae

    root = os.path.abspath(root)
    paths: list[str] = []
    paths += write_dit(root)
    paths += write_vae(root, os.path.join(root, *FILES["vae"]))
    paths += write_t5(root, os.path.join(root, *FILES["t5"]), TEXT_DIM)
    paths += write_clip(root, os.path.join(root, *FILES["clip"]), IMAGE_DIM)
    paths += write_wav2vec2(root)
    paths += write_vocals(root)
    return paths
