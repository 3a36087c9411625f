"""The best liver Dice a model can reach when its output lives on a coarser grid than the reference labels.

SRMA-Mamba's patch embedding is a stride-2 convolution on every axis, so its finest decoder output is at half
the resolution of the grid it is given: trained on 2.5 x 2.5 x 7.7 mm volumes, its prediction is effectively
on a 5 x 5 x 15.4 mm grid, trilinearly upsampled. This script measures what that costs with no model at all:
each reference label map (one-hot, at its native spacing) is averaged down to a target grid (partial volume,
as a perfect network would see it), upsampled back trilinearly, and its argmax scored against the reference.

    python -m training.srma.resolution_ceiling --data ../shared/data/chaos-mr-t2 \
        --grids 2.5,2.5,7.7 5,5,15.4 5,5,7.7 --csv docs/eval/liver_resolution_ceiling/ceiling.csv
"""
from __future__ import annotations

import argparse
import csv
import glob
import os

import numpy as np


def liver_dice_through_grid(labels: np.ndarray, spacing, grid, n_classes: int = 5, liver: int = 1) -> float:
    """Liver Dice of the reference after a round trip through a grid of ``grid`` mm (area down, trilinear up)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(labels.astype(np.int64))
    onehot = F.one_hot(t, n_classes).permute(3, 0, 1, 2)[None].float()
    size = [max(1, int(round(n * s / g))) for n, s, g in zip(labels.shape, spacing, grid)]
    low = F.adaptive_avg_pool3d(onehot, size)     # each coarse voxel: the class fractions it covers
    back = F.interpolate(low, size=labels.shape, mode="trilinear", align_corners=False)
    pred = back.argmax(1)[0].numpy() == liver
    ref = labels == liver
    return float(2 * (pred & ref).sum() / (pred.sum() + ref.sum()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder of case_XX_labels.nii.gz")
    p.add_argument("--grids", nargs="+", default=["2.5,2.5,7.7", "5,5,15.4", "5,5,7.7", "2.5,2.5,3.85"],
                   help="target grids, i,j,k mm each")
    p.add_argument("--csv", help="write per-case Dice here")
    args = p.parse_args(argv)
    import nibabel as nib

    grids = [tuple(float(v) for v in g.split(",")) for g in args.grids]
    rows = []
    for f in sorted(glob.glob(os.path.join(args.data, "case_*_labels.nii.gz"))):
        img = nib.load(f)
        labels = np.asarray(img.dataobj).astype(np.int64)
        spacing = [float(s) for s in img.header.get_zooms()[:3]]
        case = os.path.basename(f)[: -len("_labels.nii.gz")]
        dice = [liver_dice_through_grid(labels, spacing, g) for g in grids]
        rows.append((case, *dice))
        print(case, " ".join(f"{s:.2f}" for s in spacing), " ".join(f"{d:.4f}" for d in dice), flush=True)
    if not rows:
        raise SystemExit(f"no case_*_labels.nii.gz in {args.data}")
    d = np.array([r[1:] for r in rows])
    print("grid (mm)            mean    min")
    for g, col in zip(args.grids, d.T):
        print(f"{g:<20} {col.mean():.4f}  {col.min():.4f}")
    if args.csv:
        os.makedirs(os.path.dirname(args.csv) or ".", exist_ok=True)
        with open(args.csv, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["case", *[f"dice_{g}" for g in args.grids]])
            w.writerows(rows)


if __name__ == "__main__":
    main()
