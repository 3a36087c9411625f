"""Where a liver model's wrong voxels lie: how far each one is from the reference surface, and what Dice
would be if the errors within d mm of it were right.

A model whose errors sit in a thin band along the surface draws the boundary too coarsely (resolution,
sharpness); one whose errors lie far from it misses or invents tissue (recognition). Distances are in mm on
the input grid (3D, the volume's own spacing): a missed voxel's distance to the nearest voxel outside the
reference liver, a false one's to the nearest voxel inside it. Through the module's inference path:

    python -m training.srma.error_location --data ../shared/data/chaos-mr-t2 --weights MODEL \
        [--cases case_20 case_36] --csv docs/eval/liver_error_location/MODEL.csv
"""
from __future__ import annotations

import argparse

import numpy as np

from .evaluate import write_csv

BANDS_MM = (3.0, 5.0, 8.0, 16.0)


def error_location(pred: np.ndarray, truth: np.ndarray, spacing, bands=BANDS_MM) -> dict:
    """pred, truth: boolean (k, j, i) masks on one grid of `spacing` mm (same axis order). Returns Dice, the
    counts of missed (fn) and false (fp) voxels, and per band d: the share of wrong voxels within d mm of
    the reference surface and the Dice if those were right (`dice_if_band_right_<d>mm`); the share of wrong
    voxels on the first and last slice that hold reference liver, and on slices that hold none."""
    from scipy import ndimage

    t, p = truth.astype(bool), pred.astype(bool)
    fn, fp = t & ~p, p & ~t
    d_fn = ndimage.distance_transform_edt(t, sampling=spacing)[fn]
    d_fp = ndimage.distance_transform_edt(~t, sampling=spacing)[fp]
    inter, total, n_err = int((t & p).sum()), int(t.sum() + p.sum()), int(fn.sum() + fp.sum())
    r = {"dice": 2 * inter / max(1, total), "fn": int(fn.sum()), "fp": int(fp.sum())}
    for d in bands:
        nfn, nfp = int((d_fn <= d).sum()), int((d_fp <= d).sum())
        r[f"err_within_{d:g}mm"] = (nfn + nfp) / max(1, n_err)
        r[f"dice_if_band_right_{d:g}mm"] = 2 * (inter + nfn) / max(1, total + nfn - nfp)
    err = fn | fp
    ks = np.where(t.any(axis=(1, 2)))[0]
    if len(ks):
        r["err_on_end_slices"] = float(err[[ks[0], ks[-1]]].sum() / max(1, n_err))
        off = np.ones(t.shape[0], bool)
        off[ks[0]:ks[-1] + 1] = False
        r["err_off_liver_slices"] = float(err[off].sum() / max(1, n_err))
    return r


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--cases", nargs="*", help="only these case ids (default: all)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--csv")
    a = p.parse_args(argv)

    from SRMASegmenterLib.inference import LiverSegmenter
    from SRMASegmenterLib.volumes import read_volume

    from .data import find_cases

    seg = LiverSegmenter.load(a.weights, device=a.device)
    rows = []
    for c in find_cases(a.data)["cases"]:
        if a.cases and c["id"] not in a.cases:
            continue
        img, geom = read_volume(c["image"])
        lab, _ = read_volume(c["label"])
        mask, _ = seg.predict(img, geom, organs=[])
        r = {"id": c["id"], **error_location(mask.astype(bool), lab == c["liver_label"], tuple(geom.spacing)[::-1])}
        rows.append(r)
        print(" ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()), flush=True)
    keys = [k for k in rows[0] if k != "id"]
    print("mean " + " ".join(f"{k} {np.mean([r[k] for r in rows]):.3f}" for k in keys))
    if a.csv:
        write_csv(a.csv, rows, ["id"] + keys)
    return rows


if __name__ == "__main__":
    main()
