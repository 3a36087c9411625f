"""SRMASegmenter logic: MRML nodes in, a "Liver" segment and a results table out.

No Qt: the same class serves the module's GUI, Slicer's Python console, `Slicer --python-script`
batch runs, and plain Python on slicer-core (see SRMASegmenterLogic.cli).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from slicer_ai_common.progress import Cancelled, Progress, call_in_worker
from slicer_ai_mrml.nodes import (NodeError, SceneTransaction, add_table, array_from_volume_node,
                                  geometry_from_volume_node, import_mask_as_segment, mask_from_segmentation)

__all__ = ["SRMASegmenterLogic", "SegmentationResult", "Cancelled", "NodeError", "LIVER", "ORGANS", "parse_organs"]

_GA = "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure"
_DM = "~Anatomic codes - DICOM master list~^^~^^"
# The organs a multi-class model adds on request: segment name, SNOMED CT terminology (Slicer's General
# Anatomy list; kidneys as Kidney with a Right / Left modifier), Slicer's GenericAnatomyColors colour,
# and the label value in labelmap outputs (CHAOS's convention; liver is 1).
# the liver segment: SNOMED CT 10200004 in Slicer's General Anatomy list, GenericAnatomyColors "liver"
LIVER = ("Liver", f"{_GA}~SCT^10200004^Liver~^^{_DM}", (221 / 255, 130 / 255, 101 / 255), 1)
ORGANS = {
    "spleen": ("Spleen", f"{_GA}~SCT^78961009^Spleen~^^{_DM}", (157 / 255, 108 / 255, 162 / 255), 4),
    "right_kidney": ("Right kidney", f"{_GA}~SCT^64033007^Kidney~SCT^24028007^Right{_DM}",
                     (185 / 255, 102 / 255, 83 / 255), 2),
    "left_kidney": ("Left kidney", f"{_GA}~SCT^64033007^Kidney~SCT^7771000^Left{_DM}",
                    (185 / 255, 102 / 255, 83 / 255), 3),
}


def parse_organs(text) -> list:
    """'liver,spleen,kidneys' (or a list) -> the extra organs' keys in ORGANS order; liver is always given."""
    items = text.split(",") if isinstance(text, str) else list(text or [])
    out = set()
    for it in (i.strip().lower().replace(" ", "_") for i in items):
        if it in ("", "liver"):
            continue
        if it in ("kidneys", "kidney"):
            out |= {"right_kidney", "left_kidney"}
        elif it in ORGANS:
            out.add(it)
        else:
            raise ValueError(f"unknown organ {it!r}: choose from liver, spleen, kidneys, right_kidney, left_kidney")
    return [o for o in ORGANS if o in out]


@dataclass
class SegmentationResult:
    segmentation_node: object
    segment_id: str
    table_node: object
    mask: np.ndarray
    info: dict
    metrics: dict | None = None


class SRMASegmenterLogic:
    """Segment the liver of a scalar MRI volume node.

    scene / segmentations_logic default to the Slicer application's; pass them explicitly on
    slicer-core (trame_slicer.core.SlicerApp().scene and .segmentations_logic).
    """

    def __init__(self, scene=None, segmentations_logic=None):
        if scene is None or segmentations_logic is None:
            import slicer
            scene = scene or slicer.mrmlScene
            segmentations_logic = segmentations_logic or slicer.modules.segmentations.logic()
        self.scene = scene
        self.segmentations_logic = segmentations_logic
        self._segmenters = {}

    # -- model ---------------------------------------------------------------------------------
    def segmenter(self, device="auto", weights=None):
        """The loaded model (cached per device and weights); raises NoWeightsError if none installed."""
        from SRMASegmenterLib.inference import LiverSegmenter

        key = (str(device), str(weights))
        if key not in self._segmenters:
            self._segmenters[key] = LiverSegmenter.load(weights, device=device)
        return self._segmenters[key]

    # -- the one operation ---------------------------------------------------------------------
    def run(self, volume_node, output_segmentation=None, reference_segmentation=None, device="auto",
            weights=None, smoothing=False, modality="T2", progress: Progress | None = None, table_node=None,
            segmenter=None, organs=None, pump=None):
        """Segment, then add results to the scene in one step (nothing is added if anything fails).

        organs: further organs as segments beside "Liver" ("spleen", "right_kidney", "left_kidney",
        or "liver,spleen,kidneys"); the shipped 5-class model gives them, a liver-only model refuses.

        pump: in the GUI, `slicer.app.processEvents`: the model then runs on a worker thread while the
        GUI stays live (slicer_ai_common.progress.call_in_worker); the scene is read before and written
        after, on this thread.

        Returns SegmentationResult. Raises NodeError / VolumeError for bad input, WeightsError or
        NoWeightsError for weights, Cancelled when progress.cancel() was called.
        """
        from SRMASegmenterLib.volumes import check_array

        progress = progress or Progress()
        if volume_node is None:
            raise NodeError("no input volume selected")
        if not volume_node.IsA("vtkMRMLScalarVolumeNode") or volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
            raise NodeError(f"'{volume_node.GetName()}' is a {volume_node.GetClassName()}: select a scalar MRI volume")
        if modality not in ("T1", "T2"):
            raise ValueError(f"modality must be T1 or T2, got {modality!r}")
        arr = check_array(array_from_volume_node(volume_node), f"volume '{volume_node.GetName()}'")
        geom = geometry_from_volume_node(volume_node)
        if output_segmentation is not None and not output_segmentation.IsA("vtkMRMLSegmentationNode"):
            raise NodeError("the output must be a segmentation node")
        ref_mask = None
        if reference_segmentation is not None:
            ref_mask = mask_from_segmentation(self.scene, self.segmentations_logic, reference_segmentation, volume_node)
        extra = parse_organs(organs)

        def compute(prog):                    # no scene access in here: it may run on a worker thread
            prog.step("loading model", 0.0)
            seg = segmenter or self.segmenter(device, weights)
            mask, info = seg.predict(arr, geom, progress=prog, organs=extra)
            metrics = None
            if ref_mask is not None:
                from SRMASegmenterLib.metrics import segmentation_metrics
                metrics = segmentation_metrics(mask, ref_mask, tuple(geom.spacing)[::-1])
            return mask, info, metrics

        mask, info, metrics = call_in_worker(compute, progress, pump)
        info["modality"] = modality
        if modality != "T2":
            info["notes"] = info.get("notes", []) + ["the shipped model was trained on T2 MRI only"]
        progress.step("adding results", 1.0)
        for node, what in ((volume_node, "input volume"), (output_segmentation, "output segmentation")):
            if node is not None and not self.scene.IsNodePresent(node):
                raise NodeError(f"the {what} was removed from the scene during the run: nothing was added")
        # all scene changes happen here, and are undone if any of them fails or the user cancels
        with SceneTransaction(self.scene):
            seg_node, sid, created = import_mask_as_segment(
                self.scene, self.segmentations_logic, mask, volume_node, output_segmentation, name=LIVER[0],
                terminology=LIVER[1], color=LIVER[2], seg_node_name=f"{volume_node.GetName()} liver")
            for o in extra:
                name, term, color, _ = ORGANS[o]
                import_mask_as_segment(self.scene, self.segmentations_logic, info["organs"][o], volume_node, seg_node,
                                       name=name, color=color, terminology=term)
            if smoothing:
                self._smooth(seg_node)
            rows = [("Liver volume (mL)", info["volume_ml"])]
            rows += [(f"{ORGANS[o][0]} volume (mL)", info["organ_volumes_ml"][o]) for o in extra]
            rows += [("Inference time (s)", info["seconds"]),
                    ("Device", info["device"]), ("Model", "SRMA-Mamba"), ("Weights", info["weights_id"]),
                    ("Input", volume_node.GetName()), ("Modality", modality)]
            if metrics:
                names = dict(dice="Dice", jaccard="Jaccard", precision="Precision", recall="Recall", f1="F1",
                             f2="F2", hd95_mm="HD95 (mm)", assd_mm="ASSD (mm)", volume_diff_ml="Volume difference (mL)")
                rows += [(names[k], metrics[k]) for k in names]
            table = add_table(self.scene, rows, name=f"{volume_node.GetName()} liver results", table=table_node)
            progress.check()
        return SegmentationResult(seg_node, sid, table, mask, info, metrics)

    @staticmethod
    def _smooth(seg_node):
        """Smooth the closed-surface representation shown in 3D (the labelmap stays as segmented)."""
        seg_node.GetSegmentation().SetConversionParameter("Smoothing factor", "0.5")
        seg_node.RemoveClosedSurfaceRepresentation()
        seg_node.CreateClosedSurfaceRepresentation()
