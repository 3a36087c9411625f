"""Does the liver model need a bias-field augmentation? Its Dice under smooth multiplicative intensity fields.

MRI intensities drift slowly across the field of view with the receive coils' sensitivity (the bias field),
and that drift differs between scanners, coils and patients. nnU-Net's recipe, which the trainer follows,
has no bias-field transform (MONAI and TorchIO have one). Before spending device time training with it,
this asks whether the model's drawing moves at all when a held-out volume is multiplied by such a field:

    python -m training.srma.bias_field --data ../shared/data/chaos-mr-t2 --cases case_20 \
        [--weights MODEL] [--strengths 0.2 0.4] [--seeds 3] [--csv OUT.csv]

A field is exp(f), f a random polynomial of degree 3 in the voxel coordinates (each axis scaled to
[-1, 1]), centred and scaled so that max |f| = strength: at 0.4 the image is multiplied by factors from
about 0.67 to 1.49 across the volume. The volume goes through the module's inference path (its
normalisation, resampling, post-processing) as it is and under each field.
"""
from __future__ import annotations

import argparse
import itertools

import numpy as np


def smooth_bias_field(shape, strength: float, seed: int, degree: int = 3) -> np.ndarray:
    """exp(f) on a grid of `shape`, f a polynomial of total degree <= `degree` (no constant) with standard
    normal coefficients, centred (mean 0) and scaled to max |f| = strength; float64."""
    axes = np.meshgrid(*(np.linspace(-1.0, 1.0, n) for n in shape), indexing="ij")
    rng = np.random.default_rng(seed)
    f = np.zeros(shape)
    for powers in itertools.product(range(degree + 1), repeat=len(shape)):
        if 0 < sum(powers) <= degree:
            term = rng.normal()
            for ax, p in zip(axes, powers):
                term = term * ax ** p
            f += term
    f -= f.mean()
    peak = np.abs(f).max()
    return np.exp(f * (strength / peak if peak > 0 else 0.0))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--cases", nargs="+", required=True)
    p.add_argument("--weights", default=None, help="model folder (default: the shipped liver model)")
    p.add_argument("--strengths", type=float, nargs="+", default=[0.2, 0.4])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--csv")
    a = p.parse_args(argv)
    from SRMASegmenterLib.inference import LiverSegmenter
    from SRMASegmenterLib.metrics import segmentation_metrics
    from SRMASegmenterLib.volumes import read_volume

    from .data import cases_by_id
    from .evaluate import write_csv

    seg = LiverSegmenter.load(a.weights, device="cpu")
    rows = []
    for case in cases_by_id(a.data, a.cases):
        img, geom = read_volume(case["image"])
        lab, _ = read_volume(case["label"])
        views = [(0.0, -1)] + [(s, k) for s in a.strengths for k in range(a.seeds)]
        for strength, seed in views:
            field = smooth_bias_field(img.shape, strength, seed) if seed >= 0 else np.ones(img.shape)
            mask, _ = seg.predict((img * field).astype(np.float32), geom)
            m = segmentation_metrics(mask.astype(bool), lab == 1, tuple(geom.spacing)[::-1])
            rows.append(dict(case=case["id"], strength=strength, seed=seed, field_min=float(field.min()),
                             field_max=float(field.max()), dice=m["dice"], precision=m["precision"],
                             recall=m["recall"], hd95_mm=m["hd95_mm"]))
            print(f"{case['id']}  strength {strength:.2f} seed {seed:2d}  field [{field.min():.2f}, {field.max():.2f}]"
                  f"  Dice {m['dice']:.4f}  precision {m['precision']:.3f}  recall {m['recall']:.3f}"
                  f"  HD95 {m['hd95_mm']:.1f} mm", flush=True)
    if a.csv:
        write_csv(a.csv, rows)


if __name__ == "__main__":
    main()
