"""One forward + backward of the four-direction scan inside a profiler range, for Nsight Compute
(issue 13: where the scan's backward spends its time, which CUDA events cannot say).

    ncu --clock-control none --profile-from-start off --kernel-name regex:'_scan_|_transpose' --set full \
        -o scan python3 kernels/benchmarks/ncu_scan.py --shape 2 96 112 3584 --dtype bfloat16

The inputs are sweep_segments.cross_inputs (the SS2D maps of SRMA-Mamba) in the step's dtype. Two
warm-up passes compile every kernel outside the range; only the third pass is profiled. Prints the
launch settings it ran under (the SSM_* environment) so a report can be matched to its configuration.
"""
from __future__ import annotations

import argparse
import os

import torch

from sweep_segments import cross_inputs  # this folder
from ssm_kernels import cross_selective_scan


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shape", type=int, nargs=4, default=(2, 96, 112, 3584), metavar=("B", "D", "H", "W"))
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    a = p.parse_args()
    dtype = getattr(torch, a.dtype)
    x = cross_inputs(*a.shape)
    x = {k: (v.to(dtype) if k in ("x", "delta", "B", "C") else v).requires_grad_() for k, v in x.items()}
    gout = None
    for i in range(3):
        if i == 2:
            torch.cuda.synchronize()
            torch.cuda.cudart().cudaProfilerStart()
        for v in x.values():
            v.grad = None
        y = cross_selective_scan(**x, backend="triton")
        if gout is None:
            gout = torch.randn_like(y)
        y.backward(gout)
        if i == 2:
            torch.cuda.synchronize()
            torch.cuda.cudart().cudaProfilerStop()
    env = {k: v for k, v in os.environ.items() if k.startswith("SSM_")}
    print(f"profiled one forward + backward: shape {tuple(a.shape)}, {a.dtype}, env {env or 'defaults'}; "
          f"grad norms " + ", ".join(f"{k} {float(v.grad.float().norm()):.4g}" for k, v in x.items()))


if __name__ == "__main__":
    main()
