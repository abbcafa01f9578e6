"""Wan2.1 DiT (T2V / I2V, any size) with the optional InfiniteTalk audio modules.

`state_dict()` keys are exactly the original Wan / InfiniteTalk checkpoint names (§1.5, §3.5),
with no buffers, so a loader can build the model on the meta device and fill it with
`load_state_dict(sd, strict=True, assign=True)`. Numerics follow InfiniteTalk (§1.7); see
blocks.py. The output is the flow-matching velocity in fp32.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .audio_modules import AudioProjModel
from .blocks import BlockInputs, WanBlock
from .config import WanConfig
from .norms import RMSNorm, layer_norm
from .rope import rope_angles_3d

ATTENTION_ROLES = ("self", "cross", "audio")


def sinusoidal_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """Timestep embedding concat(cos, sin) (cos first) computed in float64, returned as fp32 [B, dim]."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    ang = torch.outer(t.double(), freqs)
    return torch.cat([torch.cos(ang), torch.sin(ang)], dim=1).float()


def _float_dtype(module: nn.Module, default: torch.dtype) -> torch.dtype:
    """dtype a module wants as input: its first floating parameter's dtype (fp8 weights -> default)."""
    for p in module.parameters():
        if p.dtype in (torch.float32, torch.bfloat16, torch.float16):
            return p.dtype
    return default


class ImageProjection(nn.Module):
    """CLIP ViT-H features (1280) -> dim: LayerNorm, Linear, GELU, Linear, LayerNorm (keys img_emb.proj.{0,1,3,4})."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Sequential(
            layer_norm(in_dim, 1e-5, affine=True), nn.Linear(in_dim, in_dim), nn.GELU(),
            nn.Linear(in_dim, out_dim), layer_norm(out_dim, 1e-5, affine=True),
        )

    def forward(self, clip: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        ln0, fc1, act, fc2, ln4 = self.proj
        h = fc1(ln0(clip).to(dtype))
        return ln4(fc2(act(h))).to(dtype)


class Head(nn.Module):
    """Final modulated LayerNorm + Linear(dim -> prod(patch) * out_dim), in fp32 (keys head.head, head.modulation)."""

    def __init__(self, dim: int, out_dim: int, patch_size, eps: float):
        super().__init__()
        self.norm = layer_norm(dim, eps, affine=False)
        self.head = nn.Linear(dim, math.prod(patch_size) * out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.modulation.float() + e.unsqueeze(1)).unsqueeze(2).unbind(1)
        h = self.norm(x) * (1 + scale) + shift
        return self.head(h.to(_float_dtype(self.head, h.dtype))).float()


class WanModel(nn.Module):
    """The Wan2.1 DiT. See `forward` for the input contract."""

    def __init__(self, config: WanConfig):
        super().__init__()
        if config.dim % config.num_heads:
            raise ValueError(f"config: dim {config.dim} is not divisible by num_heads {config.num_heads}")
        if config.model_type not in ("t2v", "i2v"):
            raise ValueError(f"config: model_type must be 't2v' or 'i2v', got {config.model_type!r}")
        self.config = config
        c = config
        self.patch_embedding = nn.Conv3d(c.in_dim, c.dim, kernel_size=c.patch_size, stride=c.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(c.text_dim, c.dim), nn.GELU(approximate="tanh"), nn.Linear(c.dim, c.dim))
        self.time_embedding = nn.Sequential(nn.Linear(c.freq_dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(c.dim, 6 * c.dim))
        self.blocks = nn.ModuleList([WanBlock(c, image=c.is_i2v) for _ in range(c.num_layers)])
        self.head = Head(c.dim, c.out_dim, c.patch_size, c.eps)
        if c.is_i2v:
            self.img_emb = ImageProjection(c.image_dim, c.dim)
        if c.audio is not None:
            a = c.audio
            self.audio_proj = AudioProjModel(a.seq_len, a.seq_len_vf, a.blocks, a.channels, a.intermediate_dim,
                                             a.output_dim, a.context_tokens, a.norm_output_audio)
        self.attention_modes = {"self": "sdpa", "cross": "sdpa", "audio": "sdpa"}
        self.activation_dtype: torch.dtype | None = None  # None: follow patch_embedding's dtype

    # ----------------------------------------------------------------- settings
    def set_attention_modes(self, self_attn: str | None = None, cross_attn: str | None = None,
                            audio_attn: str | None = None) -> dict:
        """Choose the attention implementation per role (names registered in attention/dispatch.py)."""
        for role, mode in zip(ATTENTION_ROLES, (self_attn, cross_attn, audio_attn)):
            if mode is not None:
                self.attention_modes[role] = mode
        return dict(self.attention_modes)

    def compute_dtype(self) -> torch.dtype:
        """Activation / residual-stream dtype: explicit override, else patch_embedding's float dtype, else bf16."""
        if self.activation_dtype is not None:
            return self.activation_dtype
        return _float_dtype(self.patch_embedding, torch.bfloat16)

    # ----------------------------------------------------------------- init
    @torch.no_grad()
    def init_weights(self, seed: int | None = None, std_scale: float = 1.0) -> "WanModel":
        """Random, non-degenerate init of EVERY tensor (tests/demo models; real models load weights).

        Unlike upstream (zero head, unit norms) everything is random so tests exercise every path.
        Weights ~ N(0, std_scale/sqrt(fan_in)), biases ~ N(0, 0.02), norm weights ~ 1 + 0.1 N,
        norm biases ~ 0.1 N, modulations ~ N(0, 1/dim). Deterministic for a seed on a given device type.
        """
        if any(p.is_meta for p in self.parameters()):
            raise RuntimeError("init_weights: the model is on the meta device; call model.to_empty(device=...) first")
        gens: dict[torch.device, torch.Generator] = {}

        def rand(p: torch.Tensor, std: float, mean: float = 0.0) -> None:
            # one generator per device: random init of big models on a GPU stays fast (values differ per device type)
            if p.device not in gens:
                gens[p.device] = torch.Generator(device=p.device).manual_seed(0 if seed is None else int(seed))
            noise = torch.randn(p.shape, generator=gens[p.device], device=p.device, dtype=torch.float32)
            p.copy_((noise * std + mean).to(p.dtype))

        for name, p in self.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            owner = self.get_submodule(name.rsplit(".", 1)[0]) if "." in name else self
            if leaf == "modulation":
                rand(p, p.shape[-1] ** -0.5)
            elif isinstance(owner, (nn.LayerNorm, RMSNorm)):
                rand(p, 0.1, 1.0 if leaf == "weight" else 0.0)
            elif leaf == "bias":
                rand(p, 0.02)
            else:
                rand(p, std_scale / math.sqrt(p[0].numel()))
        return self

    # ----------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                clip_fea: torch.Tensor | None = None, y: torch.Tensor | None = None,
                audio: torch.Tensor | None = None, audio_scale: float = 1.0,
                ref_target_masks: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity prediction [B, out_dim, F, H, W] (fp32).

        x: [B, 16, F, H, W] noisy latent. timestep: [B] (or scalar) float in [0, 1000].
        context: [B, L <= text_len, text_dim] T5 features, zero-padded to text_len here.
        clip_fea: [B, 257, 1280] CLIP features (required for i2v). y: [B, in_dim - 16, F, H, W]
        (i2v: mask 4 + conditioning latent 16), concatenated after x on channels.
        audio: None => plain Wan (audio modules skipped entirely); else the per-window wav2vec2
        features [B, speakers (1|2), 4(F-1)+1, 5, blocks, channels]. For audio CFG pass ZEROS (the
        official "null audio" runs through the modules), not None.
        audio_scale: multiplier on the audio residual (1.0 = official).
        ref_target_masks: two speakers only: [3, h*w] or [3, mh, mw] (any size, nearest-resized to
        the token grid) masks of speaker 1, speaker 2, background on the first latent frame.
        """
        dt = self.compute_dtype()
        b = x.shape[0]
        x = self._concat_condition(x, y)
        tokens, grid = self._patchify(x, dt)
        t = self._check_timestep(timestep, b, x.device)

        t_in = sinusoidal_embedding(self.config.freq_dim, t)
        e = self.time_embedding(t_in.to(_float_dtype(self.time_embedding[0], torch.float32))).float()
        e0 = self.time_projection(e.to(_float_dtype(self.time_projection[1], torch.float32))).float()
        e0 = e0.unflatten(1, (6, self.config.dim))

        cos, sin = rope_angles_3d(grid, self.config.head_dim, x.device, self.config.rope_max_len)
        inp = BlockInputs(e0=e0, rope_cos=cos, rope_sin=sin, grid=grid,
                          context=self._embed_text(context, b, dt), modes=dict(self.attention_modes))
        if self.config.is_i2v:
            inp.context_img = self._embed_image(clip_fea, b, dt)
        elif clip_fea is not None:
            raise ValueError("clip_fea: given to a text-to-video (t2v) model, which has no image branch")
        if audio is not None:
            self._prepare_audio(inp, audio, b, grid, dt, audio_scale, ref_target_masks)

        tokens = self._run_blocks(tokens, inp)
        out = self.head(tokens, e)
        return self._unpatchify(out, grid)

    def _run_blocks(self, x: torch.Tensor, inp: BlockInputs) -> torch.Tensor:
        """The single loop over blocks (block swap / offloading hooks in here)."""
        for block in self.blocks:
            x = block(x, inp)
        return x

    # ----------------------------------------------------------------- input checks and embeddings
    def _concat_condition(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        c = self.config
        if x.dim() != 5:
            raise ValueError(f"x: expected a latent [B, C, F, H, W], got shape {tuple(x.shape)}")
        extra = c.in_dim - x.shape[1]
        if y is None:
            if extra:
                raise ValueError(
                    f"y: required for this {c.model_type} model (in_dim {c.in_dim}, x has {x.shape[1]} channels); "
                    f"pass the [B, {extra}, F, H, W] mask + conditioning latent"
                )
            return x
        if y.shape[0] != x.shape[0] or y.shape[2:] != x.shape[2:] or y.shape[1] != extra:
            raise ValueError(
                f"y: expected shape [{x.shape[0]}, {extra}, {', '.join(map(str, x.shape[2:]))}] to complete "
                f"in_dim {c.in_dim}, got {tuple(y.shape)}"
            )
        return torch.cat([x, y.to(x.dtype)], dim=1)

    def _patchify(self, x: torch.Tensor, dt: torch.dtype) -> tuple[torch.Tensor, tuple[int, int, int]]:
        pt, ph, pw = self.config.patch_size
        if x.shape[2] % pt or x.shape[3] % ph or x.shape[4] % pw:
            raise ValueError(
                f"x: latent size {tuple(x.shape[2:])} is not divisible by the patch size {self.config.patch_size}; "
                f"use image sizes that are multiples of {8 * ph}"
            )
        h = self.patch_embedding(x.to(_float_dtype(self.patch_embedding, dt)))
        grid = tuple(h.shape[2:])
        # Contiguous [B, L, dim]: a transposed view would stay transposed through every element-wise op of the
        # residual stream and make each LayerNorm / Linear copy it (about 1 s per 14B batch-3 forward).
        return h.flatten(2).transpose(1, 2).to(dt).contiguous(), grid

    def _unpatchify(self, out: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """[B, F*h*w, pt*ph*pw*C] -> [B, C, F*pt, h*ph, w*pw] (patch channels ordered pt, ph, pw, C)."""
        f, h, w = grid
        pt, ph, pw = self.config.patch_size
        out = out.view(out.shape[0], f, h, w, pt, ph, pw, self.config.out_dim)
        out = torch.einsum("bfhwpqrc->bcfphqwr", out)
        return out.reshape(out.shape[0], self.config.out_dim, f * pt, h * ph, w * pw)

    @staticmethod
    def _check_timestep(t: torch.Tensor | float, b: int, device) -> torch.Tensor:
        t = torch.as_tensor(t, device=device).float().reshape(-1)
        if t.numel() == 1 and b > 1:
            t = t.expand(b)
        if t.numel() != b:
            raise ValueError(f"timestep: expected {b} values (one per batch item), got {t.numel()}")
        return t

    def _embed_text(self, context: torch.Tensor, b: int, dt: torch.dtype) -> torch.Tensor:
        c = self.config
        if context.dim() != 3 or context.shape[0] != b or context.shape[2] != c.text_dim:
            raise ValueError(f"context: expected T5 features [{b}, L<={c.text_len}, {c.text_dim}], got {tuple(context.shape)}")
        if context.shape[1] > c.text_len:
            raise ValueError(f"context: {context.shape[1]} tokens exceed text_len {c.text_len}; truncate the prompt")
        context = F.pad(context, (0, 0, 0, c.text_len - context.shape[1]))
        return self.text_embedding(context.to(_float_dtype(self.text_embedding[0], dt))).to(dt)

    def _embed_image(self, clip_fea: torch.Tensor | None, b: int, dt: torch.dtype) -> torch.Tensor:
        c = self.config
        if clip_fea is None:
            raise ValueError("clip_fea: required for this image-to-video (i2v) model: pass CLIP vision features [B, 257, 1280]")
        if clip_fea.dim() != 3 or clip_fea.shape[0] != b or clip_fea.shape[2] != c.image_dim:
            raise ValueError(f"clip_fea: expected [{b}, {c.image_tokens}, {c.image_dim}], got {tuple(clip_fea.shape)}")
        return self.img_emb(clip_fea, _float_dtype(self.img_emb.proj[1], dt)).to(dt)

    def _prepare_audio(self, inp: BlockInputs, audio: torch.Tensor, b: int, grid, dt, scale, masks) -> None:
        c = self.config
        if c.audio is None:
            raise ValueError("audio: given to a model without InfiniteTalk audio modules (load the InfiniteTalk weights)")
        a = c.audio
        frames = grid[0] * self.config.patch_size[0]
        want = (b, "1|2", 4 * (frames - 1) + 1, a.seq_len, a.blocks, a.channels)
        if audio.dim() != 6 or audio.shape[0] != b or audio.shape[1] not in (1, 2) or tuple(audio.shape[2:]) != want[2:]:
            raise ValueError(f"audio: expected window features of shape {list(want)}, got {tuple(audio.shape)}")
        speakers = audio.shape[1]
        device = inp.e0.device
        tok = self.audio_proj(audio.flatten(0, 1).to(device), _float_dtype(self.audio_proj.proj1, dt))
        tok = tok.unflatten(0, (b, speakers)).transpose(1, 2)  # [B, F, speakers, tokens, C]
        inp.audio = tok.reshape(b * grid[0], speakers * a.context_tokens, a.output_dim).to(dt)
        inp.audio_scale = float(scale)
        inp.speakers = speakers
        if speakers > 1:
            inp.speaker_masks = token_masks(masks, grid, device)


def token_masks(masks: torch.Tensor | None, grid: tuple[int, int, int], device) -> torch.Tensor:
    """Speaker masks -> binary float [3, h*w] or [B, 3, h*w] on the token grid of the first latent frame.

    Accepted: [3, h*w] / [B, 3, h*w] (already on the token grid) or [3, mh, mw] / [B, 3, mh, mw]
    (any resolution, nearest-resized as upstream does).
    """
    if masks is None:
        raise ValueError("ref_target_masks: required with two speakers ([3, h*w] masks: speaker 1, speaker 2, background)")
    h, w = grid[1], grid[2]
    m = masks.float().to(device)
    flat = m.dim() == 2 or (m.dim() == 3 and m.shape[1] == 3 and m.shape[2] == h * w)
    if not flat:
        if m.dim() not in (3, 4):
            raise ValueError(f"ref_target_masks: expected [3, {h * w}] or [3, H, W] masks, got shape {tuple(masks.shape)}")
        lead = m.shape[:-2]
        m = F.interpolate(m.reshape(-1, 1, *m.shape[-2:]), size=(h, w), mode="nearest").reshape(*lead, h * w)
    if m.shape[-2] != 3 or m.shape[-1] != h * w:
        raise ValueError(
            f"ref_target_masks: expected 3 masks (speaker 1, speaker 2, background) over the {h}x{w} token grid "
            f"([3, {h * w}]), got shape {tuple(masks.shape)}"
        )
    return (m > 0).float()


# --------------------------------------------------------------------- helpers
def build_model(config: WanConfig, device: str | torch.device = "meta", dtype: torch.dtype = torch.bfloat16,
                seed: int | None = None) -> WanModel:
    """Build on meta (fast, no memory); on a real device allocate, apply the dtype policy and init randomly."""
    with torch.device("meta"):
        model = WanModel(config)
    apply_dtype_policy(model, dtype)
    if torch.device(device).type != "meta":
        model.to_empty(device=device)
        model.init_weights(seed)
    return model


FP32_KEEP_SUFFIXES = ("modulation",)
FP32_KEEP_PREFIXES = ("time_embedding.", "time_projection.", "head.head.")


def keeps_fp32(name: str) -> bool:
    """Parameters kept in fp32 whatever the model dtype: small, numerically sensitive (§1.7).

    Time embedding/projection, modulations, the output head, and every norm weight/bias.
    """
    if name.endswith(FP32_KEEP_SUFFIXES) or name.startswith(FP32_KEEP_PREFIXES):
        return True
    parent = name.rsplit(".", 1)[0]
    last = parent.rsplit(".", 1)[-1]
    return last.startswith("norm") or parent in ("img_emb.proj.0", "img_emb.proj.4")


def apply_dtype_policy(model: WanModel, dtype: torch.dtype) -> WanModel:
    """Cast parameters to `dtype`, keeping `keeps_fp32` ones in fp32; the activations follow `dtype`."""
    for name, p in model.named_parameters():
        want = torch.float32 if keeps_fp32(name) else dtype
        if p.dtype != want:
            p.data = p.data.to(want)
    model.activation_dtype = dtype
    return model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def expected_keys(config: WanConfig) -> dict[str, tuple[int, ...]]:
    """Checkpoint key -> shape for a config (original Wan / InfiniteTalk names), from a meta build."""
    with torch.device("meta"):
        model = WanModel(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}
