"""Overlap and surface metrics on physical spacing (MONAI for the surface distances)."""
from __future__ import annotations

import numpy as np


def overlap_metrics(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Dice, Jaccard, precision, recall, F1 (= Dice) and F2 of two binary arrays of one shape."""
    p = np.asarray(pred).astype(bool)
    t = np.asarray(truth).astype(bool)
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and reference {t.shape} differ in shape")
    tp = float(np.logical_and(p, t).sum())
    fp = float(np.logical_and(p, ~t).sum())
    fn = float(np.logical_and(~p, t).sum())
    eps = 1e-12
    prec = tp / (tp + fp) if tp + fp else (1.0 if not t.any() else 0.0)
    rec = tp / (tp + fn) if tp + fn else 1.0
    dice = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 1.0
    jac = tp / (tp + fp + fn) if (tp + fp + fn) else 1.0
    f2 = 5 * prec * rec / (4 * prec + rec + eps) if (prec + rec) else 0.0
    return dict(dice=dice, jaccard=jac, precision=prec, recall=rec, f1=dice, f2=f2)


def segmentation_metrics(pred: np.ndarray, truth: np.ndarray, spacing_kji) -> dict:
    """pred, truth: binary arrays (k, j, i); spacing_kji in mm. Volumes in mL."""
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    out = overlap_metrics(pred, truth)
    p = np.asarray(pred).astype(bool)
    t = np.asarray(truth).astype(bool)
    vox_ml = float(np.prod(spacing_kji)) / 1000.0
    out.update(volume_pred_ml=float(p.sum()) * vox_ml, volume_ref_ml=float(t.sum()) * vox_ml)
    out["volume_diff_ml"] = out["volume_pred_ml"] - out["volume_ref_ml"]
    if p.any() and t.any():
        pt = torch.from_numpy(p)[None, None]
        tt = torch.from_numpy(t)[None, None]
        sp = [float(s) for s in spacing_kji]
        out["hd95_mm"] = float(compute_hausdorff_distance(pt, tt, percentile=95, spacing=sp)[0, 0])
        out["assd_mm"] = float(compute_average_surface_distance(pt, tt, symmetric=True, spacing=sp)[0, 0])
    else:
        out["hd95_mm"] = float("nan")
        out["assd_mm"] = float("nan")
    return out
