"""The four-direction scan of the shipped liver model on the CPU, at the shapes it really runs: the scan
reading each direction by index (default since session 8) against the materialised cross-scan of every
earlier release (`fused=False`, which is what `SSM_KERNELS_FUSED_CROSS=0` selects), the same tensors.

    python benchmarks/bench_scan_srma_cpu.py --threads 2 [--repeats 5] [--json out.json]

One forward of the shipped model on a 128 x 128 x 48 window (the size Segment Liver runs on a CHAOS
volume) records the arguments of every `cross_selective_scan` call (real activations, not random
numbers); each recorded call is then timed both ways, interleaved, and compared with the float64
reference once. Prints one row per distinct shape (with its number of calls per window) and the total
per window, medians of --repeats.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in ("SRMASegmenter", "UltraScanClassifier", "SlicerAICommon", "kernels"):
    sys.path.insert(0, str(ROOT / p))

import torch  # noqa: E402


def record_calls(window=(128, 128, 48)):
    """The kwargs of every cross_selective_scan call in one forward of the shipped model."""
    import SRMASegmenterLib.model as srma
    from SRMASegmenterLib.inference import LiverSegmenter

    seg = LiverSegmenter.load(device="cpu")
    calls, real = [], srma.cross_selective_scan

    def spy(x, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, backend=None, **kw):
        calls.append(dict(x=x.clone(), delta=delta.clone(), A=A.clone(), B=B.clone(), C=C.clone(),
                          D=None if D is None else D.clone(),
                          delta_bias=None if delta_bias is None else delta_bias.clone(),
                          delta_softplus=delta_softplus))
        return real(x, delta, A, B, C, D, delta_bias, delta_softplus, backend=backend, **kw)

    srma.cross_selective_scan = spy
    try:
        with torch.no_grad():
            seg.model.eval()(torch.randn(1, 1, *window))
    finally:
        srma.cross_selective_scan = real
    return calls, seg.weights_id


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    from ssm_kernels import cross_selective_scan
    from ssm_kernels.reference import cross_selective_scan_ref

    calls, weights = record_calls()
    times = {"fused": [[] for _ in calls], "materialised": [[] for _ in calls]}
    errors = {"fused": 0.0, "materialised": 0.0}
    with torch.no_grad():
        for rep in range(a.repeats + 1):
            for i, kw in enumerate(calls):
                for name, fused in (("materialised", False), ("fused", True)):
                    t = time.perf_counter()
                    y = cross_selective_scan(**kw, backend="torch", fused=fused)
                    dt = time.perf_counter() - t
                    if rep:                                 # the first round warms up and checks
                        times[name][i].append(dt)
                    elif i == 0:
                        ref = cross_selective_scan_ref(**{k: (v.double() if torch.is_tensor(v) else v)
                                                          for k, v in kw.items()})
                        errors[name] = float((y.double() - ref).abs().max() / ref.abs().max())
    rows = {}
    for i, kw in enumerate(calls):
        b, d, h, w = kw["x"].shape
        key = f"({b}, {d}, {h} x {w}), N = {kw['A'].shape[1]}"
        r = rows.setdefault(key, {"calls": 0, "materialised_s": 0.0, "fused_s": 0.0})
        r["calls"] += 1
        r["materialised_s"] += statistics.median(times["materialised"][i])
        r["fused_s"] += statistics.median(times["fused"][i])
    print(f"Four-direction scan of {weights} on the CPU ({torch.get_num_threads()} threads), one 128 x 128 x 48 "
          f"window, medians of {a.repeats}; relative error vs float64 on the first call: fused "
          f"{errors['fused']:.1e}, materialised {errors['materialised']:.1e}")
    print("| x shape (batch, channels, map), state size | calls per window | materialised ms | fused ms | speed-up |")
    print("|---|---|---|---|---|")
    for k, r in rows.items():
        print(f"| {k} | {r['calls']} | {1000 * r['materialised_s']:.1f} | {1000 * r['fused_s']:.1f} | "
              f"{r['materialised_s'] / r['fused_s']:.2f}x |")
    tm, tf = sum(r["materialised_s"] for r in rows.values()), sum(r["fused_s"] for r in rows.values())
    print(f"| **all scans of one window** | {len(calls)} | **{1000 * tm:.0f}** | **{1000 * tf:.0f}** | **{tm / tf:.2f}x** |")
    if a.json:
        Path(a.json).write_text(json.dumps({"weights": weights, "threads": torch.get_num_threads(),
                                            "rows": rows, "errors": errors, "total_materialised_s": tm,
                                            "total_fused_s": tf}, indent=1))


if __name__ == "__main__":
    main()
