"""ssm_kernels.layer_norm against what SRMA-Mamba ran before it (PyTorch's layer norm in fp32 on a
channels-last copy, then the cast or permute), at the model's own layer-norm shapes, same tensors, same run.

    python kernels/benchmarks/bench_layer_norm.py --json ln.json            # GPU
    python kernels/benchmarks/bench_layer_norm.py --patch 224 224 64

Each row: one call of the layer norm as the model makes it, forward alone and forward + backward, each
captured as a CUDA graph and replayed as the trainer runs its step (median over repeats of 20 replays
between CUDA events; --eager times the calls themselves, host launch overhead included), the two outputs
and input gradients compared first (relative L2).
"""
from __future__ import annotations

import argparse
import json
import statistics

import torch
import torch.nn.functional as F

from ssm_kernels.layer_norm import layer_norm


def torch_way(x, w, b, channels_first, out_channels_first, out_dtype):
    if channels_first:
        x = x.movedim(1, -1)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = F.layer_norm(x, (x.shape[-1],), w, b, 1e-5)
    y = y.to(out_dtype)
    return y.movedim(-1, 1).contiguous() if out_channels_first else y


def ours(x, w, b, channels_first, out_channels_first, out_dtype):
    return layer_norm(x, w, b, 1e-5, channels_first=channels_first, out_channels_first=out_channels_first,
                      out_dtype=out_dtype)


def cases(patch, batch=2, dims=48):
    """(name, input shape, channels_first, out_channels_first, input dtype, output dtype) per stage."""
    out = []
    for s in range(4):
        h, w, d = (n // 2 ** (s + 1) for n in patch)
        c = dims * 2 ** s
        out.append((f"stage {s} block norm (C={c})", (batch, h, w, d, c), False, False, torch.float32,
                    torch.bfloat16))
        out.append((f"stage {s} SS2D out_norm (C={2 * c})", (batch, 2 * c, h, w * d), True, False, torch.float32,
                    torch.bfloat16))
        out.append((f"stage {s} encoder output (C={c})", (batch, h, w, d, c), False, True, torch.float32, torch.float32))
    return out


def timed(fn, reps, graph=True):
    """Median ms of one call of fn: as a CUDA graph replayed 20 times between events, or eagerly."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    run, per = fn, 1
    if graph:
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    fn()
            torch.cuda.current_stream().wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                fn()
            run, per = (lambda: [g.replay() for _ in range(20)]), 20
        except RuntimeError as e:   # keep the row, timed eagerly, and say so
            print(f"(CUDA graph capture failed, timed eagerly: {str(e)[:120]})")
    ts = []
    for i in range(reps + 3):
        start.record()
        run()
        end.record()
        torch.cuda.synchronize()
        if i >= 3:
            ts.append(start.elapsed_time(end) / per)
    return statistics.median(ts)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--patch", type=int, nargs=3, default=[128, 128, 48])
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--eager", action="store_true", help="time eager calls (host overhead included), not graphs")
    p.add_argument("--json")
    a = p.parse_args(argv)
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    rows = []
    print(f"{torch.cuda.get_device_name(dev)}, patch {tuple(a.patch)}, batch 2; medians in ms, "
          f"{'eager calls' if a.eager else 'CUDA graph replays'}")
    print("| layer norm | before fwd | ours fwd | ratio | before fwd+bwd | ours fwd+bwd | ratio | rel. diff y / dx |")
    print("|---|---|---|---|---|---|---|---|")
    for name, shape, cf, ocf, din, dout in cases(tuple(a.patch)):
        c = shape[1] if cf else shape[-1]
        x = torch.randn(shape, device=dev, generator=g, dtype=din).requires_grad_(True)
        w = (1 + 0.1 * torch.randn(c, device=dev, generator=g)).requires_grad_(True)
        b = (0.1 * torch.randn(c, device=dev, generator=g)).requires_grad_(True)
        res = {}
        for label, fn in (("before", torch_way), ("ours", ours)):
            y = fn(x, w, b, cf, ocf, dout)
            dy = torch.randn(y.shape, device=dev, generator=torch.Generator(device=dev).manual_seed(1), dtype=y.dtype)
            gx, = torch.autograd.grad(y, x, dy)
            res[label] = dict(y=y.detach().float(), gx=gx.float())
            with torch.no_grad():
                f_ms = timed(lambda: fn(x, w, b, cf, ocf, dout), a.reps, not a.eager)

            def fb():
                torch.autograd.grad(fn(x, w, b, cf, ocf, dout), (x, w, b), dy)
            res[label]["fwd"] = f_ms
            res[label]["fwdbwd"] = timed(fb, a.reps, not a.eager)
        ry = float((res["ours"]["y"] - res["before"]["y"]).norm() / res["before"]["y"].norm())
        rg = float((res["ours"]["gx"] - res["before"]["gx"]).norm() / res["before"]["gx"].norm())
        bf, of = res["before"]["fwd"], res["ours"]["fwd"]
        bb, ob = res["before"]["fwdbwd"], res["ours"]["fwdbwd"]
        print(f"| {name} {tuple(shape)} | {bf:.3f} | {of:.3f} | {bf / of:.2f}x | {bb:.3f} | {ob:.3f} | {bb / ob:.2f}x "
              f"| {ry:.1e} / {rg:.1e} |")
        rows.append(dict(name=name, shape=list(shape), channels_first=cf, out_channels_first=ocf,
                         out_dtype=str(dout), before_fwd_ms=bf, ours_fwd_ms=of, before_fwdbwd_ms=bb,
                         ours_fwdbwd_ms=ob, rel_diff_y=ry, rel_diff_dx=rg))
    tot = {k: sum(r[k] for r in rows) for k in ("before_fwd_ms", "ours_fwd_ms", "before_fwdbwd_ms", "ours_fwdbwd_ms")}
    print(f"| **sum over the rows** | {tot['before_fwd_ms']:.2f} | {tot['ours_fwd_ms']:.2f} | "
          f"{tot['before_fwd_ms'] / tot['ours_fwd_ms']:.2f}x | {tot['before_fwdbwd_ms']:.2f} | "
          f"{tot['ours_fwdbwd_ms']:.2f} | {tot['before_fwdbwd_ms'] / tot['ours_fwdbwd_ms']:.2f}x | |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(dev), torch=torch.__version__, patch=a.patch,
                           timing="eager" if a.eager else "cuda graph",
                           rows=rows, sums=tot), f, indent=1)


if __name__ == "__main__":
    main()
