"""The user's path end to end, with where the time goes: Segment Liver on CHAOS volumes, and ultrasound
classification with its heatmap, for every shipped model.

    python benchmarks/bench_pipeline.py --device cpu --threads 2       # this machine / CI class
    python benchmarks/bench_pipeline.py --device cuda                  # on the lent GPU
    python benchmarks/bench_pipeline.py --device cuda --amp            # + the liver model in bf16, same run
    python benchmarks/bench_pipeline.py --device cuda --amp --graphs both   # bf16 with and without CUDA graphs

Liver: read the NIfTI, `LiverSegmenter.predict` (orientation, normalisation, resampling, windows, model,
resampling back, argmax, largest component, hole filling; its own per-stage timings), write the labelmap.
Each case once as warm-up, then --repeats timed runs; medians per stage over runs and cases, and of
`predict` alone (the module's path: its volume node already holds the array). Peak memory:
the process's peak resident set (CPU) or torch's peak allocated (CUDA). Ultrasound: `classify` on the
bundled samples with and without the Grad-CAM heatmap, per shipped model. Prints tables, writes --json.
Data: ../shared/data/chaos-mr-t2 when present, else the bundled sample volume.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in ("SRMASegmenter", "UltraScanClassifier", "SlicerAICommon", "kernels"):
    sys.path.insert(0, str(ROOT / p))

import torch  # noqa: E402


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def liver(args, dev, amp=False, graphs=True):
    from SRMASegmenterLib.inference import InferenceConfig, LiverSegmenter
    from SRMASegmenterLib.volumes import read_volume, write_volume

    data = Path(args.data) if args.data else ROOT.parent / "shared" / "data" / "chaos-mr-t2"
    files = sorted(data.glob("case_*_t2.nii.gz"))[: args.cases] if data.is_dir() else []
    files = files or [ROOT / "SRMASegmenter" / "Resources" / "SampleData" / "chaos_case20_t2.nii.gz"]
    seg = LiverSegmenter.load(device=str(dev), config=InferenceConfig(amp=amp, cuda_graphs=graphs))
    stages, totals, shapes, masks, predicts, graph_state = {}, [], [], [], [], set()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        for f in files:
            for rep in range(args.repeats + 1):
                t0 = time.perf_counter()
                arr, geom = read_volume(f)
                t1 = time.perf_counter()
                mask, info = seg.predict(arr, geom)
                sync(dev)
                t2 = time.perf_counter()
                if not args.no_write:
                    write_volume(mask, geom, Path(tmp) / "liver.nii.gz")
                t3 = time.perf_counter()
                graph_state.add(info.get("cuda_graph", "n/a (cpu)"))
                if rep == 0:                   # warm-up (first-call allocation, kernel compilation)
                    shapes.append(arr.shape)
                    masks.append(mask)
                    continue
                row = {"read": t1 - t0, **info["timings_s"], "write": t3 - t2}
                for k, v in row.items():
                    stages.setdefault(k, []).append(v)
                totals.append(t3 - t0)
                predicts.append(t2 - t1)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"weights": seg.weights_id, "amp": "bf16" if amp else "fp32", "masks": masks,
            "cuda_graphs": sorted(graph_state), "median_predict_s": statistics.median(predicts),
            "cases": [f.name for f in files], "shapes_kji": [list(s) for s in shapes],
            "runs": len(totals), "median_total_s": statistics.median(totals),
            "median_stage_s": {k: statistics.median(v) for k, v in stages.items()},
            "peak_mib": peak, "peak_kind": "torch max allocated" if dev.type == "cuda" else "process max RSS"}


def ultrasound(args, dev):
    from UltraScanClassifierLib.images import read_image
    from UltraScanClassifierLib.inference import UltrasoundClassifier

    imgs = [read_image(p)[0] for p in sorted((ROOT / "UltraScanClassifier" / "Resources" / "SampleData").glob("*.png"))]
    out = {}
    for name in args.us_models or UltrasoundClassifier.model_names():
        clf = UltrasoundClassifier.load(name, device=str(dev))
        # the heatmap by Grad-CAM's backward on the eager network (the path before session 12), in closed form
        # on the eager network, and the module's path (closed form, on the CPU the frozen network where the
        # model allows), with the heatmap and without; interleaved image by image so that a busy machine
        # slows all of them alike. Where the manifest asks for the heatmap from a finer second forward
        # (heatmap_size), the module's path does that and "heatmap from the classifying forward" is the path before it
        freeze, size = clf.cpu_freeze, clf.heatmap_size
        modes = {"heatmap, backward, eager": (True, False, False, None),
                 "heatmap, closed form, eager": (True, True, False, None)}
        if size:
            modes["heatmap from the classifying forward"] = (True, True, freeze, None)
        modes.update({"with heatmap": (True, True, freeze, size), "label only": (False, True, freeze, size)})
        ts = {k: [] for k in modes}
        for rep in range(args.repeats * 3 + 1):
            for im in imgs:
                for k, (heat, analytic, frozen, hsize) in modes.items():
                    clf.analytic_cam, clf.cpu_freeze, clf.heatmap_size = analytic, frozen, hsize
                    t = time.perf_counter()
                    clf.classify(im, heatmap=heat)
                    sync(dev)
                    if rep:                   # the first round warms up (and freezes)
                        ts[k].append(time.perf_counter() - t)
        clf.analytic_cam, clf.cpu_freeze, clf.heatmap_size = True, freeze, size
        out[clf.weights_id] = {k: statistics.median(v) for k, v in ts.items()}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--cases", type=int, default=3, help="CHAOS volumes to time (from ../shared)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--data", default=None, help="folder of case_*_t2.nii.gz (default ../shared/data/chaos-mr-t2)")
    ap.add_argument("--amp", action="store_true", help="also time the liver model in bf16 (GPU) and compare masks")
    ap.add_argument("--graphs", default="on", choices=["on", "off", "both"],
                    help="CUDA graphs for the window (GPU): on (the default path), off, or both in one run")
    ap.add_argument("--no-write", action="store_true", help="skip writing the labelmap (no SimpleITK)")
    ap.add_argument("--skip-liver", action="store_true")
    ap.add_argument("--skip-ultrasound", action="store_true")
    ap.add_argument("--us-models", nargs="+", default=None, metavar="MODEL",
                    help="ultrasound models to time: shipped names or model folders (default: every shipped model), "
                         "e.g. a replaced model's folder beside its successor, in one run")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    res = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else f"cpu, {torch.get_num_threads()} threads",
           "torch": torch.__version__}
    if not a.skip_liver:
        gs = {"on": [True], "off": [False], "both": [False, True]}[a.graphs]
        runs = [liver(a, dev, graphs=g) for g in gs] + ([liver(a, dev, amp=True, graphs=g) for g in gs] if a.amp else [])
        ref = runs[0]["masks"]
        for lv in runs:
            masks = lv.pop("masks")
            if lv["amp"] != "fp32":           # agreement with the fp32 masks of the same cases
                lv["dice_vs_fp32"] = [float(2 * (m & r).sum() / max(1, m.sum() + r.sum())) for m, r in zip(masks, ref)]
            print(f"\nSegment Liver ({lv['weights']}, {res['device']}, {lv['amp']}, CUDA graph {lv['cuda_graphs']}): "
                  f"{len(lv['cases'])} volumes {lv['shapes_kji']}, {lv['runs']} timed runs; median total "
                  f"{lv['median_total_s']:.3f} s, predict alone {lv['median_predict_s']:.3f} s; "
                  f"peak {lv['peak_mib']:.0f} MiB ({lv['peak_kind']})"
                  + (f"; Dice vs fp32 masks {['%.4f' % d for d in lv['dice_vs_fp32']]}" if "dice_vs_fp32" in lv else ""))
            print("| stage | median s | share |\n|---|---|---|")
            tot = sum(lv["median_stage_s"].values())
            for k, v in lv["median_stage_s"].items():
                print(f"| {k} | {v:.3f} | {100 * v / tot:.0f}% |")
        res["liver"] = runs[0]
        res["liver_runs"] = runs
    if not a.skip_ultrasound:
        res["ultrasound"] = us = ultrasound(a, dev)
        print(f"\nUltrasound classification ({res['device']}), median per image over the 3 samples:")
        cols = list(dict.fromkeys(c for v in us.values() for c in v))
        print("| model | " + " | ".join(c.replace("with heatmap", "module path with heatmap (now)") + " ms"
                                      for c in cols) + " |\n" + "|---" * (len(cols) + 1) + "|")
        for k, v in us.items():
            print(f"| {k} | " + " | ".join(f"{1000 * v[c]:.0f}" if c in v else "-" for c in cols) + " |")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
