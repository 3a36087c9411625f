"""Batch liver segmentation inside the Slicer application:

    Slicer --no-main-window --python-script scripts/slicer_batch_segment.py --input IN --output OUT [--device cpu]

IN: a volume file or a folder of them; OUT: an output file (.nii.gz, .nrrd, .seg.nrrd) or a folder.
Uses the module's logic on Slicer's own scene, one line of progress per volume.
"""
import argparse
import os
import sys

import slicer

here = os.path.dirname(os.path.abspath(__file__))
for p in ("SRMASegmenter", "SlicerAICommon", "kernels"):
    sys.path.append(os.path.join(here, "..", p))

from SRMASegmenterLogic import SRMASegmenterLogic  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--input", required=True)
ap.add_argument("--output", required=True)
ap.add_argument("--device", default="auto")
a = ap.parse_args(sys.argv[1:])
exts = (".nii.gz", ".nii", ".nrrd", ".mha")
if os.path.isdir(a.input):
    jobs = [(os.path.join(a.input, f), os.path.join(a.output, f.split(".")[0] + "_liver.seg.nrrd"))
            for f in sorted(os.listdir(a.input)) if f.endswith(exts)]
    os.makedirs(a.output, exist_ok=True)
else:
    jobs = [(a.input, a.output)]
logic = SRMASegmenterLogic()
failed = 0
for i, (src, dst) in enumerate(jobs, 1):
    try:
        vol = slicer.util.loadVolume(src)
        res = logic.run(vol, device=a.device)
        if dst.endswith(".seg.nrrd"):
            slicer.util.saveNode(res.segmentation_node, dst)
        else:
            lab = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
            slicer.modules.segmentations.logic().ExportAllSegmentsToLabelmapNode(res.segmentation_node, lab)
            slicer.util.saveNode(lab, dst)
        print(f"[{i}/{len(jobs)}] {os.path.basename(src)}: liver {res.info['volume_ml']:.0f} mL -> {dst}", flush=True)
        slicer.mrmlScene.Clear()
    except Exception as e:  # noqa: BLE001 - report and go on with the batch
        failed += 1
        print(f"[{i}/{len(jobs)}] {os.path.basename(src)}: FAILED: {e}", flush=True)
sys.exit(1 if failed else 0)
