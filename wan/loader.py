"""Load the Wan2.1 / InfiniteTalk transformer and the Wan VAE from every checkpoint layout in use.

The model is built on the meta device and filled one tensor at a time from memory-mapped files,
so a 14B model never needs two copies in RAM. Quantization contract (quant/ relies on it):
`module_transform(model_on_meta)` runs before filling (e.g. swaps nn.Linear for QuantLinear).
Tensors for a module whose class has `accepts_raw_state = True` are passed through as stored,
with their companions (`scale_weight`, `weight_scale`, `comfy_quant`, ...), to its
`_load_from_state_dict`; tensors for plain modules are dequantized and cast to the dtype the
model's dtype policy gives that parameter.
"""
from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Mapping
from typing import Callable

import torch
import torch.nn as nn

from ..log import load, warn
from .config import WanConfig
from .detect import (NotThisModel, count_params, describe_transformer, detect_audio_config, detect_infos, dtype_label,
                     is_audio_key)
from .formats import (QUANT_COMPANIONS, LayoutError, is_diffusers_layout, normalize_transformer_keys,
                      split_key)
from .formats_vae import normalize_vae_keys, vae_structure
from .safetensors_io import ModelFileError, TensorFiles, resolve_checkpoint_files

FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)
BASE = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# ----------------------------------------------------------------------------- normalized state
class NormalizedState(Mapping):
    """Lazy mapping original key -> tensor over one or more files (data read on `[key]`)."""

    def __init__(self):
        self.entries: dict[str, tuple[TensorFiles, str]] = {}
        self.literals: dict[str, torch.Tensor] = {}
        self.detection: dict = {}
        self._sources: list[TensorFiles] = []

    def add(self, source: TensorFiles, mapping: dict[str, str], literals: dict[str, torch.Tensor] | None = None):
        """Add {original key: stored key} of `source` (a key already present is an error)."""
        if source not in self._sources:
            self._sources.append(source)
        for name, stored in mapping.items():
            if name in self.entries:
                raise ModelFileError(f"{source.infos[stored][0]}: tensor '{stored}' duplicates '{name}' of "
                                     f"{self.where(name)}; pass each model file once")
            self.entries[name] = (source, stored)
        self.literals.update(literals or {})

    def where(self, key: str) -> str:
        """The file a key comes from (for error messages)."""
        if key in self.entries:
            src, stored = self.entries[key]
            return src.infos[stored][0]
        return self.files[0] if self.files else "?"

    def entries_as_mapping(self) -> dict[str, str]:
        return {k: stored for k, (_, stored) in self.entries.items()}

    def stored_key(self, key: str) -> str:
        return self.entries[key][1] if key in self.entries else key

    @property
    def files(self) -> list[str]:
        return [f for s in self._sources for f in s.files]

    def infos(self) -> dict[str, tuple]:
        out = {k: src.infos[stored][1:] for k, (src, stored) in self.entries.items()}
        out.update({k: (torch.uint8, tuple(v.shape)) for k, v in self.literals.items()})
        return out

    def __getitem__(self, key: str) -> torch.Tensor:
        if key in self.literals:
            return self.literals[key]
        src, stored = self.entries[key]
        return src.get(stored)

    def __iter__(self):
        yield from self.entries
        yield from (k for k in self.literals if k not in self.entries)

    def __len__(self) -> int:
        return len(self.entries) + sum(1 for k in self.literals if k not in self.entries)

    def __contains__(self, key) -> bool:
        return key in self.entries or key in self.literals

    def close(self) -> None:
        for s in self._sources:
            s.close()

    def __enter__(self) -> "NormalizedState":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _what_is(files: TensorFiles) -> str:
    """Short description of an unusable file (for 'not a transformer' errors)."""
    raw = {k: v[1:] for k, v in files.infos.items()}
    try:
        det = detect_infos(raw, next(iter(files.metadata.values()), {}))
    except NotThisModel as e:
        return f"an unusable model ({e})"
    if det is None:
        first = next(iter(files.infos), "none")
        return f"an unknown layout (first key '{first}', {len(files.infos)} tensors)"
    return f"a {det['kind']} file"


def _open(paths) -> TensorFiles:
    return TensorFiles(resolve_checkpoint_files(paths))


def _normalize_into(state: NormalizedState, files: TensorFiles, *, audio_only: bool = False) -> None:
    stored_by_file: dict[str, list[str]] = {}
    for k, (f, _, _) in files.infos.items():
        stored_by_file.setdefault(f, []).append(k)
    diffusers = is_diffusers_layout(k.split("diffusion_model.")[-1] for k in files.infos)
    ignored: list[str] = []
    for f, keys in stored_by_file.items():
        try:
            km = normalize_transformer_keys(keys, files.metadata[f], diffusers=diffusers)
        except LayoutError as e:
            raise ModelFileError(f"{f}: {e}") from None
        mapping = km.keys
        if audio_only:
            ignored += [k for k in mapping if not is_audio_key(k)]
            mapping = {k: v for k, v in mapping.items() if is_audio_key(k)}
        ignored += km.ignored
        state.add(files, mapping, km.literals)
        if km.layout != "original" or km.kijai_audio:
            state.detection.setdefault("layouts", []).append(km.layout + (" +kijai" if km.kijai_audio else ""))
    if ignored:
        warn(f"{files.files[0]}: ignored {len(ignored)} tensors that are not part of the "
             f"{'InfiniteTalk audio modules' if audio_only else 'transformer'} (e.g. '{ignored[0]}')")


def read_transformer_state(path_or_paths, *, audio_path=None) -> tuple[WanConfig, NormalizedState]:
    """(WanConfig, lazy mapping of original keys -> tensors) for a DiT in any layout (+ audio file).

    `path_or_paths`: a file, an `*.safetensors.index.json`, one shard of a sharded checkpoint,
    or a list of files. `audio_path`: the InfiniteTalk / MultiTalk audio file when separate.
    The state keeps the files open (memory-mapped): close it (or use it as a context manager).
    """
    files = _open(path_or_paths)
    state = NormalizedState()
    _normalize_into(state, files)
    main = files.files[0]
    try:
        det = describe_transformer(state.infos(), files.metadata[main], tuple(state.literals))
    except NotThisModel as e:
        raise ModelFileError(f"{main}: not a usable Wan2.1 transformer: {e}") from None
    if det is None or det["kind"] == "infinitetalk-audio":
        what = _what_is(files) if det is None else "the InfiniteTalk audio modules only"
        hint = ("load it with the VAE loader" if "vae" in what else
                "give it as the audio / model-patch file next to a Wan2.1 I2V base model"
                if det is not None else "pick a Wan2.1 diffusion model file")
        raise ModelFileError(f"{main}: not a Wan2.1 transformer: this is {what}; {hint}")
    config: WanConfig = det["config"]
    if audio_path is not None:
        config = _add_audio_file(state, config, audio_path, main)
        det = describe_transformer(state.infos(), files.metadata[main], tuple(state.literals))
        det["config"] = config
    state.detection.update(det)
    return config, state


def _add_audio_file(state: NormalizedState, config: WanConfig, audio_path, main: str) -> WanConfig:
    """Merge the InfiniteTalk audio file into `state` (its modules win over any in the base file)."""
    afiles = _open(audio_path)
    audio_state = NormalizedState()
    _normalize_into(audio_state, afiles, audio_only=True)
    afile = afiles.files[0]
    try:
        adet = describe_transformer(audio_state.infos(), {})
    except NotThisModel as e:
        raise ModelFileError(f"{afile}: not a usable InfiniteTalk audio file: {e}") from None
    if adet is None:
        raise ModelFileError(f"{afile}: no InfiniteTalk audio modules (audio_proj.*, blocks.N.audio_cross_attn.*) "
                             f"in this file; it is {_what_is(afiles)}")
    if adet["dim"] != config.dim or adet["layers"] != config.num_layers:
        raise ModelFileError(f"{afile}: audio modules are for dim {adet['dim']} x {adet['layers']} blocks, the "
                             f"transformer {main} has dim {config.dim} x {config.num_layers}; use the audio file "
                             "made for this base model")
    if config.has_audio:
        warn(f"{main} already holds InfiniteTalk audio modules; using those of {afile} instead")
        for k in [k for k in state.entries if is_audio_key(k)]:
            del state.entries[k]
    state.add(afiles, audio_state.entries_as_mapping(), audio_state.literals)
    return config.with_audio(detect_audio_config(audio_state.infos()))


# ----------------------------------------------------------------------------- filling
def _companions(state: NormalizedState, by_module: dict[str, list[str]], mod: str) -> dict[str, torch.Tensor]:
    return {leaf: state[f"{mod}.{leaf}" if mod else leaf] for leaf in by_module.get(mod, ())
            if leaf in QUANT_COMPANIONS}


def _plain_tensor(state: NormalizedState, key: str, module: nn.Module, comp: dict, dtype: torch.dtype,
                  device) -> torch.Tensor:
    """The stored tensor as a plain parameter: dequantized if needed, cast to `dtype`, copied to `device`."""
    t = state[key]
    mod, leaf = split_key(key)
    if t.dtype in BASE and not (comp and leaf == "weight"):
        return t.to(device=device, dtype=dtype, copy=True)
    if isinstance(module, nn.Linear) and leaf == "weight":
        from ..quant.incoming import QuantFormatError, dequantize_incoming, parse_linear_state
        try:
            inc = parse_linear_state({"weight": t, **comp}, mod + ".", module.out_features, module.in_features)
            w = dequantize_incoming(inc, module.in_features)
        except QuantFormatError as e:
            raise ModelFileError(f"{state.where(key)}: {e}") from None
        return w.to(device=device, dtype=dtype)
    if t.dtype in FP8 or t.dtype in BASE:
        w = t.float()
        scale = comp.get("scale_weight", comp.get("weight_scale")) if leaf == "weight" else None
        if scale is not None:
            s = scale.float().flatten()
            w = w * (s.reshape(-1, *([1] * (w.dim() - 1))) if s.numel() == w.shape[0] else s.reshape(()))
        return w.to(device=device, dtype=dtype)
    raise ModelFileError(f"{state.where(key)}: tensor '{state.stored_key(key)}' is {t.dtype}, which a "
                         f"{type(module).__name__} cannot use; the file is not a model this pack reads")


def _shape_error(state: NormalizedState, key: str, got, want, kind: str) -> ModelFileError:
    return ModelFileError(f"{state.where(key)}: tensor '{state.stored_key(key)}' has shape {tuple(got)}, the "
                          f"{kind} model expects {tuple(want)}; the file is for a different model size or variant")


@torch.no_grad()
def fill_model(model: nn.Module, state: NormalizedState, device="cpu", kind: str = "detected") -> nn.Module:
    """Assign every parameter of a meta-device `model` from `state`, one tensor at a time (strict)."""
    device = torch.device(device)
    by_module: dict[str, list[str]] = {}
    for k in state:
        mod, leaf = split_key(k)
        by_module.setdefault(mod, []).append(leaf)
    consumed: set[str] = set()
    missing: list[str] = []
    raw_prefixes: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(p) for p in raw_prefixes):
            continue
        prefix = name + "." if name else ""
        if getattr(type(module), "accepts_raw_state", False):
            raw_prefixes.append(prefix)
            keys = [prefix + leaf for leaf in by_module.get(name, ())]
            local = {k: state[k].to(device, copy=True) for k in keys}
            unexpected: list[str] = []
            try:
                module._load_from_state_dict(local, prefix, {}, True, missing, unexpected, [])
            except ValueError as e:   # QuantFormatError names the key; add the file
                raise ModelFileError(f"{state.where(prefix + 'weight')}: {e}") from None
            if unexpected:
                raise ModelFileError(f"{state.where(unexpected[0])}: unexpected tensor "
                                     f"'{state.stored_key(unexpected[0])}' for {type(module).__name__} {name}")
            consumed.update(keys)
            del local
            continue
        comp = _companions(state, by_module, name)
        for pname, p in list(module._parameters.items()) + [(b, module._buffers[b]) for b in module._buffers
                                                             if b not in module._non_persistent_buffers_set]:
            if p is None:
                continue
            key = prefix + pname
            if key not in state:
                missing.append(key)
                continue
            t = _plain_tensor(state, key, module, comp if pname == "weight" else {}, p.dtype, device)
            if tuple(t.shape) != tuple(p.shape):
                raise _shape_error(state, key, t.shape, p.shape, kind)
            if pname in module._parameters:
                module._parameters[pname] = nn.Parameter(t, requires_grad=p.requires_grad)
            else:
                module._buffers[pname] = t
            consumed.add(key)
        if comp and any(pname == "weight" for pname in module._parameters):
            consumed.update(f"{prefix}{leaf}" for leaf in comp)
    if missing:
        raise ModelFileError(f"{state.files[0]}: missing tensor '{missing[0]}' (and {len(missing) - 1} more) for a "
                             f"{kind} model; the file is incomplete or a different variant")
    extra = [k for k in state if k not in consumed]
    if extra:
        raise ModelFileError(f"{state.where(extra[0])}: unexpected tensor '{state.stored_key(extra[0])}' (and "
                             f"{len(extra) - 1} more) for a {kind} model; is it a different variant or a LoRA?")
    return model


# ----------------------------------------------------------------------------- public loaders
def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


def load_transformer(path_or_paths, *, audio_path=None, dtype: torch.dtype = torch.bfloat16, device="cpu",
                     module_transform: Callable[[nn.Module], object] | None = None, loras=()) -> nn.Module:
    """Build a WanModel from any supported layout (see read_transformer_state) and fill it.

    `loras`: [(path, strength)] merged after filling (quant.merge_loras; quantized layers are
    dequantized, merged and re-quantized).
    """
    from .model import WanModel, apply_dtype_policy

    t0 = time.perf_counter()
    config, state = read_transformer_state(path_or_paths, audio_path=audio_path)
    det = state.detection
    try:
        with torch.device("meta"):
            model = WanModel(config)
        apply_dtype_policy(model, dtype)
        if module_transform is not None:
            out = module_transform(model)
            model = out if isinstance(out, nn.Module) else model
        fill_model(model, state, device, kind=det["kind"])
    finally:
        state.close()
    if loras:
        from ..quant.lora import merge_loras
        merge_loras(model, list(loras))
    model.wanfp4_source = {k: v for k, v in det.items() if k != "config"} | {"files": state.files}
    demo = " [demo: random weights]" if any("wanfp4_demo" in m for m in state._sources[0].metadata.values()) else ""
    load(f"{os.path.basename(state.files[0])}{' + ' + os.path.basename(str(audio_path)) if audio_path else ''}: "
         f"{det['kind']} dim {config.dim} x {config.num_layers} blocks, stored {det['format']}"
         f"{' (' + det['quant_layout'] + ')' if det.get('quant_layout') else ''}, {_count(det['params'])} params "
         f"-> {str(dtype).replace('torch.', '')} on {device} in {time.perf_counter() - t0:.1f} s{demo}")
    return model


def read_vae_state(path) -> tuple[dict, NormalizedState]:
    """(VAE structure dict, lazy original-name state) of a Wan VAE (.safetensors or .pth)."""
    files = _open(path)
    keys, layout = normalize_vae_keys(list(files.infos))
    if not layout:
        raise ModelFileError(f"{files.files[0]}: not a Wan VAE: this is {_what_is(files)}; pick the Wan2.1 VAE "
                             "(wan_2.1_vae.safetensors or Wan2.1_VAE.pth)")
    state = NormalizedState()
    state.add(files, keys)
    try:
        structure = vae_structure(state.infos())
    except NotThisModel as e:
        raise ModelFileError(f"{files.files[0]}: {e}") from None
    state.detection.update({"kind": "wan-vae", "layout": layout, **structure})
    return structure, state


def load_vae(path, *, dtype: torch.dtype = torch.float32, device="cpu") -> nn.Module:
    """The Wan VAE from ComfyUI / original (.pth, weights_only) / diffusers layouts, on `device` in `dtype`."""
    import dataclasses

    t0 = time.perf_counter()
    structure, state = read_vae_state(path)
    from .vae import VAEConfig, WanVAE
    fields = {f.name for f in dataclasses.fields(VAEConfig)}
    config = VAEConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in structure.items()
                          if k in fields and v is not None})
    try:
        with torch.device("meta"):
            vae = WanVAE(config)
        for p in vae.parameters():
            p.data = p.data.to(dtype)
        fill_model(vae, state, device, kind="Wan VAE")
    finally:
        state.close()
    load(f"{os.path.basename(state.files[0])}: Wan VAE ({state.detection['layout']} layout, dim {config.dim}) -> "
         f"{str(dtype).replace('torch.', '')} on {device} in {time.perf_counter() - t0:.1f} s")
    return vae


def detect_file(path) -> dict:
    """What `path` (a file, an index, one shard, or a list) holds, from keys and shapes; for inspect.

    Raises ModelFileError when the file is unreadable or no detector recognises it.
    """
    files = _open(path)
    try:
        raw = {k: v[1:] for k, v in files.infos.items()}
        meta: dict = {}
        for m in files.metadata.values():
            meta.update(m)
        try:
            det = detect_infos(raw, meta)
        except NotThisModel as e:
            raise ModelFileError(f"{files.files[0]}: {e}") from None
        if det is None:
            first = next(iter(files.infos), "none")
            raise ModelFileError(f"{files.files[0]}: unknown model layout (first key '{first}', "
                                 f"{len(files.infos)} tensors); not a Wan2.1 transformer, InfiniteTalk, VAE or encoder")
        det = dict(det)
        det.pop("config", None)
        if det.get("format") is None or det.get("params") is None:   # encoder detectors report sizes only
            dtypes = Counter(dtype_label(v[0]) for v in raw.values())
            det.setdefault("dtypes", dict(dtypes))
            det["format"] = det.get("format") or (next(iter(dtypes)) if len(dtypes) == 1 else "mixed")
            det["params"] = det.get("params") or count_params(raw)
        if len(files.files) > 1:
            det["shards"] = len(files.files)
        if "wanfp4_demo" in meta:
            det["demo"] = True
        return det
    finally:
        files.close()
