"""Near-duplicate images in BUSI, and what they do to a cross-validation.

BUSI (Al-Dhabyani et al. 2020) holds several frames of one lesion, some near-identical, and comes without
patient IDs, so a random split can put one frame in training and its twin in validation (the validation
score then partly measures recall of a seen image), and twins sometimes carry different labels (an error
no model can avoid on both). This finds the near-duplicates and scores stored out-of-fold logits apart:

    python -m training.ultrascan.duplicates ../shared/data/busi --split splits/busi_5fold.json \
        --runs docs/eval/busi_lite0_variants/s1 docs/eval/busi_teacher_student/teacher_lite0 \
        --out docs/eval/busi_duplicates.json

Two images are near-duplicates when the Pearson correlation of their 32 x 32 grey thumbnails is at least
--threshold (0.95: on BUSI the pairwise correlations thin out to a gap between 0.92 and 0.96, and pairs
above it looked like one view when inspected); groups are the connected components of that relation.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from UltraScanClassifierLib.images import check_image, read_image
from UltraScanClassifierLib.model import CLASSES

from .data import label_of, list_busi, load_split
from .evaluate import load_folds


def thumbnails(root, names, size: int = 32) -> np.ndarray:
    """(len(names), size*size) grey thumbnails, each standardised to zero mean and unit norm."""
    from PIL import Image

    out = np.empty((len(names), size * size), np.float64)
    for i, n in enumerate(names):
        arr, _ = read_image(Path(root) / n)
        g = check_image(arr, n).mean(axis=2)
        t = np.asarray(Image.fromarray((g * 255).astype(np.float32)).resize((size, size), Image.BILINEAR),
                       np.float64).ravel()
        t = t - t.mean()
        out[i] = t / max(np.linalg.norm(t), 1e-12)
    return out


def near_duplicate_groups(vectors: np.ndarray, threshold: float = 0.95) -> list[list[int]]:
    """Connected components (size >= 2) of `correlation >= threshold`, as sorted index lists."""
    n = len(vectors)
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i
    sim = vectors @ vectors.T
    for i, j in zip(*np.nonzero(np.triu(sim >= threshold, 1))):
        parent[find(i)] = find(j)
    comps: dict[int, list[int]] = {}
    for i in range(n):
        comps.setdefault(find(i), []).append(i)
    return sorted((sorted(c) for c in comps.values() if len(c) > 1), key=lambda c: c[0])


def twins_in_training(names, groups, folds) -> dict[str, str]:
    """For each image with a near-duplicate in another fold: "same" if one of those twins has its label,
    else "different" (only twins of other labels are seen in training)."""
    fold_of = {n: fi for fi, f in enumerate(folds) for n in f}
    out = {}
    for g in groups:
        for i in g:
            others = [names[j] for j in g if j != i and fold_of[names[j]] != fold_of[names[i]]]
            if others:
                same = any(label_of(o) == label_of(names[i]) for o in others)
                out[names[i]] = "same" if same else "different"
    return out


def score_runs(runs, kind: dict[str, str]) -> dict:
    """Accuracy of each run's out-of-fold predictions on images with a same-label twin in training, a
    twin of another label only, and no twin in training."""
    res = {}
    for r in runs:
        right = {"same": [], "different": [], "none": []}
        for f in load_folds(r):
            for n, y, lg in zip(f["names"], f["labels"], f["logits"]):
                right[kind.get(str(n), "none")].append(int(np.argmax(lg)) == int(y))
        res[str(r)] = {k: {"n": len(v), "accuracy": float(np.mean(v)) if v else None} for k, v in right.items()}
        allv = [x for v in right.values() for x in v]
        res[str(r)]["all"] = {"n": len(allv), "accuracy": float(np.mean(allv))}
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="BUSI root (benign/ malignant/ normal/)")
    ap.add_argument("--split", required=True)
    ap.add_argument("--runs", nargs="*", default=[], help="cross-validation run folders (fold*/val_logits.npz)")
    ap.add_argument("--threshold", type=float, default=0.95)
    ap.add_argument("--out", default=None, help="write the groups and scores as JSON here")
    a = ap.parse_args(argv)
    names = [n for n, _ in list_busi(a.data)]
    split = load_split(a.split)
    groups = near_duplicate_groups(thumbnails(a.data, names), a.threshold)
    conflicts = [g for g in groups if len({label_of(names[i]) for i in g}) > 1]
    kind = twins_in_training(names, groups, split["folds"])
    in_groups = sum(len(g) for g in groups)
    print(f"{len(names)} images: {len(groups)} near-duplicate groups holding {in_groups} images "
          f"(threshold {a.threshold}); {len(conflicts)} groups mix labels:")
    for g in conflicts:
        print("   ", " | ".join(names[i] for i in g))
    n_same = sum(v == "same" for v in kind.values())
    print(f"validation images with a near-duplicate in their training folds: {len(kind)} "
          f"({n_same} with the same label, {len(kind) - n_same} only with another label)")
    scores = score_runs(a.runs, kind)
    for r, s in scores.items():
        cells = "  ".join(f"{k} {v['accuracy']:.3f} (n {v['n']})" for k, v in s.items() if v["accuracy"] is not None)
        print(f"{r}: {cells}")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({
            "threshold": a.threshold, "thumbnail": 32, "classes": list(CLASSES),
            "groups": [[names[i] for i in g] for g in groups],
            "mixed_label_groups": [[names[i] for i in g] for g in conflicts],
            "twin_in_training": kind, "runs": scores}, indent=1))


if __name__ == "__main__":
    main()
