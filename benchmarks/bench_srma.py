"""SRMA-Mamba speed and memory: forward per 224x224x64 patch (fp32, bf16; eager, and replayed from a CUDA graph
as Segment Liver runs a window), training step at batch 2, peak GPU memory, a whole 256x256x40 volume through
the inference path, and the CPU forward.

    python benchmarks/bench_srma.py --json srma.json          # on the GPU machine
    python benchmarks/bench_srma.py --cpu --threads 2          # CPU forward per patch
    python benchmarks/bench_srma.py --layouts strided transpose  # GPU: the forward per patch under each
                                                               # SS2D scan layout (SSM_CROSS_LAYOUT), same run

Weights are random (speed does not depend on them); the published code's figures for comparison are
in docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch

from SRMASegmenterLib.inference import InferenceConfig, LiverSegmenter
from SRMASegmenterLib.model import SRMAMamba
from SRMASegmenterLib.volumes import TRAIN_DIRECTION, Geometry


def cuda_time(fn, reps=20, warmup=5):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e))
    return statistics.median(ts)


def gpu(args):
    dev = torch.device("cuda")
    res = dict(device=torch.cuda.get_device_name())
    model = SRMAMamba().to(dev).eval()
    x = torch.randn(1, 1, 224, 224, 64, device=dev)
    with torch.inference_mode():
        torch.cuda.reset_peak_memory_stats()
        res["fwd_fp32_ms"] = cuda_time(lambda: model(x))
        res["fwd_fp32_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        with torch.autocast("cuda", dtype=torch.bfloat16):
            torch.cuda.reset_peak_memory_stats()
            res["fwd_bf16_ms"] = cuda_time(lambda: model(x))
            res["fwd_bf16_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        ref = model(x)[0].float()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            lo = model(x)[0].float()
        res["bf16_vs_fp32_rel_err"] = float((lo - ref).norm() / ref.norm())
        res.update(graphed_forward_ms(model, x))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    xb = torch.randn(2, 1, 224, 224, 64, device=dev)
    yb = (torch.rand(2, 1, 224, 224, 64, device=dev) > 0.5).float()
    for name, dt in (("bf16", torch.bfloat16), ("fp32", None)):
        def step():
            with torch.autocast("cuda", dtype=dt or torch.float32, enabled=dt is not None):
                outs = model(xb)
            loss = sum(torch.nn.functional.binary_cross_entropy_with_logits(o.float(), yb) for o in outs)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        torch.cuda.reset_peak_memory_stats()
        res[f"train_step_b2_{name}_ms"] = cuda_time(step, reps=10, warmup=3)
        res[f"train_step_b2_{name}_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    model.eval()
    seg = LiverSegmenter(model, dev, "random", InferenceConfig(roi_size=(224, 224, 64)))
    vol = np.random.default_rng(0).normal(size=(40, 256, 256)).astype(np.float32)
    geom = Geometry((1.25, 1.25, 7.7), (0, 0, 0), TRAIN_DIRECTION)
    for amp in (False, True):
        seg.config.amp = amp
        seg.predict(vol, geom)
        ts = []
        for _ in range(5):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            seg.predict(vol, geom)
            torch.cuda.synchronize()
            ts.append(time.perf_counter() - t0)
        res[f"volume_256x256x40_{'bf16' if amp else 'fp32'}_ms"] = statistics.median(ts) * 1e3
    # the model alone on the whole volume padded to 256x256x48 (one window), as a lower bound
    xv = torch.randn(1, 1, 256, 256, 48, device=dev)
    with torch.inference_mode():
        res["whole_volume_one_window_fp32_ms"] = cuda_time(lambda: model(xv), reps=10)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            res["whole_volume_one_window_bf16_ms"] = cuda_time(lambda: model(xv), reps=10)
    return res


def graphed_forward_ms(model, x):
    """The forward as Segment Liver runs a window: replayed from a CUDA graph (inference.CudaGraphForward,
    autocast without its weight cache), fp32 and bf16: {"fwd_graph_<precision>_ms": median}."""
    from SRMASegmenterLib.inference import CudaGraphForward
    res = {}
    for amp in ("fp32", "bf16"):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp == "bf16", cache_enabled=False):
            g = CudaGraphForward(lambda t: model(t)[0])
            res[f"fwd_graph_{amp}_ms"] = cuda_time(lambda: g(x), reps=10, warmup=3)
        if g.failed:
            res[f"graph_{amp}_failed"] = g.failed
    return res


def layouts(args):
    """The forward per 224 x 224 x 64 patch (inference mode, fp32 and bf16) under each SS2D scan layout of
    args.layouts, same model and input, timed in alternation (3 rounds, the median of each); outputs compared
    with the first layout's. "strided" reads the column-major directions in place through the general kernels;
    "transpose" (the default) runs the one-wide-state kernels (SSM_SCAN1) on rows of a transposed copy. Eager,
    and (fwd_graph_*) as Segment Liver runs a window: replayed from a CUDA graph (inference.CudaGraphForward,
    autocast without its weight cache), one graph per layout and precision."""
    from SRMASegmenterLib.inference import CudaGraphForward

    dev = torch.device("cuda")
    model = SRMAMamba().to(dev).eval()
    x = torch.randn(1, 1, 224, 224, 64, device=dev)
    res = dict(device=torch.cuda.get_device_name(), layouts=args.layouts)
    first = {}
    times = {(lay, amp): [] for lay in args.layouts for amp in ("fp32", "bf16")}
    gtimes = {k: [] for k in times}
    graphs = {}
    saved = os.environ.get("SSM_CROSS_LAYOUT")
    try:
        with torch.inference_mode():
            for _ in range(3):
                for lay in args.layouts:
                    os.environ["SSM_CROSS_LAYOUT"] = lay
                    for amp in ("fp32", "bf16"):
                        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp == "bf16"):
                            times[(lay, amp)].append(cuda_time(lambda: model(x), reps=10, warmup=3))
                            y = model(x)[0].float()
                        first.setdefault(amp, y)
                        res[f"{lay}_{amp}_rel_diff_vs_{args.layouts[0]}"] = float((y - first[amp]).norm() /
                                                                                  first[amp].norm())
                        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp == "bf16", cache_enabled=False):
                            g = graphs.setdefault((lay, amp), CudaGraphForward(lambda t: model(t)[0]))
                            gtimes[(lay, amp)].append(cuda_time(lambda: g(x), reps=10, warmup=3))
                            yg = g(x).float()
                        if g.failed:
                            res[f"graph_{lay}_{amp}_failed"] = g.failed
                        res[f"graph_{lay}_{amp}_rel_diff_vs_eager"] = float((yg - y).norm() / y.norm())
    finally:
        if saved is None:
            os.environ.pop("SSM_CROSS_LAYOUT", None)
        else:
            os.environ["SSM_CROSS_LAYOUT"] = saved
    for (lay, amp), t in times.items():
        res[f"fwd_{lay}_{amp}_ms"] = statistics.median(t)
        res[f"fwd_graph_{lay}_{amp}_ms"] = statistics.median(gtimes[(lay, amp)])
    return res


def cpu(args):
    torch.set_num_threads(args.threads)
    model = SRMAMamba().eval()
    x = torch.randn(1, 1, 224, 224, 64)
    ts = []
    with torch.inference_mode():
        for _ in range(args.reps):
            t0 = time.perf_counter()
            model(x)
            ts.append(time.perf_counter() - t0)
    res = dict(cpu_threads=args.threads, fwd_patch_cpu_s=statistics.median(ts))
    seg = LiverSegmenter(model, torch.device("cpu"), "random")
    vol = np.random.default_rng(0).normal(size=(40, 256, 256)).astype(np.float32)
    t0 = time.perf_counter()
    seg.predict(vol, Geometry((1.25, 1.25, 7.7), (0, 0, 0), TRAIN_DIRECTION))
    res["volume_256x256x40_cpu_s"] = time.perf_counter() - t0
    return res


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--layouts", nargs="+", choices=("strided", "transpose"),
                   help="only the forward per patch, under each SS2D scan layout")
    p.add_argument("--json")
    a = p.parse_args()
    r = cpu(a) if a.cpu else layouts(a) if a.layouts else gpu(a)
    for k, v in r.items():
        print(f"{k:<36} {v:.3f}" if isinstance(v, float) else f"{k:<36} {v}")
    if a.json:
        json.dump(r, open(a.json, "w"), indent=1)
