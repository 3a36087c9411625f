"""UltraScanNet speed beside the baselines: single-image latency, batch throughput, training step.

    python benchmarks/bench_ultrascan.py                 # GPU if there is one
    python benchmarks/bench_ultrascan.py --cpu --threads 2
    python benchmarks/bench_ultrascan.py --models ultrascannet --graphs   # + the step as one CUDA graph

Prints a table (medians) and writes JSON (--json). Random weights: speed does not depend on them.
On CUDA, UltraScanNet is also timed with the scan on the torch backend, to show what the Triton
scan buys inside the model. --graphs also times the training step with its forward, loss and backward
replayed as one CUDA graph (training.loop.GraphedStep, what training/ultrascan/train.py does on a GPU),
the eager and graphed steps alternating, and checks the graph's loss against eager on one batch.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
for p in ("UltraScanClassifier", "SlicerAICommon", "kernels", ""):
    sys.path.insert(0, str(ROOT / p))     # "": the checkout root, home of the development package training/

from training.ultrascan.augment import AugmentConfig, train_batch  # noqa: E402
from UltraScanClassifierLib.model import count_parameters, flops  # noqa: E402
from training.ultrascan.baselines import build_model  # noqa: E402
from training.loop import GraphedStep  # noqa: E402
from graph_check import check_graphed_step  # noqa: E402


def timeit(fn, reps, warmup, cuda):
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1000


def bench(name, device, amp, reps, train, graphs=False, **kw):
    cuda = device.type == "cuda"
    model = build_model(name, 3, **kw).to(device)
    dt = torch.bfloat16 if amp else None
    row = {"model": name + (f" (scan {kw['scan_backend']})" if kw.get("scan_backend") else ""),
           "params_M": round(count_parameters(model) / 1e6, 2), "amp": "bf16" if amp else "fp32"}
    model.eval()
    for bs in (1, 32) if cuda else (1,):
        x = torch.randn(bs, 3, 224, 224, device=device)

        def fwd():
            with torch.no_grad(), torch.autocast(device.type, dtype=dt, enabled=dt is not None):
                model(x)
        ms = timeit(fwd, reps, 3, cuda)
        row[f"infer_b{bs}_ms"] = round(ms, 2)
        if bs > 1:
            row[f"infer_b{bs}_img_s"] = round(bs / ms * 1000, 1)
    if train:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        xb = torch.randint(0, 255, (32, 3, 256, 256), dtype=torch.uint8, device=device)
        yb = torch.randint(0, 3, (32,), device=device)
        aug = AugmentConfig()

        def step():
            x, y = train_batch(xb, yb, aug, 3)
            with torch.autocast(device.type, dtype=dt, enabled=dt is not None):
                out = model(x)
            loss = torch.sum(-y * torch.log_softmax(out.float(), 1), 1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        row["train_step_b32_ms"] = round(timeit(step, max(5, reps // 2), 3, cuda), 1)
        if cuda:
            row["train_peak_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if graphs and cuda:
            def loss_of(x, y):
                with torch.autocast(device.type, dtype=dt, enabled=dt is not None, cache_enabled=False):
                    out = model(x)
                return torch.sum(-y * torch.log_softmax(out.float(), 1), 1).mean()
            fb = GraphedStep(model.parameters(), loss_of)
            x0, y0 = train_batch(xb, yb, aug, 3)

            def check_loss(m, on, x, y):
                with torch.autocast(device.type, dtype=dt, enabled=dt is not None, cache_enabled=not on):
                    out = m(x)
                return torch.sum(-y * torch.log_softmax(out.float(), 1), 1).mean()
            check = check_graphed_step(lambda: build_model(name, 3, **kw).to(device), check_loss, (x0, y0))
            row.update({f"check_{k}": v for k, v in check.items()})

            def gstep():
                x, y = train_batch(xb, yb, aug, 3)
                fb(x, y)
                opt.step()
            row["train_step_b32_graph_ms"] = round(timeit(gstep, max(5, reps // 2), 3, cuda), 1)
            row["train_step_b32_ms_again"] = round(timeit(step, max(5, reps // 2), 3, cuda), 1)
            row["graph"] = "captured" if fb.active else f"failed: {fb.failed}"
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json", default=None)
    ap.add_argument("--models", nargs="*", default=None, help="only these (ultrascannet, resnet50, convnext_tiny)")
    ap.add_argument("--graphs", action="store_true", help="also the training step as one CUDA graph")
    a = ap.parse_args()
    device = torch.device("cpu" if a.cpu or not torch.cuda.is_available() else "cuda")
    if a.threads:
        torch.set_num_threads(a.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    rows = []
    cfgs = [("ultrascannet", {}), ("resnet50", {}), ("convnext_tiny", {})]
    if device.type == "cuda":
        cfgs.insert(1, ("ultrascannet", {"scan_backend": "torch"}))
    cfgs = [c for c in cfgs if a.models is None or c[0] in a.models]
    for name, kw in cfgs:
        for amp in ((False, True) if device.type == "cuda" else (False,)):
            rows.append(bench(name, device, amp, a.reps if device.type == "cuda" else 3,
                              train=device.type == "cuda" and amp, graphs=a.graphs and not kw, **kw))
            print(rows[-1], flush=True)
    gflops = {n: round(flops(build_model(n, 3)) / 1e9, 2) for n in ("ultrascannet", "resnet50", "convnext_tiny")}
    dev = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    keys = sorted({k for r in rows for k in r}, key=lambda k: list(rows[0]).index(k) if k in rows[0] else 99)
    print(f"\n{dev}, torch {torch.__version__}; GFLOPs per 224x224 image (forward, scan excluded): {gflops}")
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")
    if a.json:
        Path(a.json).write_text(json.dumps({"device": dev, "torch": torch.__version__, "gflops": gflops, "rows": rows},
                                           indent=1))


if __name__ == "__main__":
    main()
