"""Byte formulas of a run's VRAM: stored weight sizes per quantization mode, activation peaks of a DiT
block and of an umT5 block, the Wan VAE's encode/decode working sets. Pure functions of the configs;
wan/hw_tuning.py plans with them. Coefficients are measured (storage tracker on CPU, the H200 runs in
bench/RESULTS.md) and checked by tests/test_hw_tuning.py and tests/test_text_encoder_stream.py.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .block_swap import EMBEDDING_MODULES

GiB = 1024**3

# Activation peak of one block call, in bytes per element of E = B*L*dim (bf16/fp16 activations; fp32
# doubles them), measured with a storage tracker on this pack's WanBlock (tests/test_hw_tuning.py checks
# the formula against it). Two phases compete: cross-attention (q, k, y of self-attention still alive,
# fp32 q-norm temporaries) and the FFN (ffn.0 output + GELU output, 2 bytes each per element of B*L*ffn).
ACT_CROSS_PER_E = 23.5
ACT_FFN_PER_E = 14.0
ACT_FFN_PER_F = 4.0
# Extra self-attention workspace per element of E (quantized copies of q/k/v; the fp32 reference
# implementations of the sage modes hold fp32 q/k/v plus a score chunk). Self-attention peaks ~18 E
# without it, so kernels up to ~5 E of workspace do not move the block peak.
ACT_SELF_PER_E = 18.0
ATTENTION_WORKSPACE_PER_E = {"sdpa": 0.0, "flash_attn_2": 0.0, "flash_attn_3": 0.0, "sageattn": 3.0,
                             "sageattn_3": 4.0, "sageattn_3_fp8": 4.0, "sageattn_3_fp4": 3.0}
REFERENCE_ATTENTION_PER_E = 14.0
REFERENCE_SCORE_BYTES = 3 * 4 * (1 << 25)        # attention/reference.py SCORE_ELEMENTS fp32, ~3 alive
# Per-call temporaries of the quantized Linear paths on CUDA, in bytes per weight element of the largest Linear.
# Calibrated on the H200 sampling peaks, not derived: w4a16 now decodes to a 16-bit copy (2 B) in one Triton pass
# for NVFP4 and MXFP4, yet the fp4_experimental low-VRAM sampling peak stayed at 6.89 GiB (session 4), so 6 B
# (predicted 6.86) still matches it where 2 B would predict 6.59.
QUANT_TEMP_PER_WEIGHT = {"dense": 0.0, "upcast": 6.0, "w4a16": 6.0, "w4a8": 5.0, "w8a8": 1.0, "w4a4": 1.0}
# Wan VAE (diffusers AutoencoderKLWan at 640x720x81, H200: decode peak 5.5 GiB, tiled 1.4 GiB, §2.4).
VAE_WEIGHT_BYTES = 127_000_000 * 2
VAE_DECODE_PER_PIXEL = 11_780                     # working set per output pixel (frame-chunked decode)
VAE_TILED_BYTES = 1_030_000_000                   # tiled working set (fixed tile size)
# Encoders (default bytes on the GPU while they run): umT5-XXL encoder bf16, CLIP ViT-H/14 fp16,
# wav2vec2-base fp32, MelBand RoFormer fp32.
ENCODER_BYTES = {"t5": 11_400_000_000, "clip_vision": 1_260_000_000, "wav2vec2": 380_000_000,
                 "vocals": 900_000_000}
# Wan VAE encode (kernels_quant_perf.md §2.4 via wan/vae_tiling.py): 8.6 KB per input pixel untiled, ~0.5 GiB tiled.
VAE_ENCODE_PER_PIXEL = 8_600
VAE_ENCODE_TILED_BYTES = 540_000_000
# umT5-XXL streamed (wan/residency.py StreamedBlocks): one bf16 block (exact: 192.9 M parameters) on the GPU
# at a time, plus the activations of a [2 prompts x 512 tokens] call (t5_activation_bytes).
T5_XXL = dict(d_model=4096, inner=4096, heads=64, d_ff=10240)
T5_BLOCK_BYTES = 385_896_448


@dataclass(frozen=True)
class WeightSizes:
    block_bytes: int            # one transformer block in its stored form
    other_bytes: int            # everything outside `blocks` (embeddings, head, ...)
    embedding_bytes: int        # text/image embeddings + audio projection (offloadable)
    largest_linear: int         # weight elements of the largest quantized Linear (per-call temporaries)


@functools.lru_cache(maxsize=64)
def weight_sizes(config, mode: str, dtype: torch.dtype = torch.bfloat16) -> WeightSizes:
    """Exact stored bytes per block and outside the blocks (quant storage layouts, fp32-kept tensors)."""
    from ..quant import linear_storage_bytes, should_quantize
    from .model import WanModel, keeps_fp32

    with torch.device("meta"):
        model = WanModel(config)
    base = torch.empty((), dtype=dtype).element_size()
    blocks = other = emb = largest = 0
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and should_quantize(name):
            size = linear_storage_bytes(mode, m.out_features, m.in_features, m.bias is not None, dtype)
            largest = max(largest, m.in_features * m.out_features)
        else:
            size = sum(p.numel() * (4 if keeps_fp32(f"{name}.{pn}") else base)
                       for pn, p in m.named_parameters(recurse=False))
        if name.startswith("blocks."):
            blocks += size
        else:
            other += size
            if name.split(".")[0] in EMBEDDING_MODULES:
                emb += size
    return WeightSizes(blocks // config.num_layers, other, emb, largest)


def tokens_for(config, width: int, height: int, frames: int, window: int = 81) -> tuple[int, int]:
    """(latent frames, tokens) of one model call: windows of at most `window` frames (4k+1)."""
    frames = min(max(1, int(frames)), window)
    frames = 4 * ((frames - 1 + 3) // 4) + 1
    lat_f = (frames - 1) // 4 + 1
    _, ph, pw = config.patch_size
    return lat_f, lat_f * (height // (8 * ph)) * (width // (8 * pw))


def activation_bytes(config, tokens: int, batch: int, attention_mode: str = "sdpa", reference: bool = False,
                     act_bytes: int = 2) -> int:
    """Peak bytes alive during one block call (model inputs included), per ACT_* above."""
    e = batch * tokens * config.dim
    f = batch * tokens * config.ffn_dim
    k = act_bytes / 2
    work = ATTENTION_WORKSPACE_PER_E.get(attention_mode, 4.0)
    self_phase = (ACT_SELF_PER_E + (REFERENCE_ATTENTION_PER_E if reference else work)) * e
    if reference:
        self_phase += REFERENCE_SCORE_BYTES
    peak = max(ACT_CROSS_PER_E * e, ACT_FFN_PER_E * e + ACT_FFN_PER_F * f, self_phase)
    ctx = batch * (config.text_len + (config.image_tokens if config.is_i2v else 0)) * config.dim * 2
    return int(peak * k + ctx * k)


def t5_activation_bytes(batch: int = 2, tokens: int = 512, d_model: int = 4096, inner: int = 4096, heads: int = 64,
                        d_ff: int = 10240, act_bytes: int = 2) -> int:
    """Peak bytes alive in one umT5 block call (transformers' UMT5Block, eager attention), the larger of
    two phases: attention (scores with the position bias and their fp32 softmax, ~6 bytes per element
    of B*H*L*L in bf16; q/k/v) and the gated FFN (wi_0, GELU, wi_1, product: ~10 bytes per element of
    B*L*d_ff), plus the hidden states (~6 bytes per element, T5LayerNorm's fp32 copy included).
    tests/test_text_encoder_stream.py checks it against tracked block calls (1.0-1.3x over)."""
    k = act_bytes / 2
    attention = batch * heads * tokens * tokens * (4 + 2 * k) + 3 * batch * tokens * inner * 2 * k
    ffn = batch * tokens * d_ff * 10 * k
    return int(max(attention, ffn) + batch * tokens * d_model * (4 + 2 * k))


def t5_streamed_bytes(block_bytes: int = T5_BLOCK_BYTES, batch: int = 2, tokens: int = 512, text_len: int = 512,
                      act_bytes: int = 2, **dims) -> int:
    """GPU bytes of a streamed umT5 encode: the largest block, its activations, the prompts' embedding
    rows in and the padded states out."""
    d = dims.get("d_model", T5_XXL["d_model"])
    io = batch * (tokens + text_len) * d * act_bytes
    return block_bytes + t5_activation_bytes(batch, tokens, act_bytes=act_bytes, **(dims or T5_XXL)) + io


def vae_encode_bytes(width: int, height: int, frames: int, tiled: bool) -> int:
    """Working set of VAE-encoding one window's conditioning video (weights excluded) plus that video in bf16."""
    work = VAE_ENCODE_TILED_BYTES if tiled else VAE_ENCODE_PER_PIXEL * width * height
    return work + 3 * frames * width * height * 2


def vae_peak_bytes(width: int, height: int, frames: int, tiled: bool) -> int:
    """Working set of decoding one window (weights excluded): per-pixel chunked decode or fixed tiles,
    plus the decoded video in bf16 and its fp32 copy (pipeline._from_video)."""
    video = 3 * frames * width * height * (2 + 4)
    return (VAE_TILED_BYTES if tiled else VAE_DECODE_PER_PIXEL * width * height) + video
