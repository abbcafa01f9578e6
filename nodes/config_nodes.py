"""Selector nodes: quantization mode, attention mode, block swap / hardware tuning, LoRA list.

They only package the user's choice; the loader and sampler act on it.
"""
from __future__ import annotations

from . import host
from .types import (ATTENTION_CONFIG, ATTENTION_MODES, CATEGORY, LORAS, NONE, QUANT_CONFIG, QUANT_MODES, TORCH_COMPILE,
                    TUNING_CONFIG, VAE_TILING)


class WanFP4Quantization:
    DESCRIPTION = "Chooses how the transformer weights are stored and multiplied (fp8 / FP4 / off)."
    CATEGORY = CATEGORY
    RETURN_TYPES = (QUANT_CONFIG,)
    RETURN_NAMES = ("quantization",)
    FUNCTION = "configure"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "mode": (QUANT_MODES, {
                    "default": "auto",
                    "tooltip": "Weight format. auto: the best mode for this GPU and its memory. fp8_*: 8-bit weights "
                               "(_fast multiplies in fp8 on RTX 40xx/H100 and newer). fp4_*: 4-bit weights "
                               "(fp4_scaled_fast computes in FP4 on RTX 50xx/B200, in fp8 on RTX 40xx/H100). "
                               "Unsupported modes fall back with one log line.",
                }),
            },
            "optional": {
                "keep_audio_in_base_precision": ("BOOLEAN", {
                    "default": False,
                    "tooltip": "Also keep the per-block audio cross-attention in bf16/fp16 (more memory, "
                               "marginally closer lip-sync to the unquantized model).",
                }),
            },
        }

    def configure(self, mode, keep_audio_in_base_precision=False):
        return ({"mode": mode, "keep_audio": bool(keep_audio_in_base_precision)},)


class WanFP4Attention:
    DESCRIPTION = "Chooses the attention kernel of the transformer's self-attention."
    CATEGORY = CATEGORY
    RETURN_TYPES = (ATTENTION_CONFIG,)
    RETURN_NAMES = ("attention",)
    FUNCTION = "configure"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "mode": (ATTENTION_MODES, {
                    "default": "auto",
                    "tooltip": "Self-attention kernel. auto: the fastest accurate one for this GPU. sageattn_3_fp8: "
                               "INT8 QK + FP8 PV (RTX 40xx/H100+). sageattn_3_fp4: FP4 (RTX 50xx/B200). Modes the GPU "
                               "or installed packages cannot run fall back along a fixed chain with one log line.",
                }),
            },
        }

    def configure(self, mode):
        return ({"mode": mode},)


class WanFP4HardwareTuning:
    DESCRIPTION = "Block swap and automatic hardware tuning: keeps peak VRAM under a threshold."
    CATEGORY = CATEGORY
    RETURN_TYPES = (TUNING_CONFIG,)
    RETURN_NAMES = ("tuning",)
    FUNCTION = "configure"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "blocks_to_swap": ("INT", {
                    "default": 0, "min": 0, "max": 40, "step": 1,
                    "tooltip": "Transformer blocks kept in (pinned) CPU memory and streamed to the GPU just before "
                               "use. 0 = all on the GPU, 40 = all swapped (lowest VRAM). Auto tuning may raise it.",
                }),
                "auto_tuning": ("BOOLEAN", {
                    "default": True,
                    "tooltip": "Pick blocks_to_swap, VAE tiling and fallbacks so that the predicted peak stays under "
                               "the VRAM threshold. The plan is printed in the console.",
                }),
                "vram_threshold_percent": ("INT", {
                    "default": 50, "min": 10, "max": 100, "step": 1,
                    "tooltip": "Auto tuning keeps the predicted peak VRAM under this share of the GPU's memory.",
                }),
            },
            "optional": {
                "offload_embeddings": ("BOOLEAN", {
                    "default": False,
                    "tooltip": "Also keep the text/image embedding layers and the audio projection on the CPU side.",
                }),
                "vae_tiling": (VAE_TILING, {
                    "default": "auto",
                    "tooltip": "Spatial tiling of the VAE (less VRAM, slightly slower). auto: on when decoding "
                               "would not fit.",
                }),
                "torch_compile": (TORCH_COMPILE, {
                    "default": "auto",
                    "tooltip": "torch.compile of the transformer blocks. auto: only on GPUs where it was measured "
                               "to help (the pack's fused kernels already cover most of what it would fuse). on: "
                               "always (the first run of each resolution spends some seconds compiling).",
                }),
            },
        }

    def configure(self, blocks_to_swap, auto_tuning, vram_threshold_percent, offload_embeddings=False, vae_tiling="auto",
                  torch_compile="auto"):
        return ({
            "blocks_to_swap": int(blocks_to_swap),
            "auto": bool(auto_tuning),
            "vram_threshold": float(vram_threshold_percent) / 100.0,
            "offload_embeddings": bool(offload_embeddings),
            "vae_tiling": vae_tiling,
            "torch_compile": torch_compile,
        },)


class WanFP4LoraSelect:
    DESCRIPTION = "Adds a LoRA (e.g. the lightx2v distill LoRA for 4-8 step runs) to merge before quantization."
    CATEGORY = CATEGORY
    RETURN_TYPES = (LORAS,)
    RETURN_NAMES = ("loras",)
    FUNCTION = "select"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "lora": ([NONE] + host.list_models("loras"), {
                    "tooltip": "LoRA file from ComfyUI's models/loras folder.",
                }),
                "strength": ("FLOAT", {
                    "default": 1.0, "min": -4.0, "max": 4.0, "step": 0.05,
                    "tooltip": "Multiplier of the LoRA's weight change.",
                }),
            },
            "optional": {
                "previous": (LORAS, {"tooltip": "Chain several LoRA nodes; they are merged in order."}),
            },
        }

    def select(self, lora, strength, previous=None):
        chain = list(previous or [])
        if lora != NONE and strength != 0:
            chain.append({"path": host.resolve_model("loras", lora), "name": lora, "strength": float(strength)})
        return (chain,)
