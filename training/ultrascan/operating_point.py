"""A malignant-favouring decision rule, chosen by cross-validation: how much malignant recall (the error that
matters, issue 11) a shift of the malignant logit buys, and what it costs in accuracy.

For each fold, the shift b is chosen on the other four folds' out-of-fold logits: the largest b in a grid
whose accuracy there stays within `max_loss` of the plain arg-max; it is then applied to the held-out fold.
So no image is scored with a b chosen on it.

    python -m training.ultrascan.operating_point docs/eval/busi_teacher_student/teacher_lite0 \
        docs/eval/busi_lite0_variants/s1 --max-loss 0.01
"""
from __future__ import annotations

import argparse

import numpy as np

from UltraScanClassifierLib.metrics import confusion_matrix, precision_recall_f1
from UltraScanClassifierLib.model import CLASSES

from .evaluate import load_folds

MALIGNANT = CLASSES.index("malignant")


def shifted_predictions(logits: np.ndarray, b: float) -> np.ndarray:
    """Arg-max after adding b to the malignant logit (ties to the lower index, as numpy's argmax)."""
    t = np.array(logits, dtype=np.float64, copy=True)
    t[:, MALIGNANT] += b
    return t.argmax(1)


def choose_shift(logits: np.ndarray, labels: np.ndarray, max_loss: float, grid=None) -> float:
    """The largest shift of the grid whose accuracy on (logits, labels) is at most `max_loss` below b = 0's."""
    grid = np.round(np.arange(0.0, 3.0001, 0.05), 2) if grid is None else grid
    base = float((shifted_predictions(logits, 0.0) == labels).mean())
    best = 0.0
    for b in grid:
        if float((shifted_predictions(logits, b) == labels).mean()) >= base - max_loss - 1e-12:
            best = float(b)
    return best


def nested(folds: list[dict], max_loss: float) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Out-of-fold predictions with each fold's shift chosen on the other folds -> (pred, labels, shifts)."""
    preds, shifts = [], []
    for i, f in enumerate(folds):
        rest = [g for j, g in enumerate(folds) if j != i]
        b = choose_shift(np.concatenate([g["logits"] for g in rest]), np.concatenate([g["labels"] for g in rest]),
                         max_loss)
        shifts.append(b)
        preds.append(shifted_predictions(f["logits"], b))
    return np.concatenate(preds), np.concatenate([f["labels"] for f in folds]), shifts


def rates(pred: np.ndarray, labels: np.ndarray) -> dict:
    """Accuracy, macro-F1 and per-class recall of class predictions (the runtime's metrics on a confusion
    matrix)."""
    cm = confusion_matrix(labels, pred, len(CLASSES))
    _, recall, f1 = precision_recall_f1(cm)
    return {"accuracy": float((pred == labels).mean()), "macro_f1": float(f1.mean()),
            **{f"recall_{name}": float(recall[c]) for c, name in enumerate(CLASSES)}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="folders of fold*_val_logits.npz (or fold*/val_logits.npz)")
    p.add_argument("--max-loss", type=float, default=0.01, help="accuracy the shift may cost on the other folds")
    a = p.parse_args(argv)
    cols = ("accuracy", "macro_f1", "recall_malignant", "recall_benign", "recall_normal")
    print("| run | rule | " + " | ".join(cols) + " | shifts per fold |")
    print("|---|---|" + "---|" * (len(cols) + 1))
    for run in a.runs:
        folds = load_folds(run)
        labels = np.concatenate([f["labels"] for f in folds])
        plain = rates(np.concatenate([f["logits"] for f in folds]).argmax(1), labels)
        pred, _, shifts = nested(folds, a.max_loss)
        shifted = rates(pred, labels)
        for rule, r, s in (("arg-max", plain, ""), (f"malignant shift, nested (<= {a.max_loss} accuracy)", shifted,
                                                     " / ".join(f"{b:.2f}" for b in shifts))):
            print(f"| {run} | {rule} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + f" | {s} |")


if __name__ == "__main__":
    main()
