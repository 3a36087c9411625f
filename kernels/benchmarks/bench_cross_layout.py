"""The four-direction (SS2D) scan in its two layouts beside the plain scan over the same bytes.

For each map shape: cross_selective_scan with SSM_CROSS_LAYOUT=strided (column-major directions read in
place through a strided index) and =transpose (directions 1 and 3 as rows of a transposed copy), and the
plain selective_scan_fn on 4 x channels laid out row-major with B and C grouped by direction -- the
same arithmetic with coalesced loads only, the bound a layout change can reach. Forward (no grad) and
forward + backward, medians of CUDA-event timings; the two layouts' outputs and gradients are compared
(largest difference relative to the largest entry). N = 1, bf16 inputs, delta softplus, D and bias:
SRMA-Mamba's SS2D calls (benchmarks/scan_shapes_srma.py lists the shapes of its training step).

    python kernels/benchmarks/bench_cross_layout.py --json cross_layout.json               # the model's maps
    python kernels/benchmarks/bench_cross_layout.py --shapes square --json cross_square.json

Shape sets (--shapes, several allowed): srma224 and srma128 are the maps SRMA-Mamba's training step scans at
a 224 x 224 x 64 and a 128 x 128 x 48 patch (batch 2, width 48): every SS2D plane is short and wide, (h, w x d)
or (d, h x w), e.g. 32 x 12544. square is the near-square maps of equal length that sessions 16-19 timed
(448 x 896, 224 x 224), which the model never scans: a column-major read comes back to the same rows after
H steps, so a layout's gain on a square map need not carry to the model's (docs/BENCHMARKS.md, session 21). The srma sets are
written out here (this package knows no model); Testing/test_srma_scan_shapes.py checks them against the
model's own calls.
"""
import argparse
import json
import os
import statistics

import torch

from ssm_kernels import cross_selective_scan, selective_scan_fn

SHAPE_SETS = {  # (batch, channels, H, W); L = H * W
    "srma224": [(2, 96, 112, 3584), (2, 96, 32, 12544), (2, 32, 112, 3584), (2, 32, 32, 12544),
                (2, 192, 56, 896), (2, 192, 16, 3136), (2, 32, 56, 896), (2, 32, 16, 3136)],
    "srma128": [(2, 96, 64, 1536), (2, 96, 24, 4096), (2, 32, 64, 1536), (2, 32, 24, 4096),
                (2, 192, 32, 384), (2, 192, 12, 1024), (2, 32, 32, 384), (2, 32, 12, 1024)],
    "square": [(2, 96, 448, 896), (2, 32, 448, 896), (2, 192, 224, 224)],
}


def med(fn, n=10):
    for _ in range(2):
        fn()
    ts = []
    for _ in range(n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def rel(p, q):
    return float((p.float() - q.float()).abs().max() / p.float().abs().max().clamp_min(1e-30))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="+", choices=sorted(SHAPE_SETS), default=["srma224", "srma128"])
    p.add_argument("--json")
    a = p.parse_args()
    dev = "cuda"
    rows = []
    for bsz, d, h, w in [s for name in a.shapes for s in SHAPE_SETS[name]]:
        L, N = h * w, 1
        x = torch.randn(bsz, d, h, w, device=dev, dtype=torch.bfloat16, requires_grad=True)
        dl = (torch.randn(bsz, 4, d, h, w, device=dev) * 0.5).bfloat16().requires_grad_()
        A = -torch.rand(4 * d, N, device=dev).requires_grad_()
        B = torch.randn(bsz, 4, N, h, w, device=dev, dtype=torch.bfloat16, requires_grad=True)
        C = torch.randn(bsz, 4, N, h, w, device=dev, dtype=torch.bfloat16, requires_grad=True)
        D = torch.ones(4 * d, device=dev, requires_grad=True)
        bias = torch.zeros(4 * d, device=dev, requires_grad=True)
        row = {"shape": [bsz, d, h, w]}
        res = {}

        def f():
            return cross_selective_scan(x, dl, A, B, C, D, bias, True)
        g = torch.randn(bsz, d, h, w, device=dev)   # one upstream gradient for both layouts, so theirs compare
        for lay in ("strided", "transpose"):
            os.environ["SSM_CROSS_LAYOUT"] = lay
            with torch.no_grad():
                row[f"{lay}_fwd_ms"] = med(f)
            row[f"{lay}_fwd_bwd_ms"] = med(lambda: torch.autograd.grad(f(), (x, dl, B, C), g))
            res[lay] = (f().detach(), torch.autograd.grad(f(), (x, dl, B, C), g))
        os.environ.pop("SSM_CROSS_LAYOUT")
        (ya, ga), (yb, gb) = res["strided"], res["transpose"]
        row["max_rel_diff_out"] = rel(ya, yb)
        row["max_rel_diff_grads"] = [rel(i, j) for i, j in zip(ga, gb)]
        xp = torch.randn(bsz, 4 * d, L, device=dev, dtype=torch.bfloat16, requires_grad=True)
        dp = dl.detach().view(bsz, 4 * d, L).clone().requires_grad_()
        Bp = B.detach().view(bsz, 4, N, L).clone().requires_grad_()
        Cp = C.detach().view(bsz, 4, N, L).clone().requires_grad_()

        def fp():
            return selective_scan_fn(xp, dp, A, Bp, Cp, D, None, bias, True, output_fp32=True)
        with torch.no_grad():
            row["plain_fwd_ms"] = med(fp)
        gp = torch.randn(bsz, 4 * d, L, device=dev)
        row["plain_fwd_bwd_ms"] = med(lambda: torch.autograd.grad(fp(), (xp, dp, Bp, Cp), gp))
        rows.append(row)
        print(f"{str(row['shape']):>20}  fwd ms: strided {row['strided_fwd_ms']:.3f} transpose "
              f"{row['transpose_fwd_ms']:.3f} plain {row['plain_fwd_ms']:.3f} | fwd+bwd ms: strided "
              f"{row['strided_fwd_bwd_ms']:.3f} transpose {row['transpose_fwd_bwd_ms']:.3f} plain "
              f"{row['plain_fwd_bwd_ms']:.3f} | strided/transpose fwd "
              f"{row['strided_fwd_ms'] / row['transpose_fwd_ms']:.2f}x fwd+bwd "
              f"{row['strided_fwd_bwd_ms'] / row['transpose_fwd_bwd_ms']:.2f}x | diff out "
              f"{row['max_rel_diff_out']:.1e} grads {max(row['max_rel_diff_grads']):.1e}", flush=True)
    if a.json:
        json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
