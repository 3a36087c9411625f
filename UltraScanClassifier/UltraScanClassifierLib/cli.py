"""ultrascan-classify: label and calibrated probabilities for breast-ultrasound images.

    ultrascan-classify IMAGE [IMAGE ...] [--json] [--heatmap-dir DIR] [--device cpu|cuda] [--weights FILE]

A folder argument means every image in it (BUSI `*_mask.png` files skipped). Each unreadable, empty,
constant or non-image file is reported on stderr and skipped; the batch goes on. Exit status 0 when
every file was classified, 1 when some failed, 2 when none could be (or the weights failed to load).
Decision support only, not a diagnosis.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from slicer_ai_common.weights import WeightsError

from .images import ImageError, list_images


def save_heatmap(heat, image_path, folder):
    """The heatmap as an 8-bit grayscale PNG (same pixel grid as the input) named after the input."""
    import numpy as np
    from PIL import Image
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / (Path(image_path).stem + "_heatmap.png")
    Image.fromarray((np.clip(heat, 0, 1) * 255).round().astype(np.uint8)).save(out)
    return out


def expand(paths):
    files = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files += list_images(p)
        else:
            files.append(p)
    return files


def main(argv=None):
    ap = argparse.ArgumentParser(prog="ultrascan-classify", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="+", help="image files (PNG, JPEG, BMP, TIFF, DICOM) or folders")
    ap.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    ap.add_argument("--heatmap-dir", default=None, help="write a Grad-CAM heatmap PNG per image here")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "gpu"])
    ap.add_argument("--model", default=None,
                    help="a shipped model by name: ultrascannet_busi (default) or efficientnet_lite0_busi (more accurate "
                         "in cross-validation; see its model card)")
    ap.add_argument("--weights", default=None, help="model folder, model.json or weights file (default: shipped model)")
    a = ap.parse_args(argv)
    if a.model and a.weights:
        ap.error("give --model (a shipped model) or --weights (your own), not both")

    from .inference import UltrasoundClassifier
    try:
        clf = UltrasoundClassifier.load(a.weights or a.model, device=a.device)
    except (WeightsError, RuntimeError, ValueError) as e:
        print(f"ultrascan-classify: cannot load weights: {e}", file=sys.stderr)
        return 2
    results, failed = [], 0
    files = expand(a.images)
    if not files:
        print("ultrascan-classify: no images found", file=sys.stderr)
        return 2
    for f in files:
        try:
            r = clf.classify_file(f, heatmap=a.heatmap_dir is not None)
        except (ImageError, ValueError) as e:
            failed += 1
            print(f"ultrascan-classify: {f}: {e}", file=sys.stderr)
            continue
        row = {"file": str(f), **r.to_json()}
        if a.heatmap_dir:
            row["heatmap"] = str(save_heatmap(r.heatmap, f, a.heatmap_dir))
        results.append(row)
        if not a.json:
            p = r.probabilities
            print(f"{f}\t{r.label}\tbenign={p['benign']:.3f}\tmalignant={p['malignant']:.3f}\tnormal={p['normal']:.3f}",
                  flush=True)
    if a.json:
        print(json.dumps(results, indent=1))
    if not results:
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
