"""UltraScanClassifier logic: an ultrasound image node in; a verdict, a results-table row and a
heatmap volume (the input's exact geometry) out. Folder mode fills the table image by image.

No Qt: the same class serves the module's GUI, Slicer's Python console, `Slicer --python-script`
batch runs, and plain Python on slicer-core.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slicer_ai_common.progress import Cancelled, Progress, call_in_worker
from slicer_ai_mrml.nodes import (NodeError, SceneTransaction, add_table, array_from_volume_node,
                                  scalar_volume_from_array, update_volume_from_array)

__all__ = ["UltraScanClassifierLogic", "NodeResult", "FolderResult", "Cancelled", "NodeError", "TABLE_COLUMNS"]

TABLE_NAME = "Ultrasound classification"
TABLE_COLUMNS = ("Image", "Label", "P(benign)", "P(malignant)", "P(normal)", "Time (s)", "Weights")
HEATMAP_ATTRIBUTE = "UltraScanClassifier.HeatmapOf"


@dataclass
class NodeResult:
    classification: object        # UltraScanClassifierLib.inference.Classification
    table_node: object
    heatmap_node: object | None
    row: dict
    frame_note: str | None = None


@dataclass
class FolderResult:
    table_node: object
    rows: list
    failures: list                # (file, message)


def _dims(node) -> tuple:
    """(k, j, i) voxel counts of a volume node, without copying its voxels."""
    return tuple(node.GetImageData().GetDimensions())[::-1]


def _row(name, r) -> dict:
    p = r.probabilities
    return {"Image": name, "Label": r.label, "P(benign)": p["benign"], "P(malignant)": p["malignant"],
            "P(normal)": p["normal"], "Time (s)": r.seconds, "Weights": r.weights_id}


class UltraScanClassifierLogic:
    def __init__(self, scene=None):
        if scene is None:
            import slicer
            scene = slicer.mrmlScene
        self.scene = scene
        self._classifiers = {}

    def classifier(self, device="auto", weights=None):
        """The loaded model (cached per device and weights); WeightsError when missing or damaged."""
        from UltraScanClassifierLib.inference import UltrasoundClassifier
        key = (str(device), str(weights))
        if key not in self._classifiers:
            self._classifiers[key] = UltrasoundClassifier.load(weights, device=device)
        return self._classifiers[key]

    # ------------------------------------------------------------------------------------------- input
    def frame_note(self, node) -> str | None:
        """'frame i of N' when node is the proxy of a sequence (a multi-frame ultrasound), else None."""
        for i in range(self.scene.GetNumberOfNodesByClass("vtkMRMLSequenceBrowserNode")):
            b = self.scene.GetNthNodeByClass(i, "vtkMRMLSequenceBrowserNode")
            try:
                seq = b.GetMasterSequenceNode()
                if seq is not None and b.GetProxyNode(seq) is node:
                    return (f"current frame ({b.GetSelectedItemNumber() + 1} of {seq.GetNumberOfDataNodes()}) "
                            "of a multi-frame sequence")
            except AttributeError:           # sequences not available (slicer-core without Sequences)
                return None
        return None

    @staticmethod
    def image_from_node(node, frame: int | None = None):
        """(H, W) or (H, W, C) pixels of a one-slice scalar or vector (RGB) volume node, and its spacing.
        frame: for a multi-frame volume (frames along K), the frame to take."""
        if node is None:
            raise NodeError("no input image selected")
        if node.IsA("vtkMRMLLabelMapVolumeNode") or node.IsA("vtkMRMLSegmentationNode"):
            raise NodeError(f"'{node.GetName()}' is a {node.GetClassName()}: select an ultrasound image")
        arr = array_from_volume_node(node)            # (k, j, i[, c])
        vec = node.IsA("vtkMRMLVectorVolumeNode") or arr.ndim == 4
        dims = arr.shape[:3]
        if 0 in dims:
            raise NodeError(f"'{node.GetName()}' is an empty image (dimensions {dims[::-1]})")
        if frame is not None and dims[0] > 1:
            if not 0 <= frame < dims[0]:
                raise NodeError(f"'{node.GetName()}' has {dims[0]} frames; frame {frame} does not exist")
            arr = arr[frame:frame + 1]
            dims = arr.shape[:3]
        single = [ax for ax in range(3) if dims[ax] == 1]
        if not single:
            raise NodeError(f"'{node.GetName()}' is a 3D volume with {dims[0]} slices of {dims[2]} x {dims[1]}: "
                            "select a 2D ultrasound image (or one frame: frame=...)")
        ax = 0 if 0 in single else single[0]
        img = np.take(arr, 0, axis=ax)
        sp = [s for a, s in zip((2, 1, 0), node.GetSpacing()) if a != ax][::-1]   # (row, col) -> (x, y)
        if not vec and img.ndim == 3:
            raise NodeError(f"'{node.GetName()}' has an unexpected shape {arr.shape}")
        return img, (float(sp[0]), float(sp[1]))

    # ------------------------------------------------------------------------------------------ one node
    def _table(self, table_node):
        if table_node is not None:
            if not table_node.IsA("vtkMRMLTableNode"):
                raise NodeError("the results table must be a table node")
            return table_node
        return None

    def _heatmap_node(self, input_node, heat, frame=None):
        """Reuse this input's heatmap node if there is one, else add one with the input's geometry
        (for a frame of a multi-frame volume: a volume of the same grid, zero outside that frame)."""
        shape = _dims(input_node)
        if frame is None:
            arr = heat.astype(np.float32).reshape(shape)  # (1, H, W) etc.: the same voxel grid as the input
        else:
            arr = np.zeros(shape, np.float32)
            arr[frame] = heat
        for i in range(self.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
            n = self.scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
            if n.GetAttribute(HEATMAP_ATTRIBUTE) == input_node.GetID():
                return update_volume_from_array(n, arr)
        node = scalar_volume_from_array(self.scene, arr, like=input_node, name=f"{input_node.GetName()} heatmap")
        node.SetAttribute(HEATMAP_ATTRIBUTE, input_node.GetID())
        disp = node.GetDisplayNode()
        if disp is not None:
            color = self.scene.GetNodeByID("vtkMRMLColorTableNodeFileColdToHotRainbow.txt")
            if color is not None:
                disp.SetAndObserveColorNodeID(color.GetID())
            disp.SetAutoWindowLevel(False)
            disp.SetWindowLevelMinMax(0.0, 1.0)
        return node

    def classify(self, input_node, device="auto", weights=None, heatmap=True, table_node=None,
                 progress: Progress | None = None, classifier=None, frame: int | None = None,
                 pump=None) -> NodeResult:
        """Classify one image node (or one frame of a multi-frame volume); add a table row (and the
        heatmap, on that frame's grid) in one step: on any error or Cancel the scene is left as it was.
        pump (the GUI's `slicer.app.processEvents`): the model runs on a worker thread meanwhile."""
        progress = progress or Progress()
        img, spacing = self.image_from_node(input_node, frame)
        from UltraScanClassifierLib.images import check_image
        check_image(img, f"image '{input_node.GetName()}'")     # specific errors before any model work
        table_node = self._table(table_node)
        name = input_node.GetName()

        def compute(prog):                    # no scene access in here: it may run on a worker thread
            prog.step("loading model", 0.0)
            clf = classifier or self.classifier(device, weights)
            return clf.classify(img, spacing, heatmap=heatmap, name=name, progress=prog)

        r = call_in_worker(compute, progress, pump)
        if not self.scene.IsNodePresent(input_node):
            raise NodeError("the input image was removed from the scene during the run: nothing was added")
        note = self.frame_note(input_node)
        nframes = _dims(input_node)[0]
        if frame is not None and nframes > 1:
            note = f"frame {frame + 1} of {nframes} of a multi-frame volume"
        if note:
            r.notes.append(f"classified the {note}")
        progress.check()
        with SceneTransaction(self.scene):
            label = input_node.GetName() + (f" [frame {frame + 1}]" if frame is not None and nframes > 1 else "")
            row = _row(label, r)
            table = add_table(self.scene, [row], name=TABLE_NAME, table=table_node or self.find_table(),
                              columns=TABLE_COLUMNS)
            hnode = self._heatmap_node(input_node, r.heatmap, frame if nframes > 1 else None) if heatmap else None
        return NodeResult(r, table, hnode, row, note)

    def find_table(self):
        """The scene's results table from earlier runs, so rows accumulate in one place."""
        for i in range(self.scene.GetNumberOfNodesByClass("vtkMRMLTableNode")):
            t = self.scene.GetNthNodeByClass(i, "vtkMRMLTableNode")
            if t.GetName() == TABLE_NAME:
                return t
        return None

    # ------------------------------------------------------------------------------------------ folder
    def classify_folder(self, folder, device="auto", weights=None, table_node=None,
                        progress: Progress | None = None, classifier=None, pump=None) -> FolderResult:
        """Every image in folder into the table, one row per image once it is done. Unreadable files
        are listed in failures. Cancel keeps the rows done so far (then raises Cancelled)."""
        from UltraScanClassifierLib.images import ImageError, list_images, read_image

        progress = progress or Progress()
        files = list_images(folder)
        if not files:
            raise NodeError(f"{folder}: no images found (PNG, JPEG, BMP, TIFF, DICOM)")
        table_node = self._table(table_node)
        clf = classifier or call_in_worker(lambda _p: self.classifier(device, weights), progress, pump)
        with SceneTransaction(self.scene):
            table = add_table(self.scene, [], name=TABLE_NAME, table=table_node or self.find_table(),
                              columns=TABLE_COLUMNS)
        rows, failures = [], []
        for i, f in enumerate(files):
            progress.step(f"{i + 1} / {len(files)}: {f.name}", i / len(files))
            try:
                r = call_in_worker(lambda _p, f=f: clf.classify(*read_image(f), heatmap=False, name=f.name),
                                   progress, pump)
            except (ImageError, ValueError) as e:
                failures.append((str(f), str(e)))
                continue
            progress.check()                          # a cancel during the image: no partial row
            row = _row(str(Path(f).relative_to(folder)), r)
            add_table(self.scene, [row], table=table)
            rows.append(row)
        progress.step("done", 1.0)
        return FolderResult(table, rows, failures)

    # ------------------------------------------------------------------------------------------- export
    @staticmethod
    def table_rows(table_node) -> list[dict]:
        t = table_node.GetTable()
        cols = [t.GetColumnName(c) for c in range(t.GetNumberOfColumns())]
        return [{c: t.GetValueByName(r, c).ToString() for c in cols} for r in range(t.GetNumberOfRows())]

    def export_csv(self, table_node, path):
        rows = self.table_rows(table_node)
        path = Path(path)
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else list(TABLE_COLUMNS))
            w.writeheader()
            w.writerows(rows)
        return path
