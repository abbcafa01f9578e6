"""CLIP ViT-H/14 image features for Wan I2V / InfiniteTalk, on transformers' CLIPVisionModel.

Wan conditions on the output of the first 31 of the 32 vision blocks (`use_31_block=True`, no
final LayerNorm) = `hidden_states[-2]` of a CLIPVisionModel: [B, 257, 1280]. We build the model
without its last block, so `last_hidden_state` is that tensor and the unused block costs nothing.

Accepted file: ComfyUI `clip_vision/clip_vision_h.safetensors` (transformers names
`vision_model.encoder.layers.N...`, with or without `visual_projection`, any extra prefix). The
configuration comes from tensor shapes; the head count (not visible in shapes) from an argument,
the file's metadata (`num_attention_heads`), the known CLIP widths, or else a head width of 64
(16 for tiny test/demo towers under 512 wide).
"""
from __future__ import annotations

import math
import os
import re

import torch
import torch.nn as nn

from ..log import load, warn
from .checkpoint_reader import find_prefix, open_checkpoint, shapes_of
from .image_input import clip_preprocess, image_from_comfy
from .residency import HostResidency
from .safetensors_io import ModelFileError

ANCHOR = "embeddings.patch_embedding.weight"
# width -> (heads, activation) of the published CLIP vision towers: OpenAI ViT-B/L use quick_gelu,
# open-clip ViT-H / ViT-bigG (and Wan's XLM-RoBERTa ViT-H) use exact GELU.
KNOWN_WIDTHS = {768: (12, "quick_gelu"), 1024: (16, "quick_gelu"), 1280: (16, "gelu"), 1664: (16, "gelu")}
WAN_CLIP_WIDTH = 1280
DEMO_KEY = "wanfp4_demo"    # metadata of the pack's random-weight demo files
SMALL_HEAD_DIM = 16     # head width assumed for tiny test/demo towers (< 512 wide) without metadata
_FLOAT = ("F32", "F16", "BF16", "F64", "float32", "float16", "bfloat16", "float64")


def _metadata_int(meta: dict, *names: str) -> int | None:
    for n in names:
        if n in meta:
            try:
                return int(meta[n])
            except ValueError:
                raise ModelFileError(f"clip vision: metadata '{n}' = {meta[n]!r} is not an integer") from None
    return None


def detect_clip_vision(keys_shapes, metadata: dict | None = None, num_heads: int | None = None) -> dict | None:
    """Config of a CLIP vision tower from {key: shape}; None if the keys are not one."""
    shapes = shapes_of(keys_shapes)
    found = find_prefix(shapes, (ANCHOR,))
    if found is None:
        return None
    prefix = found[0]
    s = {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}
    for need in ("embeddings.class_embedding", "embeddings.position_embedding.weight", "pre_layrnorm.weight",
                 "encoder.layers.0.mlp.fc1.weight"):
        if need not in s:
            raise ModelFileError(f"clip vision: key '{prefix}{need}' is missing; not a CLIP vision model "
                                 "(clip_vision_h.safetensors has it)")
    hidden, channels, patch, _ = s[ANCHOR]
    positions = s["embeddings.position_embedding.weight"][0]
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise ModelFileError(f"clip vision: {positions} position embeddings is not 1 + a square grid; corrupt file")
    layers = 1 + max(int(m.group(1)) for k in s if (m := re.match(r"encoder\.layers\.(\d+)\.", k)))
    outer = prefix.removesuffix("vision_model.")
    meta = metadata or {}
    known_heads, known_act = KNOWN_WIDTHS.get(hidden, (None, "gelu"))
    heads = num_heads or _metadata_int(meta, "num_attention_heads", "num_heads") or known_heads
    if heads is None and hidden >= 512 and hidden % 64 == 0:
        heads = hidden // 64                      # CLIP's usual head width
    if heads is None and hidden < 512 and hidden % SMALL_HEAD_DIM == 0:
        heads = hidden // SMALL_HEAD_DIM          # test/demo towers (the pack's convention)
    if heads is None or hidden % heads:
        raise ModelFileError(f"clip vision: cannot tell the number of attention heads for width {hidden}; "
                             "pass num_heads (or store 'num_attention_heads' in the file's metadata)")
    return {"family": "clip_vision", "prefix": prefix, "hidden_size": hidden, "num_channels": channels,
            "patch_size": patch, "image_size": grid * patch, "num_tokens": positions, "num_layers": layers,
            "num_heads": heads, "intermediate_size": s["encoder.layers.0.mlp.fc1.weight"][0],
            "hidden_act": meta.get("hidden_act", known_act),
            "projection_dim": shapes.get(outer + "visual_projection.weight", (None,))[0], "outer_prefix": outer}


def _penultimate_config(det: dict):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=det["hidden_size"], intermediate_size=det["intermediate_size"],
                            num_hidden_layers=det["num_layers"] - 1, num_attention_heads=det["num_heads"],
                            num_channels=det["num_channels"], image_size=det["image_size"],
                            patch_size=det["patch_size"], hidden_act=det["hidden_act"], layer_norm_eps=1e-5)


class ClipVisionEncoder:
    """ComfyUI IMAGE -> Wan CLIP context [N, 257, 1280] (penultimate block, Wan preprocessing)."""

    def __init__(self, model: nn.Module, det: dict, device: torch.device, dtype: torch.dtype, source: str = ""):
        self.model, self.det, self.device, self.dtype, self.source = model.eval(), det, device, dtype, source
        self._residency = HostResidency([self.model])

    @property
    def image_size(self) -> int:
        return self.det["image_size"]

    @property
    def hidden_size(self) -> int:
        return self.det["hidden_size"]

    def preprocess(self, image, name: str = "image") -> torch.Tensor:
        """IMAGE [N, H, W, C] 0..1 -> normalised [N, 3, S, S] (whole frame resized, like Wan)."""
        return clip_preprocess(image_from_comfy(image, name), self.image_size)

    def to(self, device) -> "ClipVisionEncoder":
        self._residency.to(device)
        self.device = torch.device(device)
        return self

    def offload(self) -> "ClipVisionEncoder":
        self._residency.to("cpu")     # host weights are kept and re-bound: nothing is copied back
        return self

    @torch.no_grad()
    def encode_image(self, image, name: str = "image") -> torch.Tensor:
        pixels = self.preprocess(image, name)
        self._residency.to(self.device)
        out = self.model(pixel_values=pixels.to(self.device, self.dtype))
        return out.last_hidden_state


def load_clip_vision(path: str, device=None, dtype: torch.dtype | None = None,
                     num_heads: int | None = None) -> ClipVisionEncoder:
    """Load clip_vision_h.safetensors (or any CLIP vision tower in transformers naming).

    dtype: default fp16 on CUDA (as Wan runs it), fp32 elsewhere.
    """
    from transformers import CLIPVisionModel

    device = torch.device(device) if device is not None else torch.device("cpu")
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    with open_checkpoint(path) as view:
        det = detect_clip_vision(view.shapes, view.metadata, num_heads)
        if det is None:
            first = next(iter(view.shapes), "<no tensors>")
            raise ModelFileError(f"{path}: not a CLIP vision model (no '...{ANCHOR}' key; first key '{first}'). "
                                 "Pick clip_vision_h.safetensors from models/clip_vision")
        prefix = det["prefix"]
        with torch.device("meta"):
            model = CLIPVisionModel(_penultimate_config(det))
        used = set()
        for name, p in list(model.named_parameters()):
            key = prefix + name
            if key not in view:
                raise ModelFileError(f"{path}: key '{key}' is missing; the file is not a complete CLIP vision model")
            if view.dtypes[key] not in _FLOAT:
                raise ModelFileError(f"{path}: '{key}' is stored as {view.dtypes[key]}; quantized CLIP vision files "
                                     "are not supported, use the fp16 clip_vision_h.safetensors")
            t = view.get(key)
            if tuple(t.shape) != tuple(p.shape):
                raise ModelFileError(f"{path}: '{key}' has shape {tuple(t.shape)}, expected {tuple(p.shape)}")
            parent, _, leaf = name.rpartition(".")
            model.get_submodule(parent)._parameters[leaf] = nn.Parameter(t.to(dtype).contiguous(), requires_grad=False)
            used.add(key)
    emb = model.embeddings
    emb.position_ids = torch.arange(emb.num_positions).expand((1, -1))   # non-persistent buffer, rebuilt
    still_meta = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if still_meta:
        raise ModelFileError(f"{path}: '{prefix}{still_meta[0]}' was not filled; unsupported transformers version?")
    last = f"{prefix}encoder.layers.{det['num_layers'] - 1}."
    expected_unused = (last, prefix + "post_layernorm.", prefix + "embeddings.position_ids",
                       det["outer_prefix"] + "visual_projection.")
    extra = [k for k in view.shapes if k not in used and not k.startswith(expected_unused)]
    if extra:
        warn(f"{os.path.basename(path)}: {len(extra)} tensors not used by CLIP vision (first: {extra[0]})")
    if DEMO_KEY in view.metadata:
        warn(f"{os.path.basename(path)}: {view.metadata[DEMO_KEY]}")
    elif det["hidden_size"] != WAN_CLIP_WIDTH:
        warn(f"{os.path.basename(path)}: CLIP width {det['hidden_size']}; Wan's image embedding expects "
             f"{WAN_CLIP_WIDTH} (clip_vision_h)")
    model.to(device)
    load(f"CLIP vision {os.path.basename(path)}: {det['num_layers']} blocks (using {det['num_layers'] - 1}), width "
         f"{det['hidden_size']}, {det['num_heads']} heads, {det['image_size']} px -> {det['num_tokens']} tokens, "
         f"{str(dtype).removeprefix('torch.')}")
    return ClipVisionEncoder(model, det, device, dtype, path)
