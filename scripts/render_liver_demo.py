"""Render docs/images/srma_demo.png from what `make demo` wrote: the bundled CHAOS case 20, its reference
liver and the shipped model's liver, on three axial slices (upper, middle and lower liver), titled with
the weights id and the Dice / HD95 from the demo's own report.

    make demo && python scripts/render_liver_demo.py [--demo out/demo] [--out docs/images/srma_demo.png]
"""
import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "SRMASegmenter" / "Resources" / "SampleData"


def liver_slices(ref: np.ndarray, n: int = 3) -> list[int]:
    """Axial slices (first array axis) at the 20th, 50th and 80th percentile of the reference liver's extent."""
    zs = np.flatnonzero((ref == 1).any(axis=(1, 2)))
    if zs.size == 0:
        raise ValueError("the reference holds no liver (label 1)")
    return [int(zs[round(q * (zs.size - 1))]) for q in np.linspace(0.2, 0.8, n)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--demo", default=str(ROOT / "out" / "demo"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "images" / "srma_demo.png"))
    a = ap.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import SimpleITK as sitk

    demo = Path(a.demo)
    report = json.loads((demo / "chaos_case20_liver.json").read_text())
    def axial(path):  # (slice, row, column) in LPS: rows anterior to posterior, columns patient right to left
        return sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS"))

    img = axial(SAMPLES / "chaos_case20_t2.nii.gz").astype(np.float32)
    ref = axial(SAMPLES / "chaos_case20_labels.nii.gz")
    pred = axial(demo / "chaos_case20_liver.nii.gz")
    if not (img.shape == ref.shape == pred.shape):
        raise ValueError(f"shapes differ: image {img.shape}, reference {ref.shape}, prediction {pred.shape}")
    lo, hi = np.percentile(img, [1, 99.5])
    m = report["metrics"]
    zs = liver_slices(ref)
    fig, axes = plt.subplots(1, len(zs), figsize=(3.2 * len(zs), 3.6))
    for ax, z in zip(axes, zs):
        ax.imshow(img[z], cmap="gray", vmin=lo, vmax=hi)
        ax.contour(ref[z] == 1, levels=[0.5], colors="lime", linewidths=1.0)
        ax.contour(pred[z] == 1, levels=[0.5], colors="red", linewidths=1.0)
        ax.set_title(f"slice {z}", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"CHAOS case 20 (never trained on), {report['weights']}: liver Dice {m['dice']:.3f}, "
                 f"HD95 {m['hd95_mm']:.1f} mm\ngreen: CHAOS reference, red: the model's liver", fontsize=9)
    fig.tight_layout()
    fig.savefig(a.out, dpi=100)
    print(f"wrote {a.out}: slices {zs}, Dice {m['dice']:.4f}")


if __name__ == "__main__":
    main()
