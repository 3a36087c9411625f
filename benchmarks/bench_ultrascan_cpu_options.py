"""What could bring UltraScanNet under 50 ms on a 2-core CPU? Times one 224 x 224 forward of the shipped
weights in fp32, with dynamic int8 Linear layers (torch.ao quantize_dynamic; the transformer stage's fused
attention and the scan's dt_proj stay fp32, their fast paths read the float weights), and channels-last,
and prints the arithmetic floor: the model's multiply-accumulates at the CPU's peak FMA rate.

    python benchmarks/bench_ultrascan_cpu_options.py [--threads 2] [--ghz 2.45]

A benchmark, not a test: it prints a table (medians of 12 runs after 3 warm-ups) and the largest logit
difference of the int8 variant against fp32.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / p) for p in ("UltraScanClassifier", "SlicerAICommon", "kernels")]


def median_ms(f, x, n=12):
    with torch.no_grad():
        for _ in range(3):
            f(x)
        t = []
        for _ in range(n):
            t0 = time.perf_counter()
            f(x)
            t.append(time.perf_counter() - t0)
    return 1000 * float(np.median(t))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ghz", type=float, default=2.45, help="core clock for the arithmetic floor")
    ap.add_argument("--fma-lanes", type=int, default=32,
                    help="fp32 flops per cycle per core (AVX2, 2 FMA pipes: 2 x 8 x 2 = 32)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from UltraScanClassifierLib.inference import UltrasoundClassifier

    m = UltrasoundClassifier.load(ROOT / "UltraScanClassifier/Resources/Models/ultrascannet_busi", device="cpu").model.eval()
    x = torch.randn(1, 3, 224, 224)
    skip = [n for n, mod in m.named_modules()
            if isinstance(mod, (torch.nn.TransformerEncoderLayer, torch.nn.MultiheadAttention))]
    names = {n for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear) and not n.endswith("dt_proj")
             and not any(n.startswith(s + ".") for s in skip)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mq = torch.ao.quantization.quantize_dynamic(copy.deepcopy(m), names, dtype=torch.qint8)
    mc = copy.deepcopy(m).to(memory_format=torch.channels_last)
    with torch.no_grad():
        diff = float((mq(x) - m(x)).abs().max())
    rows = [("fp32 (shipped path)", median_ms(m, x)),
            (f"dynamic int8 on {len(names)} Linear layers", median_ms(mq, x)),
            ("channels-last", median_ms(lambda t: mc(t.to(memory_format=torch.channels_last)), x))]
    macs = 5.4e9
    floor = 2 * macs / (a.threads * a.fma_lanes * a.ghz * 1e9) * 1000
    print(f"| UltraScanNet forward, 1 x 3 x 224 x 224, {a.threads} threads | median ms |")
    print("|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.1f} |")
    print(f"| arithmetic floor: 5.4 G MAC at {a.threads} x {a.fma_lanes} flop/cycle x {a.ghz} GHz | {floor:.1f} |")
    print(f"int8 vs fp32: largest logit difference {diff:.4f}")


if __name__ == "__main__":
    main()
