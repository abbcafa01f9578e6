"""Model loader nodes. Files come from ComfyUI's model folders; loads go through the model cache."""
from __future__ import annotations

from ..wan import services
from . import host
from .types import (
    ATTENTION_CONFIG, AUDIO_ENCODER, BASE_PRECISIONS, CATEGORY, CLIP_VISION, LORAS, MODEL, NONE, QUANT_CONFIG,
    TEXT_ENCODER, TUNING_CONFIG, VAE,
)


class WanFP4ModelLoader:
    DESCRIPTION = ("Loads the Wan2.1 I2V transformer (+ the InfiniteTalk patch), merges LoRAs, quantizes it and "
                   "picks the attention kernel. Stays cached across runs.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (host.list_models("diffusion_models"), {
                    "tooltip": "Wan2.1 I2V 14B transformer from models/diffusion_models (bf16, fp16, fp8 or fp8 "
                               "scaled; an InfiniteTalk-merged file also works).",
                }),
                "infinitetalk_patch": ([NONE] + host.list_models("model_patches"), {
                    "default": NONE,
                    "tooltip": "InfiniteTalk audio modules from models/model_patches (e.g. "
                               "wan2.1_infiniteTalk_single_fp16.safetensors). 'none' if the model file has them.",
                }),
                "base_precision": (BASE_PRECISIONS, {
                    "default": "bf16",
                    "tooltip": "Precision of the layers that are not quantized and of activations. bf16 is right "
                               "for nearly every GPU; fp16 for GPUs without bf16.",
                }),
            },
            "optional": {
                "quantization": (QUANT_CONFIG, {"tooltip": "From the WanFP4 Quantization node (default: auto)."}),
                "attention": (ATTENTION_CONFIG, {"tooltip": "From the WanFP4 Attention node (default: auto)."}),
                "tuning": (TUNING_CONFIG, {"tooltip": "From the WanFP4 Block Swap / Hardware Tuning node."}),
                "loras": (LORAS, {"tooltip": "From WanFP4 LoRA nodes; merged before quantization."}),
            },
        }

    def load(self, model, infinitetalk_patch, base_precision, quantization=None, attention=None, tuning=None,
             loras=None):
        path = host.resolve_model("diffusion_models", model)
        patch = None if infinitetalk_patch in (None, "", NONE) else host.resolve_model("model_patches", infinitetalk_patch)
        handle = services.load_diffusion_model(
            path, patch, base_precision,
            quant_mode=(quantization or {}).get("mode", "auto"),
            keep_audio=(quantization or {}).get("keep_audio", False),
            attention_mode=(attention or {}).get("mode", "auto"),
            loras=loras or [],
            tuning=tuning,
            device=host.torch_device(),
        )
        return (handle,)


class _SimpleLoader:
    """A loader of one file from one folder, cached."""

    FOLDER = ""
    KIND = ""
    TOOLTIP = ""
    CATEGORY = CATEGORY
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model_name": (host.list_models(cls.FOLDER), {"tooltip": cls.TOOLTIP})}}


class WanFP4VAELoader(_SimpleLoader):
    DESCRIPTION = "Loads the Wan2.1 VAE (wan_2.1_vae.safetensors or the official Wan2.1_VAE.pth)."
    FOLDER, TOOLTIP = "vae", "Wan2.1 VAE from models/vae."
    RETURN_TYPES = (VAE,)
    RETURN_NAMES = ("vae",)

    @classmethod
    def INPUT_TYPES(cls):
        d = super().INPUT_TYPES()
        d["required"]["precision"] = (BASE_PRECISIONS, {
            "default": "bf16", "tooltip": "VAE weights and compute precision (bf16 halves its memory)."})
        return d

    def load(self, model_name, precision):
        return (services.load_vae(host.resolve_model("vae", model_name), precision, device=host.torch_device()),)


class WanFP4TextEncoderLoader(_SimpleLoader):
    DESCRIPTION = "Loads the umT5-XXL text encoder (tokenizer embedded in ComfyUI's files)."
    FOLDER, TOOLTIP = "text_encoders", "umt5_xxl_fp16 / umt5_xxl_fp8_e4m3fn_scaled from models/text_encoders."
    RETURN_TYPES = (TEXT_ENCODER,)
    RETURN_NAMES = ("text_encoder",)

    @classmethod
    def INPUT_TYPES(cls):
        d = super().INPUT_TYPES()
        d["required"]["precision"] = (["bf16", "fp8_e4m3fn"], {
            "default": "bf16", "tooltip": "fp8_e4m3fn keeps the 11 GB encoder in about 6 GB (tiny quality cost)."})
        return d

    def load(self, model_name, precision):
        return (services.load_text_encoder(host.resolve_model("text_encoders", model_name), precision,
                                           device=host.torch_device()),)


class WanFP4ClipVisionLoader(_SimpleLoader):
    DESCRIPTION = "Loads CLIP ViT-H/14 vision (clip_vision_h.safetensors)."
    FOLDER, TOOLTIP = "clip_vision", "clip_vision_h.safetensors from models/clip_vision."
    RETURN_TYPES = (CLIP_VISION,)
    RETURN_NAMES = ("clip_vision",)

    def load(self, model_name):
        return (services.load_clip_vision(host.resolve_model("clip_vision", model_name), device=host.torch_device()),)


class WanFP4AudioEncoderLoader(_SimpleLoader):
    DESCRIPTION = "Loads the wav2vec2 audio encoder InfiniteTalk was trained with (chinese-wav2vec2-base)."
    FOLDER, TOOLTIP = "audio_encoders", "wav2vec2-chinese-base_fp16.safetensors from models/audio_encoders."
    RETURN_TYPES = (AUDIO_ENCODER,)
    RETURN_NAMES = ("audio_encoder",)

    def load(self, model_name):
        return (services.load_audio_encoder(host.resolve_model("audio_encoders", model_name),
                                            device=host.torch_device()),)
