"""BUSI data: listing (`benign/ malignant/ normal/`, grayscale or RGB PNG, any size, `*_mask.png`
ignored), the stratified 5-fold split file, and loading all images into one uint8 tensor.

    python -m training.ultrascan.data split ../shared/data/busi splits/busi_5fold.json
    python -m training.ultrascan.data split ../shared/data/busi splits/busi_5fold_grouped.json \
        --groups docs/eval/busi_duplicates.json     # near-duplicates kept in one fold
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


from UltraScanClassifierLib.images import check_image, list_images, read_image
from UltraScanClassifierLib.model import CLASSES


def list_busi(root) -> list[tuple[str, int]]:
    """(path relative to root, class index) for every image; class from the first folder level."""
    root = Path(root)
    missing = [c for c in CLASSES if not (root / c).is_dir()]
    if missing:
        raise FileNotFoundError(f"{root}: BUSI layout needs folders {list(CLASSES)}; missing {missing}")
    items = []
    for ci, c in enumerate(CLASSES):
        items += [(p.relative_to(root).as_posix(), ci) for p in list_images(root / c)]
    if not items:
        raise FileNotFoundError(f"{root}: no images found")
    return items


def make_split(root, k: int = 5, seed: int = 0, groups: list[list[str]] | None = None) -> dict:
    """Stratified k folds: each class shuffled with `seed`, then dealt round-robin to the folds.

    With `groups` (lists of image names that must share a fold, e.g. the near-duplicate groups of
    training/ultrascan/duplicates.py), each group is dealt as one unit, under the class of its first
    member, to the fold that holds fewest images of that class so far (ties: the lower fold)."""
    items = list_busi(root)
    rng = random.Random(seed)
    folds = [[] for _ in range(k)]
    if not groups:
        for ci in range(len(CLASSES)):
            names = sorted(n for n, c in items if c == ci)
            rng.shuffle(names)
            for i, n in enumerate(names):
                folds[i % k].append(n)
        out = {"dataset": "BUSI (Al-Dhabyani et al., Data in Brief 28, 2020)", "k": k, "seed": seed,
               "classes": list(CLASSES), "n": len(items), "folds": [sorted(f) for f in folds]}
        return out
    known = {n for n, _ in items}
    unit_of = {}
    for g in groups:
        missing = [n for n in g if n not in known]
        if missing:
            raise ValueError(f"groups name images that are not in {root}: {missing[:3]}")
        for n in g:
            if n in unit_of:
                raise ValueError(f"{n} is in two groups")
            unit_of[n] = tuple(sorted(g))
    units = sorted({unit_of.get(n, (n,)) for n, _ in items})
    per_class = [[0] * k for _ in CLASSES]
    for ci in range(len(CLASSES)):
        mine = [u for u in units if label_of(u[0]) == ci]
        rng.shuffle(mine)
        mine.sort(key=len, reverse=True)             # big groups first, then the shuffled singles
        for u in mine:
            fi = min(range(k), key=lambda f: (per_class[ci][f], f))
            folds[fi].extend(u)
            per_class[ci][fi] += len(u)
    return {"dataset": "BUSI (Al-Dhabyani et al., Data in Brief 28, 2020)", "k": k, "seed": seed,
            "classes": list(CLASSES), "n": len(items), "grouped": "near-duplicate groups kept in one fold",
            "folds": [sorted(f) for f in folds]}


def load_split(path) -> dict:
    s = json.loads(Path(path).read_text())
    flat = [n for f in s["folds"] for n in f]
    if len(flat) != len(set(flat)):
        raise ValueError(f"{path}: an image appears in two folds")
    return s


def label_of(name: str) -> int:
    return CLASSES.index(name.split("/")[0])


def load_images(root, names, size: int = 256):
    """All images as one uint8 tensor (N, 3, size, size) (resized whole, antialiased) + labels."""
    import torch
    import torch.nn.functional as F

    root = Path(root)
    out = torch.empty(len(names), 3, size, size, dtype=torch.uint8)
    for i, n in enumerate(names):
        arr, _ = read_image(root / n)
        x = torch.from_numpy(check_image(arr, n)).permute(2, 0, 1)[None]
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[i] = (x[0].clamp(0, 1) * 255).round().to(torch.uint8)
    labels = torch.tensor([label_of(n) for n in names], dtype=torch.long)
    return out, labels


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("split", help="write the stratified k-fold split file")
    sp.add_argument("root")
    sp.add_argument("out")
    sp.add_argument("--k", type=int, default=5)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--groups", default=None,
                    help="JSON with 'groups' (lists of names kept in one fold), e.g. duplicates.py's --out")
    a = ap.parse_args(argv)
    groups = json.loads(Path(a.groups).read_text())["groups"] if a.groups else None
    s = make_split(a.root, a.k, a.seed, groups)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(s, indent=1))
    counts = [[sum(label_of(n) == c for n in f) for c in range(len(CLASSES))] for f in s["folds"]]
    print(f"{s['n']} images, {a.k} folds; per fold {list(CLASSES)}: {counts}")


if __name__ == "__main__":
    main()
