"""Block-size sweep of the Triton scan (GPU): prints fwd and fwd+bwd medians per configuration."""
import itertools
import os
import sys

import torch
import triton.testing as tt

from ssm_kernels import cross_selective_scan, selective_scan_fn

PLAIN = [(2, 384, 401408, 1, 4), (2, 128, 401408, 1, 4), (2, 768, 50176, 1, 4), (2, 384, 50176, 16, 1)]
CROSS = [(2, 96, 112, 3584), (1, 32, 112, 3584)]


def leaves(d):
    return {k: v.detach().clone().requires_grad_() for k, v in d.items()}


def time_fn(f, x, bwd):
    if not bwd:
        return tt.do_bench(lambda: f(x), return_mode="median", rep=200)
    lv = leaves(x)

    def g():
        for v in lv.values():
            v.grad = None
        f(lv).float().sum().backward()
    return tt.do_bench(g, return_mode="median", rep=200)


def main():
    configs = [(bd, bl, nw) for bd in (1, 2, 4) for bl in (256, 1024, 2048) for nw in (4, 8)]
    if len(sys.argv) > 1:
        configs = configs[: int(sys.argv[1])]
    dev = "cuda"
    for shape in PLAIN:
        b, d, L, N, G = shape
        x = dict(u=torch.randn(b, d, L, device=dev), delta=0.5 * torch.randn(b, d, L, device=dev),
                 A=-(torch.rand(d, N, device=dev) + 0.1), B=torch.randn(b, G, N, L, device=dev),
                 C=torch.randn(b, G, N, L, device=dev), D=torch.randn(d, device=dev),
                 delta_bias=0.3 * torch.randn(d, device=dev))
        f = lambda t: selective_scan_fn(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], None, t["delta_bias"], True)
        best = None
        for bd, bl, nw in configs:
            if N > 2 and bl > 256:
                continue
            os.environ.update(SSM_BLOCK_D=str(bd), SSM_BLOCK_L=str(bl), SSM_NUM_WARPS=str(nw))
            try:
                tf, tb = time_fn(f, x, False), time_fn(f, x, True)
            except Exception as e:  # noqa: BLE001
                print(shape, bd, bl, nw, "failed", str(e)[:80])
                continue
            print(f"plain {shape} bd={bd} bl={bl} nw={nw}: fwd {tf:.3f} ms, fwd+bwd {tb:.3f} ms", flush=True)
            if best is None or tf + tb < best[0]:
                best = (tf + tb, bd, bl, nw, tf, tb)
        print(f"BEST plain {shape}: bd={best[1]} bl={best[2]} nw={best[3]} fwd {best[4]:.3f} fwd+bwd {best[5]:.3f}", flush=True)
        del x
        torch.cuda.empty_cache()
    for (b, d, h, w) in CROSS:
        x = dict(x=torch.randn(b, d, h, w, device=dev), delta=0.5 * torch.randn(b, 4, d, h, w, device=dev),
                 A=-(torch.rand(4 * d, 1, device=dev) + 0.1), B=torch.randn(b, 4, 1, h, w, device=dev),
                 C=torch.randn(b, 4, 1, h, w, device=dev), D=torch.randn(4 * d, device=dev),
                 delta_bias=0.3 * torch.randn(4 * d, device=dev))
        for fused in (True, False):
            for bd, bl, nw in [(1, 1024, 4), (2, 1024, 4), (1, 2048, 8), (4, 512, 4)]:
                os.environ.update(SSM_BLOCK_D=str(bd), SSM_BLOCK_L=str(bl), SSM_NUM_WARPS=str(nw))
                f = lambda t: cross_selective_scan(**t, fused=fused)
                tf, tb = time_fn(f, x, False), time_fn(f, x, True)
                print(f"cross {(b, d, h, w)} fused={fused} bd={bd} bl={bl} nw={nw}: fwd {tf:.3f} ms, fwd+bwd {tb:.3f} ms",
                      flush=True)
        del x
        torch.cuda.empty_cache()
    for k in ("SSM_BLOCK_D", "SSM_BLOCK_L", "SSM_NUM_WARPS"):
        os.environ.pop(k, None)


if __name__ == "__main__":
    main()
