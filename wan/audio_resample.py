"""Band-limited resampling in plain torch (Kaiser-windowed sinc), so the pack needs no torchaudio.

Why our own: torchaudio's wheels lag behind torch (see comfyui_host.md) and librosa pulls in numba.
Output sample j sits at input time j * orig / new; it is the input convolved with a low-pass
sinc (cut-off just below the smaller Nyquist) evaluated there. For rates whose reduced ratio is
small (all the usual 8k..192k pairs) the kernel has only `new` distinct phases, computed once
and applied with one strided conv1d (polyphase). Other ratios evaluate the kernel per output
sample in bounded chunks. Both paths compute the same sum.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ZERO_CROSSINGS = 32        # kernel half-width in zero crossings of the low-pass sinc
ROLLOFF = 0.945            # pass-band edge as a fraction of the lower Nyquist
KAISER_BETA = 14.0         # ~ -140 dB side lobes
MAX_POLYPHASE_RATIO = 1024 # reduced rates above this use the direct path
_DIRECT_CHUNK = 1 << 14    # output samples per block in the direct path


def _kernel(t: torch.Tensor, cutoff: float, half_width: float) -> torch.Tensor:
    """Windowed sinc at input-sample offsets `t`; `cutoff` in cycles per input sample."""
    x = t * (2.0 * cutoff)
    h = (2.0 * cutoff) * torch.special.sinc(x)
    inside = (t.abs() <= half_width)
    ratio = (t / half_width).clamp(-1.0, 1.0)
    window = torch.special.i0(KAISER_BETA * torch.sqrt(1.0 - ratio * ratio)) / torch.special.i0(
        torch.tensor(KAISER_BETA, dtype=t.dtype)
    )
    return torch.where(inside, h * window, torch.zeros_like(h))


def resampled_length(num_samples: int, orig_sr: int, new_sr: int) -> int:
    return -(-num_samples * new_sr // orig_sr)  # ceil


def _check_rate(sr, name: str) -> int:
    if isinstance(sr, bool) or not isinstance(sr, (int, float)) or sr <= 0 or int(sr) != sr:
        raise ValueError(f"{name}: invalid sample rate {sr!r}; expected a positive whole number of Hz")
    return int(sr)


def resample(wave: torch.Tensor, orig_sr: int, new_sr: int, *, force_direct: bool = False) -> torch.Tensor:
    """Resample along the last axis; any leading shape. Returns float32 (float64 stays float64)."""
    orig_sr = _check_rate(orig_sr, "orig_sr")
    new_sr = _check_rate(new_sr, "new_sr")
    if not wave.is_floating_point() or wave.dtype in (torch.float16, torch.bfloat16):
        wave = wave.float()
    if orig_sr == new_sr:
        return wave.clone()
    g = math.gcd(orig_sr, new_sr)
    up, down = new_sr // g, orig_sr // g            # output phases, input stride
    lead = wave.shape[:-1]
    x = wave.reshape(-1, wave.shape[-1])
    n = x.shape[-1]
    n_out = resampled_length(n, orig_sr, new_sr)
    if n == 0:
        return wave.new_zeros(*lead, 0)
    cutoff = 0.5 * ROLLOFF * min(1.0, up / down)     # cycles per input sample
    half_width = ZERO_CROSSINGS / (2.0 * cutoff)    # in input samples
    if not force_direct and max(up, down) <= MAX_POLYPHASE_RATIO:
        y = _polyphase(x, up, down, cutoff, half_width, n_out)
    else:
        y = _direct(x, orig_sr, new_sr, cutoff, half_width, n_out)
    return y.reshape(*lead, n_out)


def _polyphase(x, up, down, cutoff, half_width, n_out):
    """y[k*up + p] = sum_m x[k*down + m] * h(p*down/up - m): one conv1d with stride `down`."""
    w = int(math.ceil(half_width))
    taps = torch.arange(-w, down + w + 1, dtype=torch.float64)              # m = q - w
    phases = torch.arange(up, dtype=torch.float64) * down / up             # p*down/up
    kernel = _kernel(phases[:, None] - taps[None, :], cutoff, half_width)   # weight[p, q]
    kernel = kernel.to(x.dtype).unsqueeze(1)                                # [up, 1, K]
    blocks = -(-n_out // up)
    need = (blocks - 1) * down + kernel.shape[-1]
    xp = F.pad(x.unsqueeze(1), (w, max(0, need - w - x.shape[-1])))        # xp[i] = x[i - w]
    out = F.conv1d(xp, kernel, stride=down)                                 # out[b, p, k]
    out = out[..., :blocks].transpose(1, 2).reshape(x.shape[0], -1)
    return out[:, :n_out]


def _direct(x, orig_sr, new_sr, cutoff, half_width, n_out):
    """Same sum, kernel evaluated per output sample, in blocks so memory stays bounded."""
    w = int(math.ceil(half_width))
    offs = torch.arange(-w, w + 2, dtype=torch.float64)
    xp = F.pad(x, (w + 1, w + 2))
    out = x.new_empty(x.shape[0], n_out)
    for s in range(0, n_out, _DIRECT_CHUNK):
        j = torch.arange(s, min(n_out, s + _DIRECT_CHUNK), dtype=torch.int64)
        base = (j * orig_sr) // new_sr                                         # floor(t_j)
        frac = (j * orig_sr - base * new_sr).to(torch.float64) / new_sr        # t_j - base
        idx = base[:, None] + offs.to(torch.int64)[None, :]                    # input indices
        kern = _kernel(frac[:, None] - offs[None, :], cutoff, half_width).to(x.dtype)
        gathered = xp[:, (idx + w + 1)]                                        # [B, J, taps]
        out[:, s:s + j.numel()] = (gathered * kern[None]).sum(-1)
    return out
