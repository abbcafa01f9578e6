"""InfiniteTalk audio features from chinese-wav2vec2-base, on transformers' own Wav2Vec2Model.

Official pipeline (wan_infinitetalk.md §3.1): 16 kHz mono speech -> conv feature extractor
(50 Hz) -> linear interpolation of the 512-d conv features to the video frame count
(align_corners=True) -> feature projection -> 12 transformer layers -> the 12 layer outputs
stacked as [T, 12, 768]. Interpolating *before* the transformer is what the InfiniteTalk weights
were trained with; ComfyUI's native node interpolates afterwards, which gives other numbers.

We call the library's submodules in that order and collect the layer outputs with forward hooks
(transformers 5 no longer fills `hidden_states` when the encoder is called on its own).

Weights: ComfyUI's `audio_encoders/wav2vec2-chinese-base_fp16.safetensors` (HF key names, maybe a
`wav2vec2.` prefix, weight-norm as weight_g/weight_v or parametrizations) or a Hugging Face folder
(config.json + model.safetensors). The config is read from config.json or detected from shapes.
"""
from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F

from ..log import info, load
from .audio_input import SPEECH_SR, speech_waveform, video_frame_count
from .safetensors_io import ModelFileError, load_tensors

# Keys of pre-training / CTC heads that a feature encoder does not use.
_IGNORED_PREFIXES = ("quantizer.", "project_q.", "project_hid.", "lm_head.", "dropout_features", "masked_spec_embed")
_POS_CONV = "encoder.pos_conv_embed.conv."
_WEIGHT_NORM_NAMES = {  # legacy torch.nn.utils.weight_norm <-> parametrizations.weight_norm
    "weight_g": "parametrizations.weight.original0",
    "weight_v": "parametrizations.weight.original1",
}
# The standard wav2vec2 conv stack (base and large alike): kernel -> stride.
_STANDARD_CONV = ((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2))


# ----------------------------------------------------------------------------- file reading

def read_wav2vec2_weights(path: str) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(state dict, HF config dict or None) from a .safetensors file or a Hugging Face folder."""
    path = os.fspath(path)
    if os.path.isdir(path):
        cfg_path = os.path.join(path, "config.json")
        config = None
        if os.path.isfile(cfg_path):
            with open(cfg_path, encoding="utf-8") as fh:
                try:
                    config = json.load(fh)
                except json.JSONDecodeError as e:
                    raise ModelFileError(f"{cfg_path}: not valid JSON ({e})") from None
        for name in ("model.safetensors", "pytorch_model.bin"):
            weights = os.path.join(path, name)
            if os.path.isfile(weights):
                break
        else:
            raise ModelFileError(
                f"{path}: no model.safetensors (or pytorch_model.bin) in this folder; download the weights of "
                f"TencentGameMate/chinese-wav2vec2-base (model.safetensors from refs/pr/1) into it"
            )
        if weights.endswith(".bin"):
            try:
                sd = torch.load(weights, map_location="cpu", weights_only=True)
            except Exception as e:
                raise ModelFileError(f"{weights}: cannot be read safely as a torch state dict ({e}); use model.safetensors") from None
        else:
            sd = load_tensors(weights)
        return sd, config
    if not os.path.exists(path):
        raise ModelFileError(f"{path}: file not found (expected e.g. models/audio_encoders/wav2vec2-chinese-base_fp16.safetensors)")
    return load_tensors(path), None


def map_wav2vec2_keys(sd: dict[str, torch.Tensor], target_keys, source: str = "wav2vec2 weights") -> dict[str, torch.Tensor]:
    """Rename a checkpoint's keys to transformers' Wav2Vec2Model names (`target_keys`)."""
    target_keys = set(target_keys)
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        k = key[len("wav2vec2."):] if key.startswith("wav2vec2.") else key
        if k.startswith(_IGNORED_PREFIXES):
            continue
        if k.startswith(_POS_CONV):
            tail = k[len(_POS_CONV):]
            legacy = {v: n for n, v in _WEIGHT_NORM_NAMES.items()}
            if tail in _WEIGHT_NORM_NAMES and _POS_CONV + tail not in target_keys:
                k = _POS_CONV + _WEIGHT_NORM_NAMES[tail]
            elif tail in legacy and _POS_CONV + tail not in target_keys:
                k = _POS_CONV + legacy[tail]
        if k not in target_keys:
            raise ModelFileError(
                f"{source}: unexpected key '{key}' - this does not look like a wav2vec2 checkpoint "
                f"(expected names like 'encoder.layers.0.attention.q_proj.weight')"
            )
        out[k] = value
    missing = sorted(target_keys - set(out))
    if missing:
        raise ModelFileError(
            f"{source}: {len(missing)} weights missing, first '{missing[0]}'; the file is incomplete or not a "
            f"wav2vec2 model of this shape"
        )
    return out


# ----------------------------------------------------------------------------- config detection

def _strip(sd: dict) -> dict:
    return {(k[len("wav2vec2."):] if k.startswith("wav2vec2.") else k): v for k, v in sd.items()}


def detect_wav2vec2_config(sd: dict[str, torch.Tensor], hf_config: dict | None = None, source: str = "wav2vec2 weights", **overrides):
    """A transformers Wav2Vec2Config for these weights: from config.json when given, else from shapes.

    Not visible in shapes: the number of heads (hidden // 64, as in every released wav2vec2) and
    pre- vs post-LayerNorm (post-LN with GroupNorm conv features, as in base models, pre-LN with
    LayerNorm conv features, as in large models; ComfyUI's loader assumes the same pairing).
    """
    from transformers import Wav2Vec2Config

    s = _strip(sd)

    def shape(key):
        if key not in s:
            raise ModelFileError(f"{source}: required key '{key}' not found; not a wav2vec2 checkpoint")
        return tuple(s[key].shape)

    hidden = shape("encoder.layer_norm.weight")[0]
    layers = 1 + max((int(k.split(".")[2]) for k in s if k.startswith("encoder.layers.")), default=-1)
    n_conv = 1 + max((int(k.split(".")[2]) for k in s if k.startswith("feature_extractor.conv_layers.")), default=-1)
    if layers <= 0 or n_conv <= 0:
        raise ModelFileError(f"{source}: no encoder layers or conv feature layers found; not a wav2vec2 checkpoint")
    conv_shapes = [shape(f"feature_extractor.conv_layers.{i}.conv.weight") for i in range(n_conv)]
    kernels = tuple(c[2] for c in conv_shapes)
    if kernels == _STANDARD_CONV[0]:
        strides = _STANDARD_CONV[1]
    elif "conv_stride" in overrides or hf_config:
        strides = None
    else:
        raise ModelFileError(f"{source}: non-standard conv kernels {kernels}; pass conv_stride=... to the loader")
    norm = "layer" if f"feature_extractor.conv_layers.{min(1, n_conv - 1)}.layer_norm.weight" in s and n_conv > 1 else "group"
    if "feature_extractor.conv_layers.0.layer_norm.weight" not in s:
        raise ModelFileError(f"{source}: conv layer 0 has no norm weights; unsupported wav2vec2 variant")
    pos_key = next((k for k in s if k.startswith(_POS_CONV) and k.endswith(("weight_v", "original1"))), None)
    if pos_key is None:
        raise ModelFileError(f"{source}: positional conv weights '{_POS_CONV}weight_v' not found")
    pos = tuple(s[pos_key].shape)
    detected = dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        intermediate_size=shape("encoder.layers.0.feed_forward.intermediate_dense.weight")[0],
        conv_dim=tuple(c[0] for c in conv_shapes),
        conv_kernel=kernels,
        conv_bias=f"feature_extractor.conv_layers.{n_conv - 1}.conv.bias" in s,
        feat_extract_norm=norm,
        do_stable_layer_norm=(norm == "layer"),
        num_conv_pos_embeddings=pos[2],
        num_conv_pos_embedding_groups=hidden // pos[1],
    )
    if strides is not None:
        detected["conv_stride"] = strides
    params = dict(hf_config) if hf_config else detected
    params.update(overrides)
    params.update(mask_time_prob=0.0, mask_feature_prob=0.0, layerdrop=0.0)  # inference only
    for drop in ("architectures", "_name_or_path", "transformers_version", "torch_dtype", "dtype"):
        params.pop(drop, None)
    if params["hidden_size"] % params["num_attention_heads"]:
        raise ModelFileError(f"{source}: hidden size {params['hidden_size']} not divisible by {params['num_attention_heads']} heads")
    return Wav2Vec2Config(**params)


# ----------------------------------------------------------------------------- the encoder

class InfiniteTalkAudioEncoder:
    """wav2vec2 + the InfiniteTalk feature recipe. `encode` returns [frames, layers, hidden]."""

    def __init__(self, model, device="cpu", dtype=torch.float32):
        self.model = model.eval().requires_grad_(False)
        self.device = torch.device(device)
        self.dtype = dtype

    @property
    def num_layers(self) -> int:
        return self.model.config.num_hidden_layers

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @torch.no_grad()
    def encode(self, wav16k: torch.Tensor, num_frames: int | None = None, fps: float = 25.0) -> torch.Tensor:
        """1-D 16 kHz waveform -> [num_frames, layers, hidden]; num_frames defaults to int(seconds * fps)."""
        wav = torch.as_tensor(wav16k).reshape(-1)
        if num_frames is None:
            num_frames = video_frame_count(wav.numel(), fps)
        if num_frames <= 0:
            raise ValueError(
                f"audio of {wav.numel() / SPEECH_SR:.3f} s gives {num_frames} video frames at {fps} fps; "
                f"it must be at least one frame long"
            )
        m = self.model
        x = wav.to(self.device, self.dtype)[None]
        conv = m.feature_extractor(x)                                   # [1, 512, T_50Hz]
        if conv.shape[-1] == 0:
            raise ValueError(f"audio of {wav.numel()} samples is shorter than wav2vec2's 400-sample receptive field")
        conv = F.interpolate(conv, size=num_frames, mode="linear", align_corners=True)
        hidden, _ = m.feature_projection(conv.transpose(1, 2))          # [1, T, hidden]
        outputs: list[torch.Tensor] = []

        def keep(_module, _inputs, output):
            outputs.append(output[0] if isinstance(output, tuple) else output)

        hooks = [layer.register_forward_hook(keep) for layer in m.encoder.layers]
        try:
            last = m.encoder(hidden).last_hidden_state
        finally:
            for h in hooks:
                h.remove()
        if len(outputs) != self.num_layers:
            raise RuntimeError(f"collected {len(outputs)} layer outputs, expected {self.num_layers}")
        if m.config.do_stable_layer_norm:  # pre-LN models expose the final norm as the last hidden state
            outputs[-1] = last
        return torch.stack(outputs, dim=2)[0]                           # [T, layers, hidden]

    def encode_audio(self, audio, fps: float = 25.0, name: str = "audio", normalize_loudness: bool = True) -> torch.Tensor:
        """ComfyUI AUDIO dict -> features, with the official 16 kHz mono / -23 LUFS preparation."""
        wav = speech_waveform(audio, name, normalize_loudness=normalize_loudness)
        return self.encode(wav, fps=fps)

    def silence_features(self, num_frames: int, fps: float = 25.0) -> torch.Tensor:
        """wav2vec2 of a zero waveform covering num_frames video frames (the official silent track)."""
        samples = max(400, int(round(num_frames / fps * SPEECH_SR)))
        return self.encode(torch.zeros(samples), num_frames=num_frames, fps=fps)


def build_wav2vec2(config, attn_implementation: str = "eager"):
    """A transformers Wav2Vec2Model for `config` with the requested attention kernel."""
    from transformers import Wav2Vec2Model

    config._attn_implementation = attn_implementation
    return Wav2Vec2Model(config)


def load_audio_encoder(
    path: str,
    device="cpu",
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "eager",
    **config_overrides,
) -> InfiniteTalkAudioEncoder:
    """Load a ComfyUI wav2vec2 file or a Hugging Face folder into an InfiniteTalkAudioEncoder.

    Kept in float32 by default, as the official code runs it (fp16 files are upcast).
    """
    sd, hf_config = read_wav2vec2_weights(path)
    config = detect_wav2vec2_config(sd, hf_config, source=str(path), **config_overrides)
    model = build_wav2vec2(config, attn_implementation)
    mapped = map_wav2vec2_keys(sd, model.state_dict().keys(), source=str(path))
    model.load_state_dict({k: v.to(torch.float32) for k, v in mapped.items()}, strict=True)
    model.to(device=device, dtype=dtype)
    load(
        f"wav2vec2 {os.path.basename(os.fspath(path).rstrip('/'))}: hidden {config.hidden_size}, "
        f"{config.num_hidden_layers} layers, {config.num_attention_heads} heads, "
        f"{'pre' if config.do_stable_layer_norm else 'post'}-LN, {dtype} on {device}"
    )
    info("audio features: conv features interpolated to the video frame rate before the transformer (official InfiniteTalk)")
    return InfiniteTalkAudioEncoder(model, device, dtype)
