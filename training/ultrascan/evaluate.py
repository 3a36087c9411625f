"""Cross-validated evaluation: per fold and mean +- sd of top-1, per-class and macro precision /
recall / F1, one-vs-rest ROC AUC, expected calibration error; confusion matrix PNG; the calibration
temperature fitted on the pooled out-of-fold logits (every image scored by the model that never saw it).

    # from cross-validation runs (train.py writes val_logits.npz into each fold folder)
    python -m training.ultrascan.evaluate runs/cv/ultrascannet --out docs/eval/ultrascannet
    # several seeds of one recipe as one classifier (their logits averaged, as the runtime's ensemble does)
    python -m training.ultrascan.evaluate runs/us/cw1 runs/us/cw2 --ensemble --out docs/eval/cw_ensemble
    # or a trained model over labelled images (BUSI layout), e.g. the shipped one on new data
    python -m training.ultrascan.evaluate --model UltraScanClassifier/Resources/Models/ultrascannet_busi \
        --data /path/to/busi_holdout --out out/eval_holdout
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from UltraScanClassifierLib.metrics import classification_report, fit_temperature
from UltraScanClassifierLib.model import CLASSES

SCALARS = ("accuracy", "macro_precision", "macro_recall", "macro_f1", "macro_auc", "ece")


def load_folds(run_dir) -> list[dict]:
    """The out-of-fold logits of a run folder (fold*/val_logits.npz, as train.py writes them) or of its
    copy under docs/eval (fold*_val_logits.npz)."""
    folds = []
    run_dir = Path(run_dir)
    for d in sorted(run_dir.glob("fold[0-9]*")):
        f = d / "val_logits.npz" if d.is_dir() else d
        name = d.name if d.is_dir() else d.name.removesuffix("_val_logits.npz")
        if f.is_file() and (d.is_dir() or d.name.endswith("_val_logits.npz")):
            z = np.load(f)
            folds.append({"fold": name, "names": list(z["names"]), "labels": z["labels"], "logits": z["logits"]})
    if not folds:
        raise FileNotFoundError(f"{run_dir}: no fold*/val_logits.npz or fold*_val_logits.npz")
    return folds


def mean_folds(runs: list[list[dict]]) -> list[dict]:
    """The fold logits of several runs of one split averaged (a seed ensemble, ensemble.MemberMean):
    every run must hold the same folds with the same images and labels in the same order."""
    out = []
    for parts in zip(*runs, strict=True):
        ref = parts[0]
        for p in parts[1:]:
            if p["fold"] != ref["fold"] or p["names"] != ref["names"] or not np.array_equal(p["labels"], ref["labels"]):
                raise ValueError(f"fold {ref['fold']}: the runs do not hold the same images in the same order")
        out.append({**ref, "logits": np.mean([p["logits"] for p in parts], axis=0)})
    return out


def summarize(reports: list[dict]) -> dict:
    out = {}
    for k in SCALARS:
        v = np.array([r[k] for r in reports], dtype=np.float64)
        out[k] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
    return out


def plot_confusion(cm, png, title=""):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    ax.imshow(cm, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(len(CLASSES)), CLASSES)
    ax.set_yticks(range(len(CLASSES)), CLASSES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def evaluate_cv(run_dir, out=None, folds=None) -> dict:
    """run_dir: a cross-validation run folder; folds: its loaded folds instead (e.g. mean_folds)."""
    folds = load_folds(run_dir) if folds is None else folds
    per_fold = {f["fold"]: classification_report(f["logits"], f["labels"], CLASSES) for f in folds}
    logits = np.concatenate([f["logits"] for f in folds])
    labels = np.concatenate([f["labels"] for f in folds])
    t = fit_temperature(logits, labels)
    pooled = classification_report(logits, labels, CLASSES)
    pooled_cal = classification_report(logits, labels, CLASSES, temperature=t)
    res = {"run": str(run_dir), "folds": per_fold, "mean_sd": summarize(list(per_fold.values())),
           "pooled_out_of_fold": pooled, "temperature": t, "pooled_out_of_fold_calibrated": pooled_cal}
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "cv_metrics.json").write_text(json.dumps(res, indent=1))
        plot_confusion(pooled["confusion_matrix"], out / "confusion_pooled.png",
                       f"{Path(run_dir).name}: out-of-fold, n={pooled['n']}")
    return res


def evaluate_model(model_dir, data, out=None, device="auto") -> dict:
    from .data import list_busi
    from UltraScanClassifierLib.inference import UltrasoundClassifier
    clf = UltrasoundClassifier.load(model_dir, device=device)
    items = list_busi(data)
    logits = np.stack([clf.classify_file(Path(data) / n, heatmap=False).logits for n, _ in items])
    labels = np.array([c for _, c in items])
    rep = classification_report(logits, labels, CLASSES, temperature=clf.temperature)
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        Path(out, "metrics.json").write_text(json.dumps(rep, indent=1))
        plot_confusion(rep["confusion_matrix"], Path(out) / "confusion.png", f"{clf.weights_id}, n={rep['n']}")
    return rep


def fmt(ms) -> str:
    return " | ".join(f"{ms[k]['mean']:.3f} +- {ms[k]['sd']:.3f}" for k in SCALARS)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", help="cross-validation run folders (each with fold*/val_logits.npz)")
    ap.add_argument("--model", default=None, help="a model folder to score over --data instead")
    ap.add_argument("--data", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None)
    ap.add_argument("--ensemble", action="store_true",
                    help="also score the runs' logits averaged, as one classifier (a row named A+B)")
    a = ap.parse_args(argv)
    if a.model:
        rep = evaluate_model(a.model, a.data, a.out, a.device)
        print(json.dumps({k: rep[k] for k in SCALARS + ("n",)}, indent=1))
        return
    print("| run | " + " | ".join(SCALARS) + " | T |")
    print("|---|" + "---|" * (len(SCALARS) + 1))
    for r in a.runs:
        out = Path(a.out) / Path(r).name if a.out else None
        res = evaluate_cv(r, out)
        print(f"| {Path(r).name} | {fmt(res['mean_sd'])} | {res['temperature']:.2f} |")
    if a.ensemble and len(a.runs) > 1:
        name = "+".join(Path(r).name for r in a.runs)
        res = evaluate_cv(name, Path(a.out) / name if a.out else None, mean_folds([load_folds(r) for r in a.runs]))
        print(f"| {name} | {fmt(res['mean_sd'])} | {res['temperature']:.2f} |")


if __name__ == "__main__":
    main()
