"""ultrascan-classify: label and calibrated probabilities for breast-ultrasound images.

    ultrascan-classify IMAGE [IMAGE ...] [--json] [--heatmap-dir DIR] [--dicom-sr DIR] [--device cpu|cuda]
                       [--weights FILE]

A folder argument means every image in it (BUSI `*_mask.png` files skipped). Each unreadable, empty,
constant or non-image file is reported on stderr and skipped; the batch goes on. Heatmaps of inputs
that share a file name (a/scan.png, b/scan.png, scan.jpg) get distinct names; each is written under a
temporary name and renamed, and the heatmap folder is checked for writing before the model loads.
--dicom-sr writes, for each DICOM input, a DICOM structured report of its classification (the finding
in SNOMED CT, each class's probability, the model and weights id) referencing the source image, the
same way; other inputs get none.
Exit status: 0 every file classified, 1 some failed, 2 none could be (or bad arguments), 3 the weights
could not be loaded, 130 interrupted (Ctrl-C). Decision support only, not a diagnosis.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from slicer_ai_common.outputs import StagedOutputs, check_writable, console_entry
from slicer_ai_common.weights import WeightsError

from .images import ImageError, list_images


def heatmap_names(files) -> dict:
    """Input path -> heatmap file name: `<stem>_heatmap.png`, and where stems repeat (a/scan.png,
    b/scan.png, scan.jpg) `<stem>_<n>_heatmap.png` numbered in input order, so no heatmap replaces another."""
    stems = [Path(f).stem for f in files]
    seen, out = {}, {}
    for f, st in zip(files, stems):
        if stems.count(st) > 1:
            seen[st] = seen.get(st, 0) + 1
            out[str(f)] = f"{st}_{seen[st]}_heatmap.png"
        else:
            out[str(f)] = f"{st}_heatmap.png"
    return out


def save_heatmap(heat, image_path, folder, name=None):
    """The heatmap as an 8-bit grayscale PNG (same pixel grid as the input), named after the input (or
    `name`), written under a temporary name and renamed so that no half-written file is left."""
    import numpy as np
    from PIL import Image
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / (name or Path(image_path).stem + "_heatmap.png")
    with StagedOutputs() as staged:
        Image.fromarray((np.clip(heat, 0, 1) * 255).round().astype(np.uint8)).save(staged.temp(out))
    return out


def save_report(r, image_path, folder, name: str, frame: int | None = None) -> Path:
    """The classification of a DICOM image as a DICOM SR (`dicom_sr`) in folder, staged like a heatmap."""
    from slicer_ai_common.dependencies import package_version

    from .dicom_sr import build_classification_report
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / name
    with StagedOutputs((".sr.dcm",)) as staged:
        build_classification_report(image_path, r.label, r.probabilities, algorithm_name=r.weights_id.split("@")[0],
                                    algorithm_version=package_version(), weights_id=r.weights_id,
                                    frame=frame).save_as(str(staged.temp(out)))
    return out


def is_dicom(path) -> bool:
    """A DICOM Part 10 file (the 'DICM' preamble), whatever its name."""
    try:
        with open(path, "rb") as fh:
            return fh.read(132)[128:132] == b"DICM"
    except OSError:
        return False


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
    ap.add_argument("--dicom-sr", default=None, metavar="DIR",
                    help="for each DICOM input, write its classification as a DICOM SR (<name>.sr.dcm) here "
                         "(highdicom; references the source image)")
    ap.add_argument("--frame", type=int, default=None, metavar="N",
                    help="the frame (1-based) to classify in multi-frame inputs (DICOM cine, animated GIF); "
                         "without it they are refused")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "gpu"])
    ap.add_argument("--model", default=None,
                    help="a shipped model by name: efficientnet_lite0_busi (default; cross-validated accuracy 0.865 on leak-free folds) or "
                         "ultrascannet_busi (UltraScanNet as published, 0.71; see the model cards)")
    ap.add_argument("--weights", default=None, help="model folder, model.json or weights file (default: shipped model)")
    a = ap.parse_args(argv)
    if a.model and a.weights:
        ap.error("give --model (a shipped model) or --weights (your own), not both")

    from slicer_ai_common.devices import DeviceError, resolve_device

    from .inference import UltrasoundClassifier
    files = expand(a.images)
    if not files:
        print("ultrascan-classify: no images found", file=sys.stderr)
        return 2
    try:
        resolve_device(a.device)                 # a missing GPU is a usage error (2), not a weights failure
    except DeviceError as e:
        print(f"ultrascan-classify: {e}", file=sys.stderr)
        return 2
    if a.heatmap_dir:                         # before the model loads: a folder we cannot write loses nothing
        try:
            check_writable(a.heatmap_dir)
        except ValueError as e:
            print(f"ultrascan-classify: cannot write heatmaps ({e})", file=sys.stderr)
            return 2
    if a.dicom_sr:
        try:
            from slicer_ai_common.dependencies import require_highdicom
            require_highdicom("--dicom-sr")
            check_writable(a.dicom_sr)
        except (RuntimeError, ValueError) as e:
            print(f"ultrascan-classify: cannot write DICOM reports ({e})", file=sys.stderr)
            return 2
    names = heatmap_names(files)
    try:
        clf = UltrasoundClassifier.load(a.weights or a.model, device=a.device)
    except (WeightsError, RuntimeError, ValueError) as e:
        print(f"ultrascan-classify: cannot load weights: {e}", file=sys.stderr)
        return 3
    results, failed = [], 0
    for f in files:
        try:
            r = clf.classify_file(f, heatmap=a.heatmap_dir is not None, frame=a.frame)
        except (ImageError, ValueError, OSError) as e:
            failed += 1
            print(f"ultrascan-classify: {f}: {e}", file=sys.stderr)
            continue
        row = {"file": str(f), **r.to_json()}
        if a.heatmap_dir:                     # a write that fails (disk full, folder gone) costs this heatmap only
            try:
                row["heatmap"] = str(save_heatmap(r.heatmap, f, a.heatmap_dir, names[str(f)]))
            except OSError as e:
                failed += 1
                row["heatmap"] = None
                row["heatmap_error"] = str(e)
                print(f"ultrascan-classify: {f}: heatmap not written ({e})", file=sys.stderr)
        if a.dicom_sr and is_dicom(f):          # reports for DICOM inputs only: they reference the source image
            try:
                row["dicom_sr"] = str(save_report(r, f, a.dicom_sr, names[str(f)].replace("_heatmap.png", ".sr.dcm"),
                                                  a.frame))
            except Exception as e:  # noqa: BLE001 - highdicom refuses odd sources in many ways: this report only
                failed += 1
                row["dicom_sr"] = None
                row["dicom_sr_error"] = str(e)
                print(f"ultrascan-classify: {f}: DICOM report not written ({e})", file=sys.stderr)
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


def entry():
    """Console script: Ctrl-C ends with status 130 (heatmaps already written stay; none is half-written)."""
    return console_entry(main, "ultrascan-classify")


if __name__ == "__main__":
    sys.exit(entry())
