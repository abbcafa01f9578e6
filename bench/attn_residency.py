"""How many attention CTAs share an SM, and whether the ones that share it overlap their work.

    python3 -m wanfp4.bench.attn_residency [--configs 128,64,4,3 64,64,4,2 ...]

Prints the driver's occupancy for the sageattn_3 kernel (CTAs per SM) and the time for 1x, 2x and 3x
as many Q tiles as the GPU has SMs, all over the same 37 800 keys. If two CTAs per SM overlap their
tensor-core and softmax phases, 2x the tiles costs well under 2x the time.
"""
from __future__ import annotations

import ctypes

import torch


def occupancy(compiled, threads: int) -> int:
    """CTAs of this compiled kernel that fit on one SM, from the driver (a negative CUresult on failure)."""
    cuda = ctypes.CDLL("libcuda.so.1")
    n = ctypes.c_int(0)
    rc = cuda.cuOccupancyMaxActiveBlocksPerMultiprocessor(ctypes.byref(n), ctypes.c_void_p(compiled.function),
                                                          threads, compiled.metadata.shared)
    return n.value if rc == 0 else -rc


def main(argv=None) -> None:
    import argparse

    import triton.testing

    from wanfp4.attention import triton_sageattn as T
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["128,64,4,3", "128,64,4,2", "128,128,8,3"],
                    metavar="BM,BN,WARPS,STAGES[,PREFETCH,WS,MAXNREG]",
                    help="16-bit P.V tile configs of the sageattn_3 kernel")
    configs = [tuple(int(x) for x in c.split(",")) for c in ap.parse_args(argv).configs]
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    lk, d = 37800, 128
    k = torch.randn(1, lk, 1, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    for cfg in configs:
        base = None
        for mult in (1, 2, 3):
            q = torch.randn(1, mult * sms * cfg[0], 1, d, device="cuda", dtype=torch.bfloat16)
            ms = triton.testing.do_bench(lambda: T._int8_attention(q, k, v, False, config=cfg), rep=300)
            base = base or ms
            flops = 4 * q.shape[1] * lk * d
            print(f"cfg {cfg}: {mult * sms} CTAs ({mult}x SMs): {ms:.3f} ms, {flops / ms / 1e9:.0f} TF/s, "
                  f"{ms / base:.2f}x the 1x time", flush=True)
        cache = T._k.attn_int8_kernel.device_caches[0][0]   # Triton's compiled variants on device 0
        for c in cache.values():                            # just this config's: cleared after each one
            print(f"   compiled: {c.n_regs} regs, {c.n_spills} spills, {c.metadata.shared} B shared, "
                  f"occupancy {occupancy(c, 32 * c.metadata.num_warps)} CTAs/SM", flush=True)
        cache.clear()


if __name__ == "__main__":
    main()
