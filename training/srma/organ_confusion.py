"""Where each reference organ of a CHAOS case goes in a 5-class model's prediction, and where the predicted
organs lie, through the module's inference path (CPU is fine: one window per volume):

    python -m training.srma.organ_confusion --data ../shared/data/chaos-mr-t2 --weights FOLDER --cases case_36

Prints, per case, a confusion table (reference label x predicted label, in mL), and for each organ the
centroid of the reference and of the prediction (mm apart) and the median grey value inside each.
"""
from __future__ import annotations

import argparse

import numpy as np

from .evaluate import CHAOS_LABELS

NAMES = ("background", *sorted(CHAOS_LABELS, key=CHAOS_LABELS.get))   # index = CHAOS label value


def predicted_labels(mask, organs, shape):
    """One CHAOS-valued labelmap from the liver mask and the other organs' masks (in NAMES order)."""
    pred = np.zeros(shape, np.uint8)
    pred[mask.astype(bool)] = 1
    for v, name in enumerate(NAMES[2:], start=2):
        if name in organs:
            pred[organs[name].astype(bool)] = v
    return pred


def confusion_ml(ref, pred, voxel_ml, n=len(NAMES)):
    """n x n table: row = reference label, column = predicted label, volume in mL."""
    return np.bincount(ref.astype(np.int64).ravel() * n + pred.astype(np.int64).ravel(),
                       minlength=n * n).reshape(n, n) * voxel_ml


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--cases", nargs="+", required=True)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    from scipy import ndimage

    from .data import find_cases
    from SRMASegmenterLib.inference import LiverSegmenter
    from SRMASegmenterLib.volumes import read_volume

    seg = LiverSegmenter.load(a.weights, device=a.device)
    for c in [c for c in find_cases(a.data)["cases"] if c["id"] in set(a.cases)]:
        img, geom = read_volume(c["image"])
        ref, _ = read_volume(c["label"])
        mask, info = seg.predict(img, geom, organs=[o for o in NAMES[2:] if o in seg.organs])
        pred = predicted_labels(mask, info["organs"], ref.shape)
        sp_kji = np.asarray(tuple(geom.spacing)[::-1], float)
        table = confusion_ml(ref, pred, float(np.prod(geom.spacing)) / 1000)
        print(f"{c['id']} ({seg.weights_id}): reference (rows) x prediction (columns), mL")
        print("  " + " ".join(f"{n:>13}" for n in ("", *NAMES)))
        for i, n in enumerate(NAMES):
            print("  " + f"{n:>13} " + " ".join(f"{x:13.1f}" for x in table[i]))
        for v, n in enumerate(NAMES[1:], start=1):
            r, q = ref == v, pred == v
            if not r.any() or not q.any():
                print(f"  {n}: reference {r.sum()} voxels, prediction {q.sum()} voxels")
                continue
            dist = np.linalg.norm((np.array(ndimage.center_of_mass(r)) - ndimage.center_of_mass(q)) * sp_kji)
            print(f"  {n}: centroids {dist:.0f} mm apart; median grey value reference {np.median(img[r]):.0f}, "
                  f"prediction {np.median(img[q]):.0f}")


if __name__ == "__main__":
    main()
