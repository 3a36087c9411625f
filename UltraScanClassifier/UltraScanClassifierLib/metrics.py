"""Classification metrics (numpy only): top-1, per-class and macro precision / recall / F1, confusion
matrix, one-vs-rest ROC AUC, expected calibration error; temperature scaling."""
from __future__ import annotations

import math

import numpy as np


def softmax(logits, temperature: float = 1.0):
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def confusion_matrix(y_true, y_pred, k: int):
    """cm[i, j] = number of class-i images predicted as j."""
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return cm


def precision_recall_f1(cm):
    """Per class (arrays); a class never predicted (or absent) gets 0 where the ratio is undefined."""
    tp = np.diag(cm).astype(np.float64)
    pred = cm.sum(axis=0).astype(np.float64)
    true = cm.sum(axis=1).astype(np.float64)
    p = np.divide(tp, pred, out=np.zeros_like(tp), where=pred > 0)
    r = np.divide(tp, true, out=np.zeros_like(tp), where=true > 0)
    f = np.divide(2 * p * r, p + r, out=np.zeros_like(tp), where=(p + r) > 0)
    return p, r, f


def roc_auc(scores, positive):
    """Area under the ROC curve of `scores` for the binary labels `positive` (Mann-Whitney, ties halved)."""
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    ss = s[order]
    i = 0
    while i < len(s):                       # average ranks over ties
        j = i
        while j + 1 < len(s) and ss[j + 1] == ss[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def expected_calibration_error(probs, y_true, bins: int = 15):
    """Top-label ECE with equal-width confidence bins: sum_b |B|/n * |acc(B) - conf(B)|."""
    probs = np.asarray(probs, dtype=np.float64)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y_true)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def classification_report(logits, y_true, classes, temperature: float = 1.0) -> dict:
    y_true = np.asarray(y_true)
    probs = softmax(logits, temperature)
    pred = probs.argmax(axis=1)
    k = len(classes)
    cm = confusion_matrix(y_true, pred, k)
    p, r, f = precision_recall_f1(cm)
    aucs = [roc_auc(probs[:, c], y_true == c) for c in range(k)]
    nll = float(-np.mean(np.log(np.clip(probs[np.arange(len(y_true)), y_true], 1e-12, None))))
    return {
        "n": int(len(y_true)), "accuracy": float((pred == y_true).mean()),
        "macro_precision": float(p.mean()), "macro_recall": float(r.mean()), "macro_f1": float(f.mean()),
        "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "auc": aucs[i],
                          "support": int(cm[i].sum())} for i, c in enumerate(classes)},
        "macro_auc": float(np.nanmean(aucs)), "ece": expected_calibration_error(probs, y_true), "nll": nll,
        "temperature": float(temperature), "confusion_matrix": cm.tolist(),
    }


def fit_temperature(logits, y_true, lo: float = 0.05, hi: float = 20.0, iters: int = 100) -> float:
    """Temperature T minimising the NLL of softmax(logits / T) (golden-section search on log T;
    the NLL is convex in 1/T)."""
    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y_true)

    def nll(log_t):
        p = softmax(logits, math.exp(log_t))
        return -np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-300, None)))

    a, b = math.log(lo), math.log(hi)
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(d)
    return float(math.exp((a + b) / 2))


def heatmap_scores(heatmaps, masks, radius_px: float = 15.0, percentile: float = 80.0,
                   per_image: bool = False) -> dict:
    """Does the heatmap point at the lesion? heatmaps, masks: (N, H, W) on the same pixel grid (256 x 256
    for BUSI), masks boolean; images with an empty mask are skipped.
    pointing game: the hottest pixel lies within radius_px of the mask (distance 0 inside it);
    IoU: heatmap above its own `percentile`-th percentile vs the mask. -> means and counts; per_image: also
    "hits", each scored image's pointing-game outcome (0 / 1), for paired tests."""
    from scipy import ndimage

    hits, ious = [], []
    for h, m in zip(np.asarray(heatmaps, dtype=np.float64), np.asarray(masks, dtype=bool)):
        if not m.any():
            continue
        dist = ndimage.distance_transform_edt(~m)
        iy, ix = np.unravel_index(int(np.argmax(h)), h.shape)
        hits.append(float(dist[iy, ix] <= radius_px))
        hot = h >= np.percentile(h, percentile)
        ious.append(float((hot & m).sum() / max(1, (hot | m).sum())))
    out = {"pointing_game": float(np.mean(hits)) if hits else float("nan"),
           "heatmap_iou": float(np.mean(ious)) if ious else float("nan"), "n": len(hits)}
    return {**out, "hits": [int(v) for v in hits]} if per_image else out
