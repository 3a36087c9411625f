"""Evaluate SRMA-Mamba weights on labelled volumes through the same inference path as the module.

    python -m SRMASegmenterLib.evaluate --data ../shared/data/chaos-mr-t2 --split splits/chaos_t2.json \
        --out runs/eval [--weights FOLDER_OR_FILE] [--device cpu|cuda] [--subset val|train|all]

Writes metrics.csv (per case), metrics.json (per case, mean and sd), and one overlay PNG per case
(image, reference, prediction on the slice with the most liver). Metrics are in physical spacing
(mm, mL) on the input grid, whose geometry is kept.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import numpy as np


def overlay_png(img_kji, truth, pred, path, title=""):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = int(np.argmax(truth.reshape(truth.shape[0], -1).sum(1))) if truth.any() else img_kji.shape[0] // 2
    fig, ax = plt.subplots(1, 3, figsize=(10, 3.6))
    for a, (m, name, col) in zip(ax, [(None, "image", None), (truth, "reference", "lime"), (pred, "prediction", "red")]):
        a.imshow(img_kji[k], cmap="gray")
        if m is not None:
            a.contour(m[k].astype(float), levels=[0.5], colors=col, linewidths=1)
        a.set_title(name)
        a.axis("off")
    fig.suptitle(f"{title} (slice {k})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--split")
    p.add_argument("--subset", default="val", choices=["val", "train", "all"])
    p.add_argument("--out", default="runs/eval")
    p.add_argument("--weights")
    p.add_argument("--device", default="auto")
    p.add_argument("--cases", nargs="*", help="only these case ids")
    a = p.parse_args(argv)

    from .data import find_cases, split_cases
    from .inference import LiverSegmenter
    from .metrics import segmentation_metrics
    from .volumes import read_volume

    found = find_cases(a.data)
    if a.subset == "all":
        cases = found["cases"]
    else:
        tr, va = split_cases(found, a.split)
        cases = va if a.subset == "val" else tr
    if a.cases:
        cases = [c for c in cases if c["id"] in set(a.cases)]
    seg = LiverSegmenter.load(a.weights, device=a.device)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for c in cases:
        img, geom = read_volume(c["image"])
        lab, _ = read_volume(c["label"])
        truth = (lab == c["liver_label"]) if c["liver_label"] is not None else (lab > 0)
        mask, info = seg.predict(img, geom)
        m = segmentation_metrics(mask, truth, tuple(geom.spacing)[::-1])
        m.update(id=c["id"], seconds=info["seconds"], device=info["device"])
        rows.append(m)
        overlay_png(img, truth, mask.astype(bool), out / f"{c['id']}_overlay.png",
                    f"{c['id']}: Dice {m['dice']:.3f}, HD95 {m['hd95_mm']:.1f} mm")
        print(f"{c['id']}: Dice {m['dice']:.4f}  HD95 {m['hd95_mm']:.1f} mm  ASSD {m['assd_mm']:.2f} mm  "
              f"vol err {m['volume_diff_ml']:+.0f} mL  {info['seconds']:.1f} s ({info['device']})", flush=True)
    keys = ["id", "dice", "jaccard", "precision", "recall", "f1", "f2", "hd95_mm", "assd_mm", "volume_pred_ml",
            "volume_ref_ml", "volume_diff_ml", "seconds", "device"]
    with open(out / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows([{k: r[k] for k in keys} for r in rows])
    summary = {}
    for k in keys[1:-1]:
        vals = [r[k] for r in rows if not (isinstance(r[k], float) and math.isnan(r[k]))]
        if vals:
            summary[k] = {"mean": float(np.mean(vals)), "sd": float(np.std(vals))}
    (out / "metrics.json").write_text(json.dumps({"weights": seg.weights_id, "cases": rows, "summary": summary},
                                                 indent=1))
    print("mean: " + ", ".join(f"{k} {v['mean']:.4g}" for k, v in summary.items()))
    return summary


if __name__ == "__main__":
    main()
