"""Folder mode of the UltraScan Classifier inside the Slicer application:

    Slicer --no-main-window --python-script scripts/slicer_batch_classify.py --input FOLDER --csv OUT.csv \
        [--device cpu] [--scene OUT.mrb]

Every image in FOLDER (PNG, JPEG, BMP, TIFF, DICOM; BUSI `*_mask.png` skipped) becomes one row of the
results table (image, label, three calibrated probabilities, time, weights), written to OUT.csv and,
with --scene, saved with the scene. One line per image; unreadable files are reported and skipped.
"""
import argparse
import os
import sys

import slicer

here = os.path.dirname(os.path.abspath(__file__))
for p in ("UltraScanClassifier", "SlicerAICommon", "kernels"):
    sys.path.append(os.path.join(here, "..", p))

from slicer_ai_common.progress import Progress  # noqa: E402
from UltraScanClassifierLogic import UltraScanClassifierLogic  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--input", required=True)
ap.add_argument("--csv", required=True)
ap.add_argument("--device", default="auto")
ap.add_argument("--weights", default=None)
ap.add_argument("--scene", default=None, help="also save the scene (with its table) as .mrb")
a = ap.parse_args(sys.argv[1:])

logic = UltraScanClassifierLogic(slicer.mrmlScene)
res = logic.classify_folder(a.input, device=a.device, weights=a.weights,
                            progress=Progress(lambda stage, f: print(f"[{100 * f:5.1f}%] {stage}", flush=True)))
for row in res.rows:
    print(f"{row['Image']}: {row['Label']} (benign {row['P(benign)']:.3f}, malignant {row['P(malignant)']:.3f}, "
          f"normal {row['P(normal)']:.3f})", flush=True)
for f, err in res.failures:
    print(f"{f}: SKIPPED: {err}", flush=True)
logic.export_csv(res.table_node, a.csv)
if a.scene:
    slicer.util.saveScene(a.scene)
print(f"{len(res.rows)} classified, {len(res.failures)} skipped -> {a.csv}")
sys.exit(1 if res.failures else 0)
