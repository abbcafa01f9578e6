"""One logger for the pack, with the tags users grep for: [LOAD], [CACHE], [INFO], [WARN].

Lines go to the `wanfp4` logger (ComfyUI shows its root logger's output in the console) and,
when nothing configured logging, to stderr so the CLI and tests see them too.
"""
from __future__ import annotations

import logging
import sys

_logger = logging.getLogger("wanfp4")
if not _logger.handlers:
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter("%(message)s"))
    _logger.addHandler(_handler)
    _logger.setLevel(logging.INFO)
    _logger.propagate = False


def _emit(level: int, tag: str, msg: str) -> str:
    line = f"[{tag}] {msg}"
    _logger.log(level, line)
    return line


def info(msg: str) -> str:
    return _emit(logging.INFO, "INFO", msg)


def warn(msg: str) -> str:
    return _emit(logging.WARNING, "WARN", msg)


def load(msg: str) -> str:
    return _emit(logging.INFO, "LOAD", msg)


def cache(msg: str) -> str:
    return _emit(logging.INFO, "CACHE", msg)


def get_logger() -> logging.Logger:
    return _logger
