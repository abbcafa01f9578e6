"""ComfyUI IMAGE tensors -> channel-first RGB, and Wan's CLIP preprocessing.

ComfyUI passes images as `IMAGE` = float tensors [N, H, W, C] in 0..1, where C is 3 (RGB) but
loaders and masks can also produce 1 (gray), 2 (gray + alpha) or 4 (RGBA). Everything the pack
feeds to a network goes through `image_from_comfy` first, so odd inputs fail here with a message
that names the input instead of deep inside a convolution.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# OpenAI CLIP normalisation; Wan's CLIP (open-clip XLM-RoBERTa ViT-H/14) uses the same constants.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def image_from_comfy(image, name: str = "image") -> torch.Tensor:
    """IMAGE [N, H, W, C] (or one [H, W, C]) in 0..1 -> float32 RGB [N, 3, H, W].

    Alpha is dropped (Wan conditions on colour only), gray is repeated to three channels.
    """
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{name}: expected a ComfyUI IMAGE tensor [N, H, W, C], got {type(image).__name__}")
    if image.ndim == 3:
        image = image.unsqueeze(0)
    if image.ndim != 4:
        raise ValueError(f"{name}: expected a ComfyUI IMAGE tensor [N, H, W, C], got shape {tuple(image.shape)}")
    if any(d == 0 for d in image.shape):
        raise ValueError(f"{name}: the IMAGE tensor is empty (shape {tuple(image.shape)} as [N, H, W, C]); "
                         "connect an image with at least one pixel")
    channels = image.shape[-1]
    if channels not in (1, 2, 3, 4):
        raise ValueError(f"{name}: IMAGE has {channels} channels in its last dimension (shape "
                         f"{tuple(image.shape)}); expected [N, H, W, C] with C = 1, 3 or 4")
    if not image.is_floating_point():
        raise ValueError(f"{name}: IMAGE dtype {image.dtype} is not a float image; ComfyUI images are floats in "
                         "0..1 (divide 8-bit pixels by 255)")
    x = image.float()
    x = x[..., :1] if channels in (1, 2) else x[..., :3]
    x = x.permute(0, 3, 1, 2)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous()


def clip_preprocess(rgb: torch.Tensor, size: int = 224, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """RGB [N, 3, H, W] in 0..1 -> CLIP input [N, 3, size, size], the way Wan does it.

    Wan resizes the whole frame to size x size (no aspect-preserving crop), bicubic without
    antialias, without clamping the bicubic overshoot, then normalises with mean/std.
    """
    x = F.interpolate(rgb.float(), size=(size, size), mode="bicubic", align_corners=False)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s
