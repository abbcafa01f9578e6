"""The umT5 tokenizer: found inside ComfyUI's file or in a folder next to the weights.

ComfyUI's `umt5_xxl_*.safetensors` carry the sentencepiece model as a uint8 tensor named
`spiece_model`; Wan's original `models_t5_umt5-xxl-enc-bf16.pth` sits next to a `google/umt5-xxl`
folder holding `spiece.model` and/or `tokenizer.json`. Both give the same ids for a prompt
(sentencepiece Unigram), so one small class wraps either, and the search order is written down in
one place so the error for a missing tokenizer can list exactly where it looked.
"""
from __future__ import annotations

import html
import os
import re

import torch

from .safetensors_io import ModelFileError

SPIECE_TENSOR = "spiece_model"
TOKENIZER_FILES = ("spiece.model", "tokenizer.json")
# Folders (relative to the weights file's folder) where Wan / Hugging Face put the tokenizer.
TOKENIZER_SUBDIRS = ("google/umt5-xxl", "umt5-xxl", "umt5_xxl", "tokenizer", ".")


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning ('whitespace' mode): fix mojibake (ftfy, if installed), unescape
    HTML entities twice, collapse whitespace runs, strip."""
    try:
        import ftfy  # optional: Wan uses it; without it only mojibake repair is skipped
        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class T5Tokenizer:
    """Prompt -> token ids ending with `</s>` (no BOS, like T5), truncated to `max_len`."""

    def __init__(self, encode_fn, eos_id: int, pad_id: int, vocab_size: int, source: str):
        self._encode = encode_fn
        self.eos_id, self.pad_id, self.vocab_size, self.source = eos_id, pad_id, vocab_size, source

    @classmethod
    def from_spiece_bytes(cls, data: bytes, source: str) -> "T5Tokenizer":
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(data)
        except Exception as e:  # sentencepiece raises RuntimeError/OSError with its own text
            raise ModelFileError(f"{source}: not a valid sentencepiece model ({e}); re-download the file") from None
        eos = sp.eos_id()
        if eos < 0:
            raise ModelFileError(f"{source}: the sentencepiece model has no end-of-sequence token; "
                                 "it is not a T5 tokenizer")
        pad = sp.pad_id() if sp.pad_id() >= 0 else 0
        return cls(lambda text: list(sp.encode(text)), eos, pad, sp.get_piece_size(), source)

    @classmethod
    def from_tokenizer_json(cls, path: str) -> "T5Tokenizer":
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_file(path)
        except Exception as e:
            raise ModelFileError(f"{path}: cannot be read as a tokenizer.json ({e}); re-download it") from None
        eos = tok.token_to_id("</s>")
        if eos is None:
            raise ModelFileError(f"{path}: has no '</s>' token; it is not a T5 tokenizer")
        pad = tok.token_to_id("<pad>")
        return cls(lambda text: tok.encode(text, add_special_tokens=False).ids, eos, 0 if pad is None else pad,
                   tok.get_vocab_size(), path)

    def encode(self, text: str, max_len: int = 512) -> list[int]:
        """Cleaned prompt -> ids + [eos]; long prompts keep their first max_len-1 tokens and the eos."""
        ids = self._encode(clean_prompt(text))[: max_len - 1]
        return ids + [self.eos_id]


def tokenizer_search_paths(model_path: str) -> list[str]:
    """Every file looked at, in order, for a tokenizer beside `model_path`."""
    base = os.path.dirname(os.path.abspath(model_path))
    return [os.path.normpath(os.path.join(base, sub, name)) for sub in TOKENIZER_SUBDIRS for name in TOKENIZER_FILES]


def tokenizer_from_path(path: str) -> T5Tokenizer:
    """An explicit tokenizer: a `spiece.model` / `tokenizer.json` file or a folder holding one."""
    candidates = [os.path.join(path, n) for n in TOKENIZER_FILES] if os.path.isdir(path) else [path]
    for c in candidates:
        if os.path.isfile(c):
            if c.endswith(".json"):
                return T5Tokenizer.from_tokenizer_json(c)
            with open(c, "rb") as fh:
                return T5Tokenizer.from_spiece_bytes(fh.read(), c)
    raise ModelFileError(f"tokenizer {path}: no {' or '.join(TOKENIZER_FILES)} found there")


def find_tokenizer(model_path: str, spiece: torch.Tensor | None = None,
                   tokenizer_path: str | None = None) -> T5Tokenizer:
    """Explicit path first, then the `spiece_model` tensor of the weights file, then the folders beside it."""
    if tokenizer_path:
        return tokenizer_from_path(tokenizer_path)
    if spiece is not None:
        data = spiece.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
        return T5Tokenizer.from_spiece_bytes(data, f"{model_path} [{SPIECE_TENSOR}]")
    searched = tokenizer_search_paths(model_path)
    for p in searched:
        if os.path.isfile(p):
            return tokenizer_from_path(p)
    raise ModelFileError(
        f"{model_path}: no umT5 tokenizer found. Looked for a '{SPIECE_TENSOR}' tensor inside the file (ComfyUI's "
        f"umt5_xxl_*.safetensors have one) and for these files: {', '.join(searched)}. Fix: use ComfyUI's "
        "umt5_xxl_fp16.safetensors / umt5_xxl_fp8_e4m3fn_scaled.safetensors, or put the google/umt5-xxl "
        "tokenizer folder (spiece.model or tokenizer.json) next to the weights"
    )
