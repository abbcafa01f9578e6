"""ComfyUI node classes (V1 API: plain classes, so they run on every ComfyUI version and without the host).

Thin: inputs, validation, progress. The work lives in wan/, quant/ and attention/.
"""
from . import host
from .config_nodes import WanFP4Attention, WanFP4HardwareTuning, WanFP4LoraSelect, WanFP4Quantization
from .encode import WanFP4AudioEncode, WanFP4ImageEncode, WanFP4TextEncode, WanFP4VocalIsolation
from .loaders import (
    WanFP4AudioEncoderLoader, WanFP4ClipVisionLoader, WanFP4ModelLoader, WanFP4TextEncoderLoader, WanFP4VAELoader,
)
from .sampler import WanFP4InfiniteTalkSampler
from .video import WanFP4VideoCombine

_NODES = [
    (WanFP4ModelLoader, "WanFP4 Model Loader"),
    (WanFP4Quantization, "WanFP4 Quantization"),
    (WanFP4Attention, "WanFP4 Attention"),
    (WanFP4HardwareTuning, "WanFP4 Block Swap / Hardware Tuning"),
    (WanFP4LoraSelect, "WanFP4 LoRA"),
    (WanFP4VAELoader, "WanFP4 VAE Loader"),
    (WanFP4TextEncoderLoader, "WanFP4 Text Encoder Loader (umT5)"),
    (WanFP4ClipVisionLoader, "WanFP4 CLIP Vision Loader"),
    (WanFP4AudioEncoderLoader, "WanFP4 Audio Encoder Loader (wav2vec2)"),
    (WanFP4TextEncode, "WanFP4 Text Encode"),
    (WanFP4ImageEncode, "WanFP4 Image Encode"),
    (WanFP4AudioEncode, "WanFP4 Audio Encode"),
    (WanFP4VocalIsolation, "WanFP4 Vocal Isolation (MelBand RoFormer)"),
    (WanFP4InfiniteTalkSampler, "WanFP4 InfiniteTalk Sampler"),
    (WanFP4VideoCombine, "WanFP4 Video Combine"),
]

NODE_CLASS_MAPPINGS = {cls.__name__: cls for cls, _ in _NODES}
NODE_DISPLAY_NAME_MAPPINGS = {cls.__name__: name for cls, name in _NODES}


def _register_cache_release() -> None:
    from ..wan.model_cache import MODEL_CACHE

    host.on_free_memory(MODEL_CACHE.clear)


_register_cache_release()
