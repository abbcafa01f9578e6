"""EXPERIMENT (branch exp/gluon-ws): correctness and speed of the warp-specialized sageattn_3 kernel against
the shipped Triton kernel, in one process.   python3 -m wanfp4.bench.ws_check"""
import sys
import traceback

import torch
import triton.testing

from wanfp4.attention import triton_sageattn as T
from wanfp4.attention.gluon_ws import sageattn3_ws
from wanfp4.bench.kernels import _attn_inputs, exact_heads, rel

CONFIGS = [tuple(int(x) for x in a.split(",")) for a in sys.argv[1:] if "," in a] or [(64, 2), (64, 3), (128, 2)]


def check(n, kinds=("iid", "biased_k")):
    for kind in kinds:
        q, k, v = _attn_inputs(kind, n, h=8)
        ref = T.sageattn3(q, k, v)
        ex = exact_heads(q, k, v, heads=4)
        for bn, st in CONFIGS:
            try:
                out = sageattn3_ws(q, k, v, bn, st)
                torch.cuda.synchronize()
                print(f"check L={n} {kind} cfg=({bn},{st}): vs triton {rel(out, ref):.5f} vs exact "
                      f"{rel(out[:, :, :4], ex):.4f} (triton vs exact {rel(ref[:, :, :4], ex):.4f})", flush=True)
            except Exception as err:  # noqa: BLE001
                print(f"check L={n} {kind} cfg=({bn},{st}) FAILED {type(err).__name__}: {str(err)[:400]}", flush=True)
                traceback.print_exc(limit=2)


def bench(n=37800):
    q, k, v = _attn_inputs("iid", n)
    flops = 4 * 40 * n * n * 128
    rows = [("triton sageattn3", lambda: T.sageattn3(q, k, v))]
    rows += [(f"ws ({bn},{st})", lambda bn=bn, st=st: sageattn3_ws(q, k, v, bn, st)) for bn, st in CONFIGS]
    for _ in range(2):
        for name, fn in rows:
            try:
                ms = triton.testing.do_bench(fn, warmup=100, rep=500, return_mode="median")
                print(f"bench L={n} {name}: {ms:.2f} ms {flops / ms / 1e9:.0f} TF/s", flush=True)
            except Exception as err:  # noqa: BLE001
                print(f"bench {name} FAILED {type(err).__name__}: {str(err)[:300]}", flush=True)


if __name__ == "__main__":
    if "--no-check" not in sys.argv:
        check(1000)
        check(333, ("biased_k",))
    if "--no-bench" not in sys.argv:
        bench()
