"""Block swap micro-bench: N blocks of the 14B InfiniteTalk config (random weights), one DiT forward at a
given shape, swap 0 vs all N blocks, ms per forward and peak VRAM; also prints the activation peak
predicted by wan/hw_tuning.py next to the measured one (to calibrate its ACT_* coefficients).

    python -m wanfp4.bench.block_swap --blocks 8 --mode fp8_e4m3fn_fast          # on the GPU
    python -m wanfp4.bench.block_swap --blocks 8 --mode fp4_scaled --attention sageattn_3_fp8
    python -m wanfp4.bench.block_swap --tiny --device cpu                        # smoke test

Target (issue 7): all blocks swapped costs <= 10% over resident for fp8 / FP4 weights, <= 25% for bf16.
"""
from __future__ import annotations

import argparse
from dataclasses import replace

import torch


def main(argv=None):
    from ..quant import quantize_model
    from ..wan import memory_sizes as ms
    from ..wan.block_swap import BlockSwapper
    from .dit_forward import dit_inputs, time_calls
    from ..wan.config import INFINITETALK_14B, TINY_INFINITETALK
    from ..wan.model import build_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", type=int, default=8)
    p.add_argument("--mode", default="fp8_e4m3fn_fast", help="quantization mode (disabled = bf16)")
    p.add_argument("--attention", default="sdpa")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--batch", type=int, default=1, help="3 = batched CFG as the sampler runs it")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--prefetch", type=int, default=1)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny config (smoke test)")
    a = p.parse_args(argv)
    device, dtype = torch.device(a.device), torch.bfloat16
    cfg = replace(TINY_INFINITETALK if a.tiny else INFINITETALK_14B, num_layers=a.blocks)
    if a.tiny:
        a.width, a.height, a.frames = 64, 64, 9

    model = build_model(cfg, device, dtype, seed=0)
    if a.mode != "disabled":
        quantize_model(model, a.mode, compute_dtype=dtype, device=device)
    model.set_attention_modes(self_attn=a.attention)
    model.eval()
    args, kw = dit_inputs(cfg, a.batch, a.width, a.height, a.frames, device, dtype)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        base_mem = torch.cuda.memory_allocated(device)
    else:
        base_mem = 0

    ms_res, _, peak_res = time_calls(lambda: model(*args, **kw), a.iters, device)
    sw = BlockSwapper(model, a.blocks, device, prefetch=a.prefetch).install()
    ms_swap, _, peak_swap = time_calls(lambda: model(*args, **kw), a.iters, device)
    per_block = sw.stats.bytes_copied / max(1, sw.stats.block_copies)
    sw.uninstall()

    _, tokens = ms.tokens_for(cfg, a.width, a.height, a.frames)
    pred_act = ms.activation_bytes(cfg, tokens, a.batch, a.attention)
    G = 1024**3
    print(f"config: {a.blocks} blocks of {'tiny' if a.tiny else '14B InfiniteTalk'}, {a.mode}, {a.attention}, "
          f"{a.width}x{a.height}x{a.frames} ({tokens} tokens), batch {a.batch}, device {device}")
    print(f"resident: {ms_res:8.1f} ms/forward   peak {peak_res / G:6.2f} GiB")
    print(f"swap all: {ms_swap:8.1f} ms/forward   peak {peak_swap / G:6.2f} GiB   "
          f"overhead {100 * (ms_swap / ms_res - 1):+.1f}%   block {per_block / 1e6:.0f} MB")
    if device.type == "cuda":
        print(f"activation peak (resident run): measured {(peak_res - base_mem) / G:.2f} GiB vs predicted "
              f"{pred_act / G:.2f} GiB (hw_tuning.activation_bytes)")


if __name__ == "__main__":
    main()
