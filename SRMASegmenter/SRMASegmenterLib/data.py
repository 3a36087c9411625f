"""Liver MRI data sets in either layout, loaded into the model's canonical orientation.

- CHAOS (as in ../shared/data/chaos-mr-t2): case_NN_t2.nii.gz + case_NN_labels.nii.gz, liver = 1.
- CirrMRI600+: train_images/ train_masks/ valid_images/ valid_masks/ test_images/ test_masks/, with
  mask files named like their images; liver = any non-zero label.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from .inference import normalize_intensity
from .volumes import orientation_transform, read_volume, to_canonical

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


def split_cases(found: dict, split_file=None, val_ids=None):
    """CirrMRI: its own train/valid folders. CHAOS: the split file's (or val_ids') validation cases."""
    cases = found["cases"]
    if found["layout"] == "cirrmri":
        return [c for c in cases if c["subset"] == "train"], [c for c in cases if c["subset"] == "valid"]
    if val_ids is None:
        if split_file is None:
            raise ValueError("CHAOS layout needs a split file or validation case ids")
        val_ids = json.loads(Path(split_file).read_text())["val"]
    val = [c for c in cases if c["id"] in set(val_ids)]
    train = [c for c in cases if c["id"] not in set(val_ids)]
    if not val:
        raise ValueError(f"none of the validation ids {val_ids} is in the data")
    return train, val


def load_case(case: dict):
    """-> dict(image (1, I, J, K) float32 normalised, label (1, I, J, K) uint8, spacing (i, j, k), id)."""
    img, geom = read_volume(case["image"])
    lab, lgeom = read_volume(case["label"])
    if img.shape != lab.shape:
        raise ValueError(f"{case['id']}: image {img.shape} and label {lab.shape} differ")
    perm, flips = orientation_transform(geom.direction)
    img = to_canonical(img, perm, flips)
    lab = to_canonical(lab, perm, flips)
    liver = (lab == case["liver_label"]) if case["liver_label"] is not None else (lab > 0)
    sp_kji = np.array([np.asarray(geom.spacing)[::-1][p] for p in perm])
    return dict(id=case["id"], image=normalize_intensity(img).transpose(2, 1, 0)[None].copy(),
                label=liver.astype(np.uint8).transpose(2, 1, 0)[None].copy(), spacing=tuple(sp_kji[::-1]))
