"""Evaluate SRMA-Mamba weights on labelled volumes through the same inference path as the module.

    python -m training.srma.evaluate --data ../shared/data/chaos-mr-t2 --split splits/chaos_t2.json \
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


def write_csv(path, rows: list[dict], fields=None) -> None:
    """rows as a CSV with a header (fields: the columns, default the first row's keys), its folder made."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields or rows[0]))
        w.writeheader()
        w.writerows(rows)


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


KEYS = ["id", "dice", "jaccard", "precision", "recall", "f1", "f2", "hd95_mm", "assd_mm", "volume_pred_ml",
        "volume_ref_ml", "volume_diff_ml", "spleen_in_liver_ml", "dice_spleen", "dice_right_kidney",
        "dice_left_kidney", "seconds", "device"]
CHAOS_LABELS = {"liver": 1, "right_kidney": 2, "left_kidney": 3, "spleen": 4}


def evaluate_cases(seg, cases, out=None, overlays=True, log=print):
    """Per-case metrics of the liver (and, for a multi-class model on CHAOS, Dice of the other organs and
    the reference spleen's volume that was labelled liver) through the module's inference path.
    Writes metrics.csv / metrics.json (+ overlays) to `out` if given; returns (rows, summary)."""
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)     # overlays are written case by case
    from SRMASegmenterLib.metrics import segmentation_metrics
    from SRMASegmenterLib.volumes import read_volume

    rows = []
    for c in cases:
        img, geom = read_volume(c["image"])
        lab, _ = read_volume(c["label"])
        chaos = c["liver_label"] is not None
        truth = (lab == c["liver_label"]) if chaos else (lab > 0)
        organs = [o for o in seg.organs if o != "liver"] if chaos else []
        mask, info = seg.predict(img, geom, organs=organs)
        m = segmentation_metrics(mask, truth, tuple(geom.spacing)[::-1])
        vox_ml = float(np.prod(geom.spacing)) / 1000
        m["spleen_in_liver_ml"] = float((mask.astype(bool) & (lab == 4)).sum()) * vox_ml if chaos else float("nan")
        for o in ("spleen", "right_kidney", "left_kidney"):
            if o in info["organs"]:
                t, p_ = lab == CHAOS_LABELS[o], info["organs"][o].astype(bool)
                m[f"dice_{o}"] = float(2 * (t & p_).sum() / max(1, t.sum() + p_.sum()))
            else:
                m[f"dice_{o}"] = float("nan")
        m.update(id=c["id"], seconds=info["seconds"], device=info["device"])
        rows.append(m)
        if out is not None and overlays:
            overlay_png(img, truth, mask.astype(bool), Path(out) / f"{c['id']}_overlay.png",
                        f"{c['id']}: Dice {m['dice']:.3f}, HD95 {m['hd95_mm']:.1f} mm")
        log(f"{c['id']}: Dice {m['dice']:.4f}  HD95 {m['hd95_mm']:.1f} mm  ASSD {m['assd_mm']:.2f} mm  "
            f"prec {m['precision']:.3f} rec {m['recall']:.3f}  vol err {m['volume_diff_ml']:+.0f} mL  "
            f"spleen->liver {m['spleen_in_liver_ml']:.1f} mL  {info['seconds']:.1f} s ({info['device']})")
    summary = {}
    for k in KEYS[1:-1]:
        vals = [r[k] for r in rows if not (isinstance(r[k], float) and math.isnan(r[k]))]
        if vals:
            summary[k] = {"mean": float(np.mean(vals)), "sd": float(np.std(vals)), "min": float(np.min(vals)),
                          "max": float(np.max(vals))}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / "metrics.csv", [{k: r.get(k) for k in KEYS} for r in rows], KEYS)
        (out / "metrics.json").write_text(json.dumps({"weights": seg.weights_id, "cases": rows, "summary": summary},
                                                     indent=1))
    return rows, summary


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--split")
    p.add_argument("--fold", help="with a k-fold split file: the fold to evaluate")
    p.add_argument("--subset", default="val", choices=["val", "train", "all"])
    p.add_argument("--out", default="runs/eval")
    p.add_argument("--weights")
    p.add_argument("--device", default="auto")
    p.add_argument("--tta", action="store_true", help="mirror test-time augmentation")
    p.add_argument("--cases", nargs="*", help="only these case ids")
    a = p.parse_args(argv)

    from .data import find_cases, split_cases
    from SRMASegmenterLib.inference import InferenceConfig, LiverSegmenter

    found = find_cases(a.data)
    if a.subset == "all":
        cases = found["cases"]
    else:
        tr, va = split_cases(found, a.split, fold=a.fold)
        cases = va if a.subset == "val" else tr
    if a.cases:
        cases = [c for c in cases if c["id"] in set(a.cases)]
    seg = LiverSegmenter.load(a.weights, device=a.device, config=InferenceConfig(tta=a.tta))
    rows, summary = evaluate_cases(seg, cases, a.out, log=lambda m: print(m, flush=True))
    print("mean: " + ", ".join(f"{k} {v['mean']:.4g}" for k, v in summary.items()))
    return summary


if __name__ == "__main__":
    main()
