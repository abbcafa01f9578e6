"""Demo (random-weight) umT5, CLIP vision and VAE files in ComfyUI's formats; see demo_models.py."""
from __future__ import annotations

import io
import os

import torch

CORPUS = [
    "a person is talking to the camera", "a woman speaks with natural expressions and lip movements",
    "a man talks in a quiet room, soft studio light", "bright tones, overexposed, static, blurred details",
    "worst quality, low quality, JPEG compression residue, ugly, incomplete", "subtitles, style, works, paintings",
    "deformed, disfigured, misshapen limbs, fused fingers, still picture, messy background",
]


def _spiece_model() -> bytes:
    """A small sentencepiece unigram model trained on the spot (pad 0, eos 1, unk 2 like umT5)."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20), model_writer=buf, vocab_size=120, hard_vocab_limit=False,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, minloglevel=2,
    )
    return buf.getvalue()


def write_t5(root: str, path: str, d_model: int) -> list[str]:
    """umT5 encoder in ComfyUI's text_encoders layout with the tokenizer embedded as `spiece_model`."""
    import transformers

    from .demo_models import _save

    spiece = _spiece_model()
    cfg = transformers.UMT5Config(vocab_size=128, d_model=d_model, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
                                  relative_attention_num_buckets=32, dropout_rate=0.0, feed_forward_proj="gated-gelu",
                                  is_encoder_decoder=False, use_cache=False)
    torch.manual_seed(4)
    sd = transformers.UMT5EncoderModel(cfg).state_dict()
    sd.pop("encoder.embed_tokens.weight", None)
    sd = {k: v.to(torch.float16) for k, v in sd.items()}
    sd["spiece_model"] = torch.frombuffer(bytearray(spiece), dtype=torch.uint8)
    return [_save(sd, path)]


def write_clip(root: str, path: str, hidden: int) -> list[str]:
    """CLIP vision tower (224 px, patch 14 -> 257 tokens) in transformers naming, as clip_vision_h is."""
    import transformers

    from .demo_models import _save

    cfg = transformers.CLIPVisionConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=3,
                                        num_attention_heads=2, image_size=224, patch_size=14, hidden_act="gelu",
                                        projection_dim=16)
    torch.manual_seed(5)
    sd = transformers.CLIPVisionModelWithProjection(cfg).state_dict()
    return [_save(sd, path, torch.float16, {"num_attention_heads": "2"})]


def write_vae(root: str, path: str) -> list[str]:
    """Wan VAE, original keys: the real structure (dim_mult 1,2,4,4, z 16, causal time convs, middle
    attention) at base width 8 with 1 residual block per encoder level instead of 2 (2 per decoder level
    instead of 3). The loader reads width and block count from the keys. Fastest layout measured for the
    CPU demo: decoding 3 latents at 640x720 took 7 s (dim 8, 1 block) vs 11 s (dim 4, 1 block),
    11-17 s (dim 8, 2 blocks) and 15 s (dim 4, 2 blocks)."""
    from .demo_models import _save
    from .vae import VAEConfig, WanVAE

    torch.manual_seed(6)
    vae = WanVAE(VAEConfig(dim=8, num_res_blocks=1))
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
    return [_save(vae.state_dict(), path, torch.bfloat16)]
