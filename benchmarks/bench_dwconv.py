"""SS2D's depthwise 3 x 3 convolution + SiLU (ssm_kernels.dwconv3x3_silu) on the maps SRMA-Mamba gives it at a
patch, one training step's worth: forward and forward + backward per map, summed over the step's calls,
for PyTorch's path (conv2d + SiLU + copy, what the model ran before session 26) and the Triton kernels,
ssm_kernels' own and optionally other implementations from files (a candidate rewrite of
triton_depthwise_conv.py, or an earlier commit's, timed in one run), each at every tile setting asked for.
Issue 13, item 5.

    python benchmarks/bench_dwconv.py --patch 224 224 64 --json dw.json           # on the GPU machine
    python benchmarks/bench_dwconv.py --tiles default 8,16,32,4 --also candidate_triton_depthwise_conv.py
    python benchmarks/bench_dwconv.py --device cpu --dims 8 --patch 32 32 16 --reps 1   # smoke (interpreted)

The maps are recorded from one forward of the model at --patch (batch 2, as the trainer), by wrapping
SRMASegmenterLib.model._dwconv_silu; the inputs are random bf16 (the step's autocast dtype), the weight
fp32. Each variant's output and gradients are compared with PyTorch's path first (relative error, bf16
noise expected), then timed (medians of --reps CUDA-event timings after warm-up). A tile is
R,BLOCK_C,BLOCK_W,WARPS, set through SSM_DW_* as a sweep would.
"""
from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import statistics
import time

import torch

import SRMASegmenterLib.model as model_mod
from bench_srma import cuda_time
from graph_check import environ
from SRMASegmenterLib.model import SRMAConfig, SRMAMamba
from ssm_kernels.depthwise_conv import dwconv3x3_silu, dwconv3x3_silu_torch

TILE_VARS = ("SSM_DW_ROWS", "SSM_DW_BLOCK_C", "SSM_DW_BLOCK_W", "SSM_DW_WARPS")


def record_maps(patch, dims, device):
    """{(b, h, w, c): calls} of one forward at the patch (batch 2)."""
    seen = collections.Counter()
    orig = model_mod._dwconv_silu

    def rec(conv, x):
        seen[tuple(x.shape)] += 1
        return orig(conv, x)
    model = SRMAMamba(SRMAConfig(dims=dims, out_chans=5)).to(device)
    model_mod._dwconv_silu = rec
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            model(torch.zeros(2, 1, *patch, device=device))
    finally:
        model_mod._dwconv_silu = orig
    return dict(seen)


def timed(fn, reps, device):
    """Median ms of fn: CUDA events on the GPU (bench_srma.cuda_time), the wall clock on the CPU."""
    if device.type == "cuda":
        return cuda_time(fn, reps=reps, warmup=2)
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)


def rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dims", type=int, default=48)
    p.add_argument("--patch", type=int, nargs=3, default=[128, 128, 48])
    p.add_argument("--tiles", nargs="+", default=["default"],
                   help="R,BLOCK_C,BLOCK_W,WARPS or 'default' (SSM_DW_* unset)")
    p.add_argument("--also", nargs="+", default=[], help="other triton_depthwise_conv.py files to time beside")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--json")
    a = p.parse_args()
    dev = torch.device(a.device)
    maps = record_maps(tuple(a.patch), a.dims, dev)

    impls = [("triton", None)]
    for i, path in enumerate(a.also):
        spec = importlib.util.spec_from_file_location(f"ssm_kernels._dw_also{i}", path)
        mod = importlib.util.module_from_spec(spec)   # named inside ssm_kernels: its relative imports resolve
        spec.loader.exec_module(mod)
        impls.append((os.path.basename(path).removesuffix(".py"), mod))
    variants = [("torch", dwconv3x3_silu_torch, None)]
    for iname, mod in impls:     # each implementation at each tile
        fn = ((lambda x, w: dwconv3x3_silu(x, w, backend="triton")) if mod is None
              else (lambda x, w, mod=mod: mod.TritonDepthwiseConvSiLU.apply(x, w)))
        for t in a.tiles:
            variants.append((f"{iname} {t}", fn, None if t == "default" else dict(zip(TILE_VARS, t.split(",")))))

    rows = []
    g = torch.Generator().manual_seed(0)
    for shape, calls in sorted(maps.items(), key=lambda kv: -kv[0][1] * kv[0][2] * kv[0][3]):
        x = torch.randn(shape, generator=g).to(torch.bfloat16).to(dev)
        w = (0.4 * torch.randn(shape[-1], 1, 3, 3, generator=g)).to(dev)
        gy = torch.randn(shape[0], shape[3], shape[1], shape[2], generator=g).to(torch.bfloat16).to(dev)
        ref = None
        for name, fn, env in variants:
            with environ(env or {}, unset=TILE_VARS):
                xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
                y = fn(xr, wr)
                y.backward(gy)
                out = (y.detach(), xr.grad, wr.grad)
                if ref is None:
                    ref = out
                err = [rel(o, r) for o, r in zip(out, ref)]

                def fwd():
                    with torch.no_grad():
                        fn(x, w)

                def fwd_bwd():
                    xr.grad = wr.grad = None
                    fn(xr, wr).backward(gy)
                f_ms, fb_ms = timed(fwd, a.reps, dev), timed(fwd_bwd, a.reps, dev)
            rows.append(dict(shape=list(shape), calls=calls, variant=name, fwd_ms=f_ms, fwd_bwd_ms=fb_ms,
                             rel_err_y=err[0], rel_err_gx=err[1], rel_err_gw=err[2]))
            print(f"{str(shape):<22}x{calls} {name:<32} fwd {f_ms:8.3f} ms  fwd+bwd {fb_ms:8.3f} ms  "
                  f"err y {err[0]:.1e} gx {err[1]:.1e} gw {err[2]:.1e}", flush=True)

    print(f"\n{torch.cuda.get_device_name() if dev.type == 'cuda' else 'CPU'}, patch {tuple(a.patch)}, "
          f"dims {a.dims}, batch 2: one step's calls, summed (ms, medians per map)")
    print("| variant | forward | forward + backward | vs torch (fwd+bwd) |\n|---|---|---|---|")
    tot = {}
    for name, _, _ in variants:
        rs = [r for r in rows if r["variant"] == name]
        tot[name] = (sum(r["fwd_ms"] * r["calls"] for r in rs), sum(r["fwd_bwd_ms"] * r["calls"] for r in rs))
    for name, (f, fb) in tot.items():
        print(f"| {name} | {f:.2f} | {fb:.2f} | {tot['torch'][1] / fb:.2f}x |")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(dict(device=torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", patch=a.patch,
                           dims=a.dims, maps={str(k): v for k, v in maps.items()}, rows=rows,
                           totals={k: dict(fwd_ms=v[0], fwd_bwd_ms=v[1]) for k, v in tot.items()}), fh, indent=1)


if __name__ == "__main__":
    main()
