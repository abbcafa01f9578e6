"""Encode nodes: prompt text, the start image, the speech clip, and optional vocal isolation."""
from __future__ import annotations

from ..wan import services
from . import host
from .types import AUDIO_EMBEDS, AUDIO_ENCODER, CATEGORY, CLIP_VISION, IMAGE_EMBEDS, TEXT_EMBEDS, TEXT_ENCODER

DEFAULT_NEGATIVE = (
    "bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, static, overall "
    "gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra fingers, poorly drawn hands, "
    "poorly drawn faces, deformed, disfigured, misshapen limbs, fused fingers, still picture, messy background, three "
    "legs, many people in the background, walking backwards"
)


BLOCKS_ON_GPU = {"auto": None, "all": False, "one at a time": True}   # -> services.encode_text(stream=...)


class WanFP4TextEncode:
    DESCRIPTION = "Encodes the positive and negative prompt with umT5-XXL (one call)."
    CATEGORY = CATEGORY
    RETURN_TYPES = (TEXT_EMBEDS,)
    RETURN_NAMES = ("text_embeds",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "text_encoder": (TEXT_ENCODER, {"tooltip": "From WanFP4 Text Encoder Loader."}),
                "positive": ("STRING", {
                    "multiline": True, "default": "A person is talking to the camera.",
                    "tooltip": "What the video shows. The lip motion comes from the audio, not from this text.",
                }),
                "negative": ("STRING", {
                    "multiline": True, "default": DEFAULT_NEGATIVE,
                    "tooltip": "What to steer away from (used when cfg > 1).",
                }),
            },
            "optional": {
                "unload_after": ("BOOLEAN", {
                    "default": True,
                    "tooltip": "Move the encoder off the GPU after encoding (it is ~11 GB in bf16).",
                }),
                "blocks_on_gpu": (list(BLOCKS_ON_GPU), {
                    "default": "auto",
                    "tooltip": "all: the whole encoder visits the GPU (~11 GB in bf16). one at a time: its 24 blocks "
                               "visit one by one (~0.6 GB, same result, for small GPUs). auto: all when it fits in "
                               "the free VRAM.",
                }),
            },
        }

    def encode(self, text_encoder, positive, negative, unload_after=True, blocks_on_gpu="auto"):
        if blocks_on_gpu not in BLOCKS_ON_GPU:
            raise ValueError(f"blocks_on_gpu: {blocks_on_gpu!r} is not one of {', '.join(BLOCKS_ON_GPU)}")
        return (services.encode_text(text_encoder, positive, negative, offload=unload_after,
                                     stream=BLOCKS_ON_GPU[blocks_on_gpu]),)


class WanFP4ImageEncode:
    DESCRIPTION = "Encodes the start image (portrait) with CLIP vision; the sampler VAE-encodes it per window."
    CATEGORY = CATEGORY
    RETURN_TYPES = (IMAGE_EMBEDS,)
    RETURN_NAMES = ("image_embeds",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip_vision": (CLIP_VISION, {"tooltip": "From WanFP4 CLIP Vision Loader."}),
                "image": ("IMAGE", {"tooltip": "The portrait to animate. Any size; alpha is ignored. The first image "
                                               "of a batch is used."}),
            },
        }

    def encode(self, clip_vision, image):
        return (services.encode_image(clip_vision, image),)


class WanFP4AudioEncode:
    DESCRIPTION = "Turns the speech clip into InfiniteTalk audio features (wav2vec2, -23 LUFS, one row per video frame)."
    CATEGORY = CATEGORY
    RETURN_TYPES = (AUDIO_EMBEDS,)
    RETURN_NAMES = ("audio_embeds",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "audio_encoder": (AUDIO_ENCODER, {"tooltip": "From WanFP4 Audio Encoder Loader."}),
                "audio": ("AUDIO", {"tooltip": "Speech (from Load Audio or the vocal isolation node). Any sample "
                                               "rate, mono or stereo."}),
                "fps": ("FLOAT", {
                    "default": 16.0, "min": 1.0, "max": 60.0, "step": 1.0,
                    "tooltip": "Video frame rate; must equal the sampler's fps (InfiniteTalk was trained at 25).",
                }),
            },
            "optional": {
                "normalize_loudness": ("BOOLEAN", {
                    "default": True, "tooltip": "Normalise speech to -23 LUFS as InfiniteTalk does (silence is kept)."}),
            },
        }

    def encode(self, audio_encoder, audio, fps, normalize_loudness=True):
        return (services.encode_audio(audio_encoder, audio, fps, normalize_loudness=normalize_loudness),)


class WanFP4VocalIsolation:
    DESCRIPTION = "Separates the voice from music/noise with MelBand RoFormer before audio encoding."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("AUDIO",)
    RETURN_NAMES = ("vocals",)
    FUNCTION = "separate"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model_name": (host.list_models("diffusion_models"), {
                    "tooltip": "MelBandRoformer_fp16.safetensors (or _fp32) from models/diffusion_models.",
                }),
                "audio": ("AUDIO", {"tooltip": "Audio with speech, possibly mixed with music or noise."}),
            },
        }

    def separate(self, model_name, audio):
        path = host.resolve_model("diffusion_models", model_name)
        return (services.isolate_vocals(path, audio, device=host.torch_device()),)
