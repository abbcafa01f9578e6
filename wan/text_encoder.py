"""umT5-XXL text encoder (Wan's prompt encoder) on transformers' UMT5EncoderModel.

Accepted files (layout detected from key names, sizes from shapes):
- ComfyUI `text_encoders/umt5_xxl_fp16.safetensors` (Hugging Face T5 names
  `encoder.block.N.layer.0.SelfAttention.q.weight`, `shared.weight`, tokenizer as `spiece_model`);
- ComfyUI `umt5_xxl_fp8_e4m3fn_scaled.safetensors` (fp8 weights x `scale_weight`, `scaled_fp8`
  marker) and `comfy_quant` files; the quant package parses these per Linear;
- Wan's `models_t5_umt5-xxl-enc-bf16.pth` (names `token_embedding.weight`, `blocks.N.attn.q.weight`,
  `blocks.N.pos_embedding.embedding.weight`, ...) with a tokenizer folder beside it.

Output per prompt, like Wan: the encoder states trimmed to the prompt's true token count (eos
included), zero-padded to `text_len` (512). Storage `fp8_e4m3fn` keeps every block Linear in fp8
(QuantLinear, upcast per layer), roughly halving memory. The 1-billion-parameter vocabulary
table always stays on the CPU: only the rows a prompt uses travel to the GPU. `encode(..., stream=True)`
keeps the blocks on the host too and brings one block at a time to the GPU (the hardware plan decides,
wan/hw_tuning.py), with the same result as the resident path.
"""
from __future__ import annotations

import os
import re

import torch
import torch.nn as nn

from ..log import info, load, warn
from .checkpoint_reader import find_prefix, open_checkpoint, shapes_of
from .residency import HostResidency, StreamedBlocks
from .safetensors_io import ModelFileError
from .t5_tokenizer import SPIECE_TENSOR, T5Tokenizer, find_tokenizer

TEXT_LEN = 512
MAX_DISTANCE = 128          # umT5 relative-position range (not stored in the weights)
COMFY_ANCHOR = "encoder.block.0.layer.0.SelfAttention.q.weight"
WAN_ANCHOR = "blocks.0.attn.q.weight"
DEMO_KEY = "wanfp4_demo"    # metadata of the pack's random-weight demo files
IGNORED_KEYS = (SPIECE_TENSOR, "scaled_fp8", "encoder.embed_tokens.weight")

# precision -> (compute dtype, QuantLinear mode for the block Linears or None for dense)
PRECISIONS: dict[str, tuple[torch.dtype, str | None]] = {
    "bf16": (torch.bfloat16, None),
    "fp16": (torch.float16, None),
    "fp32": (torch.float32, None),
    "fp8_e4m3fn": (torch.bfloat16, "fp8_e4m3fn_scaled"),
}

# Wan's own module names -> Hugging Face / ComfyUI names (the leaf, e.g. `.weight`, is kept).
_WAN_MODULES = (
    (r"token_embedding", "shared"),
    (r"norm", "encoder.final_layer_norm"),
    (r"blocks\.(\d+)\.norm1", r"encoder.block.\1.layer.0.layer_norm"),
    (r"blocks\.(\d+)\.attn\.([qkvo])", r"encoder.block.\1.layer.0.SelfAttention.\2"),
    (r"blocks\.(\d+)\.pos_embedding\.embedding", r"encoder.block.\1.layer.0.SelfAttention.relative_attention_bias"),
    (r"blocks\.(\d+)\.norm2", r"encoder.block.\1.layer.1.layer_norm"),
    (r"blocks\.(\d+)\.ffn\.gate\.0", r"encoder.block.\1.layer.1.DenseReluDense.wi_0"),
    (r"blocks\.(\d+)\.ffn\.fc1", r"encoder.block.\1.layer.1.DenseReluDense.wi_1"),
    (r"blocks\.(\d+)\.ffn\.fc2", r"encoder.block.\1.layer.1.DenseReluDense.wo"),
)
_WAN_RULES = tuple((re.compile(f"^{a}$"), b) for a, b in _WAN_MODULES)


def wan_key_to_hf(key: str) -> str | None:
    """`blocks.3.ffn.fc1.weight` -> `encoder.block.3.layer.1.DenseReluDense.wi_1.weight` (None: unknown)."""
    module, _, leaf = key.rpartition(".")
    for pattern, repl in _WAN_RULES:
        if pattern.match(module):
            return pattern.sub(repl, module) + "." + leaf
    return None


def _hf_names(keys) -> tuple[dict[str, str], str, str] | None:
    """{hf_name: file_key}, layout ('comfy' | 'wan'), prefix; None when no umT5 encoder is recognised."""
    found = find_prefix(keys, (COMFY_ANCHOR, WAN_ANCHOR))
    if found is None:
        return None
    prefix, anchor = found
    names: dict[str, str] = {}
    for k in keys:
        if not k.startswith(prefix):
            continue
        rest = k[len(prefix):]
        if anchor == WAN_ANCHOR:
            hf = wan_key_to_hf(rest)
            if hf is not None:
                names[hf] = k
        else:
            names[rest] = k
    if "shared.weight" not in names and "encoder.embed_tokens.weight" in names:
        names["shared.weight"] = names["encoder.embed_tokens.weight"]
    return names, ("wan" if anchor == WAN_ANCHOR else "comfy"), prefix


def detect_text_encoder(keys_shapes) -> dict | None:
    """Config of a umT5 encoder from {key: shape}; None if the keys are not a T5 encoder.

    Raises ModelFileError for a T5 encoder Wan cannot use (T5 v1.1 / FLUX T5-XXL, missing parts).
    """
    shapes = shapes_of(keys_shapes)
    found = _hf_names(shapes)
    if found is None:
        return None
    names, layout, prefix = found
    s = {hf: shapes[k] for hf, k in names.items()}
    blk = "encoder.block.{}.layer.{}."
    need = ("shared.weight", blk.format(0, 0) + "SelfAttention.relative_attention_bias.weight",
            blk.format(0, 1) + "DenseReluDense.wo.weight")
    for n in need:
        if n not in s:
            if n.endswith("wo.weight") and blk.format(0, 1) + "DenseReluDense.wi.weight" in s:
                raise ModelFileError("text encoder: non-gated T5 feed-forward (DenseReluDense.wi); Wan needs umT5-XXL")
            raise ModelFileError(f"text encoder: key '{prefix}{n}' (or its Wan-layout name) is missing; "
                                 "the file is not a complete umT5 encoder")
    layers = 1 + max(int(m.group(1)) for k in s if (m := re.match(r"encoder\.block\.(\d+)\.", k)))
    if layers > 1 and blk.format(1, 0) + "SelfAttention.relative_attention_bias.weight" not in s:
        raise ModelFileError("text encoder: only block 0 has a relative position bias: this is a T5 v1.1 encoder "
                             "(e.g. t5xxl for FLUX/SD3), not umT5-XXL. Use umt5_xxl_fp16.safetensors (Wan)")
    if blk.format(0, 1) + "DenseReluDense.wi_0.weight" not in s:
        raise ModelFileError("text encoder: the feed-forward is not gated (no DenseReluDense.wi_0); Wan needs umT5-XXL")
    vocab, d_model = s["shared.weight"]
    buckets, heads = s[blk.format(0, 0) + "SelfAttention.relative_attention_bias.weight"]
    inner = s[blk.format(0, 0) + "SelfAttention.q.weight"][0]
    if inner % heads:
        raise ModelFileError(f"text encoder: attention width {inner} is not a multiple of {heads} heads; corrupt file")
    return {"family": "umt5", "layout": layout, "prefix": prefix, "vocab_size": vocab, "d_model": d_model,
            "d_kv": inner // heads, "num_heads": heads, "d_ff": s[blk.format(0, 1) + "DenseReluDense.wi_0.weight"][0],
            "num_layers": layers, "num_buckets": buckets}


def umt5_config(det: dict):
    from transformers import UMT5Config

    return UMT5Config(vocab_size=det["vocab_size"], d_model=det["d_model"], d_kv=det["d_kv"], d_ff=det["d_ff"],
                      num_layers=det["num_layers"], num_heads=det["num_heads"],
                      relative_attention_num_buckets=det["num_buckets"], relative_attention_max_distance=MAX_DISTANCE,
                      feed_forward_proj="gated-gelu", dropout_rate=0.0, is_encoder_decoder=False, use_cache=False)


class _KeepActivationDtype(nn.Module):
    """Wraps a quantized `wo`: transformers' T5 feed-forward casts its activations to `wo.weight.dtype`
    (meant for fp32 `wo`), which would be fp8 here. `weight = None` turns that cast off."""

    weight = None

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def _set_param(model: nn.Module, name: str, t: torch.Tensor) -> None:
    parent, _, leaf = name.rpartition(".")
    model.get_submodule(parent)._parameters[leaf] = nn.Parameter(t, requires_grad=False)


def _load_weights(model: nn.Module, view, names: dict[str, str], dtype: torch.dtype, quant_mode: str | None,
                  ignore: set[str], work_device: torch.device) -> None:
    """Fill the meta-device model tensor by tensor (all kept on the CPU); fp8/quantized Linears are
    parsed by the quant package, and quantized on `work_device` (a GPU does it ~50x faster)."""
    from ..quant import QuantFormatError, QuantLinear
    from ..quant.incoming import dequantize_incoming, parse_linear_state

    by_module: dict[str, dict[str, str]] = {}
    for hf, k in names.items():
        mod, _, leaf = hf.rpartition(".")
        by_module.setdefault(mod, {})[leaf] = k
    used = set()
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    for name, lin in linears:
        files = by_module.get(name, {})
        local = {leaf: view.get(k).to(work_device if quant_mode else "cpu") for leaf, k in files.items()}
        used.update(files.values())
        n, k = lin.out_features, lin.in_features
        try:
            if quant_mode is not None:
                new = QuantLinear(k, n, bias=False, mode=quant_mode, base_dtype=dtype, device="meta")
                result = new.load_state_dict(local, strict=False)
                if result.missing_keys:
                    raise ModelFileError(f"{view.path}: key '{files.get('weight', name + '.weight')}' is missing")
                new.to("cpu")
                parent, _, leaf = name.rpartition(".")
                setattr(model.get_submodule(parent), leaf, _KeepActivationDtype(new) if leaf == "wo" else new)
                continue
            inc = parse_linear_state(local, name + ".", n, k)
        except QuantFormatError as e:
            raise ModelFileError(f"{view.path}: {e}") from None
        if inc is None:
            raise ModelFileError(f"{view.path}: key for '{name}.weight' is missing; the file is not a complete "
                                 "umT5 encoder")
        w = inc.tensors["weight"] if inc.kind == "dense" else dequantize_incoming(inc, k)
        _set_param(model, name + ".weight", w.to(dtype).contiguous())
    linear_names = {n for n, _ in linears}
    for pname, p in list(model.named_parameters()):
        if pname.rpartition(".")[0] in linear_names or pname == "encoder.embed_tokens.weight":
            continue
        key = names.get(pname)
        if key is None:
            raise ModelFileError(f"{view.path}: key for '{pname}' is missing; the file is not a complete umT5 encoder")
        t = view.get(key)
        if tuple(t.shape) != tuple(p.shape):
            raise ModelFileError(f"{view.path}: '{key}' has shape {tuple(t.shape)}, expected {tuple(p.shape)}")
        _set_param(model, pname, t.to(dtype).contiguous())
        used.add(key)
    model.encoder.embed_tokens = model.shared          # tied, as in T5
    left = [k for k in view.shapes if k not in used and k not in ignore]
    if left:
        warn(f"{os.path.basename(view.path)}: {len(left)} tensors not used by the umT5 encoder (first: {left[0]})")


class TextEncoder:
    """Prompts -> Wan text context `[B, text_len, dim]` plus each prompt's true token count."""

    def __init__(self, model: nn.Module, tokenizer: T5Tokenizer, device: torch.device, dtype: torch.dtype,
                 precision: str, source: str = ""):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.device, self.dtype, self.precision, self.source = torch.device(device), dtype, precision, source
        self._residency = HostResidency(self._body())
        self._streamed: StreamedBlocks | None = None     # made on the first streamed encode
        self.streaming = "auto"      # auto | on | off: what services.encode_text asks the plan for

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    def sizes(self) -> dict:
        """Bytes of the parts that travel: all blocks, the largest block, the final norm (for the plan)."""
        def nbytes(m: nn.Module) -> int:
            return sum(t.numel() * t.element_size() for t in list(m.parameters()) + list(m.buffers()))

        blocks = [nbytes(b) for b in self.model.encoder.block]
        return {"blocks": sum(blocks), "largest_block": max(blocks, default=0),
                "norm": nbytes(self.model.encoder.final_layer_norm), "layers": len(blocks)}

    @property
    def on_device(self) -> bool:
        """Whether the blocks sit on the (non-CPU) compute device now: a kept, resident encoder."""
        return self.device.type != "cpu" and self._residency.device == self.device

    def _body(self) -> list[nn.Module]:
        return [self.model.encoder.block, self.model.encoder.final_layer_norm]

    def to(self, device) -> "TextEncoder":
        """Move the transformer blocks (not the CPU-resident vocabulary table); back on the CPU the
        kept host weights are re-bound (wan/residency.py), nothing is copied back."""
        self._residency.to(device)
        return self

    def offload(self) -> "TextEncoder":
        return self.to("cpu")

    def tokenize(self, prompts: list[str], text_len: int = TEXT_LEN) -> list[list[int]]:
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            raise ValueError("prompts: give at least one prompt (an empty string is allowed)")
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise TypeError(f"prompt {i}: expected text, got {type(p).__name__}")
        ids = [self.tokenizer.encode(p, text_len) for p in prompts]
        vocab = self.model.config.vocab_size
        bad = next((t for row in ids for t in row if t >= vocab), None)
        if bad is not None:
            raise ModelFileError(f"{self.source}: tokenizer ({self.tokenizer.source}) produced id {bad} but the model "
                                 f"has {vocab} embeddings; the tokenizer does not belong to this text encoder")
        return ids

    @torch.no_grad()
    def encode(self, prompts: list[str], text_len: int = TEXT_LEN, stream: bool = False
               ) -> tuple[torch.Tensor, list[int]]:
        """All prompts in one batch (e.g. [positive, negative]) -> ([B, text_len, dim], true lengths).

        stream=True: the blocks stay on the host and visit the device one at a time (a resident
        encoder, already on the device, just runs there)."""
        ids = self.tokenize(prompts, text_len)
        lengths = [len(r) for r in ids]
        b, longest = len(ids), max(lengths)
        input_ids = torch.full((b, longest), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros((b, longest), dtype=torch.long)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        emb = self.model.shared(input_ids.to(self.model.shared.weight.device)).to(self.device, self.dtype)
        if stream and not self.on_device:
            states = self._run_streamed(emb, mask)
        else:
            self.to(self.device)
            states = self.model(inputs_embeds=emb, attention_mask=mask.to(self.device)).last_hidden_state
        out = states.new_zeros((b, text_len, states.shape[-1]))
        for i, n in enumerate(lengths):
            out[i, :n] = states[i, :n]
        return out, lengths

    def _run_streamed(self, emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The encoder forward with one block on the device at a time (the final norm, 8 KB, stays
        there for the call). The body first goes to its kept host tensors, which the blocks re-bind."""
        self._residency.to("cpu")
        if self._streamed is None:
            self._streamed = StreamedBlocks(list(self.model.encoder.block))
        norm = HostResidency([self.model.encoder.final_layer_norm])
        norm.to(self.device)
        try:
            with self._streamed.streaming(self.device):
                out = self.model(inputs_embeds=emb, attention_mask=mask.to(self.device)).last_hidden_state
        finally:
            norm.to("cpu")
        return out


def load_text_encoder(path: str, precision: str = "bf16", device=None, tokenizer_path: str | None = None,
                      compute_dtype: torch.dtype | None = None) -> TextEncoder:
    """Load a umT5 encoder file (ComfyUI or Wan layout) with its tokenizer.

    precision: bf16 | fp16 | fp32 | fp8_e4m3fn (block Linears stored fp8, computed in bf16 or
    `compute_dtype`). Weights are loaded to CPU; `encode` moves the blocks to `device`.
    """
    from transformers import UMT5EncoderModel

    if precision not in PRECISIONS:
        raise ValueError(f"precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    dtype, quant_mode = PRECISIONS[precision]
    dtype = compute_dtype or dtype
    device = torch.device(device) if device is not None else torch.device("cpu")
    with open_checkpoint(path) as view:
        det = detect_text_encoder(view.shapes)
        if det is None:
            first = next(iter(view.shapes), "<no tensors>")
            raise ModelFileError(f"{path}: not a umT5 text encoder (no '{COMFY_ANCHOR}' or Wan '{WAN_ANCHOR}'; first "
                                 f"key '{first}'). Pick umt5_xxl_fp16.safetensors / "
                                 "umt5_xxl_fp8_e4m3fn_scaled.safetensors")
        names, _, prefix = _hf_names(view.shapes)
        spiece = next((k for k in (prefix + SPIECE_TENSOR, SPIECE_TENSOR) if k in view), None)
        tokenizer = find_tokenizer(path, view.get(spiece) if spiece else None, tokenizer_path)
        if tokenizer.vocab_size > det["vocab_size"]:
            raise ModelFileError(f"{path}: tokenizer ({tokenizer.source}) has {tokenizer.vocab_size} tokens, the "
                                 f"model only {det['vocab_size']}; they do not belong together")
        with torch.device("meta"):
            model = UMT5EncoderModel(umt5_config(det))
        ignore = {p + k for p in {prefix, ""} for k in IGNORED_KEYS}
        work = device if device.type == "cuda" else torch.device("cpu")
        _load_weights(model, view, names, dtype, quant_mode, ignore, work)
        if DEMO_KEY in view.metadata:
            warn(f"{os.path.basename(path)}: {view.metadata[DEMO_KEY]}")
    if dtype == torch.float16:
        info("umT5 in fp16 can overflow on some prompts; bf16 is the safe choice")
    storage = "fp8 block weights" if quant_mode else str(dtype).removeprefix("torch.")
    load(f"umT5 text encoder {os.path.basename(path)} ({det['layout']} layout): {det['num_layers']} layers, "
         f"dim {det['d_model']}, {storage}, compute {str(dtype).removeprefix('torch.')}; tokenizer {tokenizer.source}")
    return TextEncoder(model, tokenizer, device, dtype, precision, path)
