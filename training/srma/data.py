"""Liver MRI data sets in either layout, loaded into the model's canonical orientation.

- CHAOS (as in ../shared/data/chaos-mr-t2): case_NN_t2.nii.gz + case_NN_labels.nii.gz: 0 background,
  1 liver, 2 right kidney, 3 left kidney, 4 spleen (CHAOS_CLASSES).
- CirrMRI600+: train_images/ train_masks/ valid_images/ valid_masks/ test_images/ test_masks/, with
  mask files named like their images; liver = any non-zero label.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from SRMASegmenterLib.inference import normalize_intensity, resample, resample_labels
from SRMASegmenterLib.volumes import orientation_transform, read_volume, to_canonical

CHAOS_CLASSES = ("background", "liver", "right_kidney", "left_kidney", "spleen")
_CHAOS = re.compile(r"case_(\d+)_t2\.nii(\.gz)?$")
_EXT = (".nii.gz", ".nii", ".nrrd", ".mha")


def find_cases(root) -> dict:
    """-> {"layout": ..., "cases": [{"id", "image", "label", "subset"}]} (subset None for CHAOS)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    cases = []
    for p in sorted(root.iterdir()):
        m = _CHAOS.match(p.name)
        if m:
            lab = root / p.name.replace("_t2.", "_labels.")
            if lab.exists():
                cases.append(dict(id=f"case_{m.group(1)}", image=str(p), label=str(lab), subset=None, liver_label=1))
    if cases:
        return dict(layout="chaos", cases=cases)
    for subset in ("train", "valid", "test"):
        idir, mdir = root / f"{subset}_images", root / f"{subset}_masks"
        if not idir.is_dir():
            continue
        for p in sorted(idir.iterdir()):
            if p.name.endswith(_EXT) and (mdir / p.name).exists():
                cid = p.name.split(".")[0]
                cases.append(dict(id=cid, image=str(p), label=str(mdir / p.name), subset=subset, liver_label=None))
    if cases:
        return dict(layout="cirrmri", cases=cases)
    raise FileNotFoundError(f"{root}: neither CHAOS (case_NN_t2.nii.gz + case_NN_labels.nii.gz) nor CirrMRI600+ "
                            "(train_images/ train_masks/ ...) layout")


def cases_by_id(root, ids) -> list:
    """The cases of find_cases(root) named in `ids`, in that order (an analysis script's --cases); an id
    that is not in the data raises FileNotFoundError naming it."""
    by_id = {c["id"]: c for c in find_cases(root)["cases"]}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise FileNotFoundError(f"{root}: no case {', '.join(missing)} (have {', '.join(sorted(by_id))})")
    return [by_id[i] for i in ids]


def split_cases(found: dict, split_file=None, val_ids=None, fold=None):
    """CirrMRI: its own train/valid folders. CHAOS: the split file's validation cases: its "val" list,
    or, for a k-fold file ({"folds": [[ids], ...]}), fold `fold`'s cases."""
    cases = found["cases"]
    if found["layout"] == "cirrmri":
        return [c for c in cases if c["subset"] == "train"], [c for c in cases if c["subset"] == "valid"]
    if val_ids is None:
        if split_file is None:
            raise ValueError("CHAOS layout needs a split file or validation case ids")
        d = json.loads(Path(split_file).read_text())
        if "folds" in d:
            if fold is None:
                raise ValueError(f"{split_file} is a {len(d['folds'])}-fold split: say which fold validates (--fold)")
            val_ids = d["folds"][int(fold)]
        else:
            val_ids = d["val"]
    val = [c for c in cases if c["id"] in set(val_ids)]
    train = [c for c in cases if c["id"] not in set(val_ids)]
    if not val:
        raise ValueError(f"none of the validation ids {val_ids} is in the data")
    return train, val


def load_case(case: dict, spacing=None, multiclass: bool = False):
    """-> dict(image (1, I, J, K) float32 normalised, label (1, I, J, K) uint8, spacing (i, j, k), id).

    Canonical orientation, then intensity normalisation on the input grid (as inference does), then,
    with `spacing`, resampling to that grid (inference.resample; labels one-hot, resampled, argmax).
    Labels: with multiclass, CHAOS's five classes (CHAOS_CLASSES; CirrMRI: background / liver);
    otherwise liver = 1.
    """
    import torch

    img, geom = read_volume(case["image"])
    lab, lgeom = read_volume(case["label"])
    if img.shape != lab.shape:
        raise ValueError(f"{case['id']}: image {img.shape} and label {lab.shape} differ")
    perm, flips = orientation_transform(geom.direction)
    img = to_canonical(img, perm, flips)
    lab = to_canonical(lab, perm, flips)
    if multiclass and case["liver_label"] is not None:
        lab = np.where(lab <= 4, lab, 0).astype(np.uint8)
        n_classes = len(CHAOS_CLASSES)
    else:
        lab = ((lab == case["liver_label"]) if case["liver_label"] is not None else (lab > 0)).astype(np.uint8)
        n_classes = 2
    sp_ijk = tuple(np.array([np.asarray(geom.spacing)[::-1][p] for p in perm])[::-1])
    x = normalize_intensity(img).transpose(2, 1, 0)[None].copy()
    y = lab.transpose(2, 1, 0).copy()
    if spacing is not None and not np.allclose(sp_ijk, spacing, rtol=1e-3):
        x = resample(torch.from_numpy(x)[None], sp_ijk, spacing)[0].numpy()
        y = resample_labels(torch.from_numpy(y), sp_ijk, spacing, n_classes, size=x.shape[1:]).numpy()
        sp_ijk = tuple(spacing)
    return dict(id=case["id"], image=x, label=y[None].astype(np.uint8), spacing=tuple(float(v) for v in sp_ijk),
                num_classes=n_classes)
