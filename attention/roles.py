"""Which attention mode each role of the DiT uses: self-attention, text/image cross, audio cross.

Quantized attention pays off only where the key sequence is long. Wan's self-attention has
L = 32 760-37 800 keys at 480p/81 frames; the cross-attentions have 512 text keys, 257 CLIP image
keys, and InfiniteTalk's audio attention 32 keys per latent frame per speaker. At Lk <= 512 an
attention call costs under 2% of a self-attention call, so quantizing it saves nothing, while its
quantization error would reach every token (short, peaky softmax rows over text tokens). So:

  * self  = the requested mode;
  * cross = audio = the requested mode when it is an unquantized kernel (sdpa, flash_attn_2,
    flash_attn_3: same numerics class as sdpa), else sdpa. `auto` keeps sdpa there too.
"""
from __future__ import annotations

from .capabilities import ALL_MODES

ROLES = ("self", "cross", "audio")
UNQUANTIZED_MODES = ("sdpa", "flash_attn_2", "flash_attn_3")


def modes_for_model(requested: str) -> dict[str, str]:
    """{"self": ..., "cross": ..., "audio": ...} for a user's attention choice (see module doc)."""
    if requested not in ALL_MODES:
        raise ValueError(f"unknown attention mode {requested!r}; known modes: {', '.join(ALL_MODES)}")
    short = requested if requested in UNQUANTIZED_MODES else "sdpa"
    return {"self": requested, "cross": short, "audio": short}
