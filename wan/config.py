"""Wan2.1 DiT configurations (reference doc §1.1, §3.3, §3.4).

One dataclass describes every variant: T2V / I2V, 1.3B / 14B / tiny, with or without the
InfiniteTalk audio modules. The loader fills it from state-dict keys alone.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace


@dataclass(frozen=True)
class AudioConfig:
    """InfiniteTalk / MultiTalk audio modules (AudioProjModel + per-block audio cross-attention)."""

    seq_len: int = 5            # audio frames around each video frame (offsets -2..+2)
    seq_len_vf: int = 8         # entries kept per group of 4 video frames (3 + 1 + 1 + 3)
    blocks: int = 12            # wav2vec2 layers stacked
    channels: int = 768         # wav2vec2 hidden size
    intermediate_dim: int = 512
    output_dim: int = 768       # audio token width (kv_linear input)
    context_tokens: int = 32    # audio tokens per latent frame per speaker
    norm_output_audio: bool = True


@dataclass(frozen=True)
class WanConfig:
    model_type: str = "i2v"     # "t2v" | "i2v"
    dim: int = 5120
    ffn_dim: int = 13824
    num_heads: int = 40
    num_layers: int = 40
    in_dim: int = 36
    out_dim: int = 16
    freq_dim: int = 256
    text_dim: int = 4096
    text_len: int = 512
    image_dim: int = 1280       # CLIP ViT-H/14 width; only used by i2v
    image_tokens: int = 257
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    qk_norm: bool = True
    cross_attn_norm: bool = True
    rope_max_len: int = 1024
    audio: AudioConfig | None = None   # set => InfiniteTalk model

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def is_i2v(self) -> bool:
        return self.model_type == "i2v"

    @property
    def has_audio(self) -> bool:
        return self.audio is not None

    def with_audio(self, audio: AudioConfig | None = None) -> "WanConfig":
        return replace(self, audio=audio or AudioConfig())

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "WanConfig":
        d = dict(d)
        if d.get("audio") is not None and not isinstance(d["audio"], AudioConfig):
            d["audio"] = AudioConfig(**d["audio"])
        if "patch_size" in d:
            d["patch_size"] = tuple(d["patch_size"])
        return cls(**d)


WAN21_T2V_1_3B = WanConfig(model_type="t2v", dim=1536, ffn_dim=8960, num_heads=12, num_layers=30, in_dim=16)
WAN21_T2V_14B = WanConfig(model_type="t2v", dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=16)
WAN21_I2V_14B = WanConfig(model_type="i2v", dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=36)
INFINITETALK_14B = WAN21_I2V_14B.with_audio()

# Tiny configs for tests and demo models: real structure, a few KB of weights.
TINY_I2V = WanConfig(model_type="i2v", dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=36, text_dim=32)
TINY_T2V = WanConfig(model_type="t2v", dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=16, text_dim=32)
TINY_AUDIO = AudioConfig(blocks=12, channels=16, intermediate_dim=32, output_dim=16, context_tokens=4)
TINY_INFINITETALK = TINY_I2V.with_audio(TINY_AUDIO)
