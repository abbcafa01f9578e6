"""Socket type names and the option lists the nodes offer (one place, so workflows and nodes agree)."""

from ..wan.block_compile import CHOICES as _COMPILE_CHOICES
from ..wan.schedulers import SCHEDULER_NAMES

CATEGORY = "WanFP4"

MODEL = "WANFP4_MODEL"
VAE = "WANFP4_VAE"
TEXT_ENCODER = "WANFP4_TEXT_ENCODER"
CLIP_VISION = "WANFP4_CLIP_VISION"
AUDIO_ENCODER = "WANFP4_AUDIO_ENCODER"
TEXT_EMBEDS = "WANFP4_TEXT_EMBEDS"
IMAGE_EMBEDS = "WANFP4_IMAGE_EMBEDS"
AUDIO_EMBEDS = "WANFP4_AUDIO_EMBEDS"
QUANT_CONFIG = "WANFP4_QUANT_CONFIG"
ATTENTION_CONFIG = "WANFP4_ATTENTION_CONFIG"
TUNING_CONFIG = "WANFP4_TUNING_CONFIG"
LORAS = "WANFP4_LORAS"

QUANT_MODES = [
    "auto", "disabled", "fp8_e4m3fn", "fp8_e4m3fn_scaled", "fp8_e4m3fn_fast", "fp8_e5m2",
    "fp4_experimental", "fp4_scaled", "fp4_scaled_fast",
]
ATTENTION_MODES = [
    "auto", "sdpa", "flash_attn_2", "flash_attn_3", "sageattn", "sageattn_3", "sageattn_3_fp8", "sageattn_3_fp4",
]
BASE_PRECISIONS = ["bf16", "fp16", "fp32"]
TORCH_COMPILE = list(_COMPILE_CHOICES)
VAE_TILING = ["auto", "on", "off"]
SCHEDULERS = list(SCHEDULER_NAMES)
NONE = "none"
