"""Random-weight models of the real sizes, built directly on a device, for the benchmarks.

Nothing can be downloaded here, so the benchmarks time the real architectures with random weights:
the Wan2.1 14B I2V + InfiniteTalk DiT, umT5-XXL, CLIP ViT-H/14, wav2vec2-base and the Wan VAE. Each
builder returns the same wrapper object the file loaders return (TextEncoder, ClipVisionEncoder,
InfiniteTalkAudioEncoder, WanVAE, WanModel), so everything after the load runs the pack's own code.
`tiny=True` gives small versions of the same structures for a CPU smoke run.
"""
from __future__ import annotations

import torch

# umT5-XXL encoder (google/umt5-xxl), CLIP ViT-H/14 (open_clip, clip_vision_h), chinese-wav2vec2-base.
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, num_heads=64, d_ff=10240, num_layers=24)
UMT5_TINY = dict(vocab_size=256, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2)      # demo DiT widths
CLIP_H = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16)
CLIP_TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2)
WAV2VEC2_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
WAV2VEC2_TINY = dict(hidden_size=32, num_hidden_layers=12, num_attention_heads=1, intermediate_size=64,
                     conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)


def dit_config(tiny: bool):
    from ..wan.config import INFINITETALK_14B
    from ..wan.demo_models import DEMO_DIT

    return DEMO_DIT if tiny else INFINITETALK_14B


def build_dit(mode: str, device, dtype: torch.dtype = torch.bfloat16, tiny: bool = False, seed: int = 0):
    """14B DiT with random weights on `device`, quantized to `mode` the way the loader does it."""
    from .. import quant
    from ..wan.model import build_model

    model = build_model(dit_config(tiny), device=device, dtype=dtype, seed=seed)
    quant.quantize_model(model, mode, keep=tuple(quant.KEEP_IN_BASE_PRECISION), compute_dtype=dtype, device=device)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return model.eval()


def build_text_encoder(device, dtype: torch.dtype = torch.bfloat16, tiny: bool = False):
    """umT5-XXL encoder; the vocabulary table stays on the CPU as the file loader leaves it."""
    import transformers

    from ..wan.demo_encoders import _spiece_model
    from ..wan.t5_tokenizer import T5Tokenizer
    from ..wan.text_encoder import TextEncoder

    dims = UMT5_TINY if tiny else UMT5_XXL
    cfg = transformers.UMT5Config(**dims, relative_attention_num_buckets=32, dropout_rate=0.0,
                                  feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)
    torch.manual_seed(1)
    with torch.device(device):
        model = transformers.UMT5EncoderModel(cfg)
    model.to(dtype)
    model.shared.to("cpu")
    tok = T5Tokenizer.from_spiece_bytes(_spiece_model(), "demo sentencepiece (random-weight benchmark)")
    enc = TextEncoder(model, tok, torch.device(device), dtype, "bf16", "random umT5-XXL")
    return enc


def build_clip_vision(device, tiny: bool = False):
    """CLIP ViT-H/14 vision tower (penultimate block output, as Wan uses it), fp16 on CUDA."""
    import transformers

    from ..wan.clip_vision import ClipVisionEncoder, _penultimate_config, detect_clip_vision

    cfg = transformers.CLIPVisionConfig(**(CLIP_TINY if tiny else CLIP_H), image_size=224, patch_size=14,
                                        hidden_act="gelu", projection_dim=1024)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in transformers.CLIPVisionModelWithProjection(cfg).state_dict().items()}
    det = detect_clip_vision(shapes, {"num_attention_heads": str(cfg.num_attention_heads)})
    dtype = torch.float16 if torch.device(device).type == "cuda" else torch.float32
    torch.manual_seed(2)
    with torch.device(device):
        model = transformers.CLIPVisionModel(_penultimate_config(det))
    return ClipVisionEncoder(model.to(dtype).eval(), det, torch.device(device), dtype, "random CLIP ViT-H/14")


def build_audio_encoder(device, tiny: bool = False):
    """wav2vec2-base (InfiniteTalk's chinese-wav2vec2-base shape), fp32 as InfiniteTalk runs it."""
    import transformers

    from ..wan.audio_encoder import InfiniteTalkAudioEncoder, build_wav2vec2

    cfg = transformers.Wav2Vec2Config(**(WAV2VEC2_TINY if tiny else WAV2VEC2_BASE))
    torch.manual_seed(3)
    model = build_wav2vec2(cfg)
    return InfiniteTalkAudioEncoder(model.to(device, torch.float32), device, torch.float32)


def build_vae(device, dtype: torch.dtype = torch.bfloat16, tiny: bool = False):
    """The Wan2.1 VAE (base width 96; 8 for the smoke run)."""
    from ..wan.vae import VAEConfig, WanVAE

    torch.manual_seed(4)
    with torch.device(device):
        vae = WanVAE(VAEConfig(dim=8 if tiny else 96))
    return vae.to(dtype).eval()
