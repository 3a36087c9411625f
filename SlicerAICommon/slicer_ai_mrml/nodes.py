"""Numpy arrays and MRML nodes, with geometry kept exactly (IJK-to-RAS of the result = the input's)."""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import vtk
from vtk.util import numpy_support

import slicer

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


class NodeError(ValueError):
    """The selected node is not what the operation needs; the message says what it is and why."""


def array_from_volume_node(node) -> np.ndarray:
    """A copy of the voxels, (k, j, i) or (k, j, i, components)."""
    if node is None:
        raise NodeError("no input volume selected")
    if not node.IsA("vtkMRMLScalarVolumeNode") and not node.IsA("vtkMRMLVectorVolumeNode"):
        raise NodeError(f"'{node.GetName()}' is a {node.GetClassName()}, not a volume")
    img = node.GetImageData()
    if img is None or img.GetPointData() is None or img.GetPointData().GetScalars() is None:
        raise NodeError(f"volume '{node.GetName()}' has no image data")
    dims = img.GetDimensions()
    sc = img.GetPointData().GetScalars()
    arr = numpy_support.vtk_to_numpy(sc)
    nc = sc.GetNumberOfComponents()
    shape = (dims[2], dims[1], dims[0]) + ((nc,) if nc > 1 else ())
    return np.array(arr.reshape(shape), copy=True)


def ijk_to_ras(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def geometry_from_volume_node(node):
    """The node's Geometry (spacing, origin, direction) in ITK's LPS convention."""
    from slicer_ai_common.geometry import Geometry

    spacing = tuple(float(s) for s in node.GetSpacing())
    d = np.zeros((3, 3))
    dirs = vtk.vtkMatrix4x4()
    node.GetIJKToRASDirectionMatrix(dirs)
    for r in range(3):
        for c in range(3):
            d[r, c] = dirs.GetElement(r, c)
    origin = _RAS_TO_LPS @ np.array(node.GetOrigin(), dtype=float)
    return Geometry(spacing, tuple(origin), _RAS_TO_LPS @ d)


def set_volume_geometry(node, geom):
    """Spacing / origin / directions of node from an LPS Geometry."""
    node.SetSpacing(*[float(s) for s in geom.spacing])
    node.SetOrigin(*[float(o) for o in (_RAS_TO_LPS @ np.asarray(geom.origin, dtype=float))])
    d = _RAS_TO_LPS @ np.asarray(geom.direction, dtype=float)
    m = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            m.SetElement(r, c, float(d[r, c]))
    node.SetIJKToRASDirectionMatrix(m)


def _image_data_from_array(arr: np.ndarray):
    arr = np.ascontiguousarray(arr)
    nc = arr.shape[3] if arr.ndim == 4 else 1
    img = vtk.vtkImageData()
    img.SetDimensions(arr.shape[2], arr.shape[1], arr.shape[0])
    flat = arr.reshape(-1, nc) if nc > 1 else arr.ravel()
    vtk_arr = numpy_support.numpy_to_vtk(flat, deep=True)
    img.GetPointData().SetScalars(vtk_arr)
    return img


def update_volume_from_array(node, arr):
    """Replace a volume node's voxels (its geometry stays)."""
    node.SetAndObserveImageData(_image_data_from_array(arr))
    node.Modified()
    return node


def scalar_volume_from_array(scene, arr, like=None, geom=None, name="Volume", cls="vtkMRMLScalarVolumeNode"):
    """A new volume node (added to scene) with arr's voxels and the geometry of `like` or `geom`."""
    node = scene.AddNewNodeByClass(cls, name)
    node.SetAndObserveImageData(_image_data_from_array(arr))
    if like is not None:
        m = vtk.vtkMatrix4x4()
        like.GetIJKToRASMatrix(m)
        node.SetIJKToRASMatrix(m)
    elif geom is not None:
        set_volume_geometry(node, geom)
    node.CreateDefaultDisplayNodes()
    return node


def import_mask_as_segment(scene, segmentations_logic, mask, reference_volume, seg_node=None, *, name: str,
                           color: tuple, terminology: str | None = None, seg_node_name=None, show_3d=True):
    """Put a binary (k, j, i) mask into seg_node (new if None) as one segment named `name`.

    The labelmap's geometry is the reference volume's; the segmentation's reference geometry is set
    to it, so the segment is editable at once in Segment Editor on that volume. An existing segment
    of the same name in seg_node is replaced. Returns (seg_node, segment_id, created_node).
    """
    created = seg_node is None
    if created:
        seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                           seg_node_name or f"{reference_volume.GetName()} segmentation")
        seg_node.CreateDefaultDisplayNodes()
    seg_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    lab = scalar_volume_from_array(scene, (np.asarray(mask) > 0).astype(np.uint8), like=reference_volume,
                                   name="__slicer_ai_tmp_labelmap", cls="vtkMRMLLabelMapVolumeNode")
    try:
        segmentation = seg_node.GetSegmentation()
        old = segmentation.GetSegmentIdBySegmentName(name)
        if old:
            segmentation.RemoveSegment(old)
        before = set(segmentation.GetSegmentIDs())
        if not segmentations_logic.ImportLabelmapToSegmentationNode(lab, seg_node):
            raise RuntimeError("importing the labelmap into the segmentation failed")
        new_ids = [s for s in segmentation.GetSegmentIDs() if s not in before]
        if not new_ids:  # an empty mask adds no segment: add an empty one so the user can draw it
            sid = segmentation.AddEmptySegment(name, name, color)
        else:
            sid = new_ids[0]
        seg = segmentation.GetSegment(sid)
        seg.SetName(name)
        seg.SetColor(*color)
        if terminology:
            seg.SetTag(seg.GetTerminologyEntryTagName(), terminology)
    finally:
        scene.RemoveNode(lab)
    if show_3d:
        seg_node.CreateClosedSurfaceRepresentation()
    return seg_node, sid, created


def mask_from_segmentation(scene, segmentations_logic, seg_node, reference_volume, segment_name=None):
    """A binary (k, j, i) mask on reference_volume's grid: the named segment, or the first one."""
    if seg_node is None or not seg_node.IsA("vtkMRMLSegmentationNode"):
        raise NodeError("the reference must be a segmentation node")
    segmentation = seg_node.GetSegmentation()
    ids = list(segmentation.GetSegmentIDs())
    if not ids:
        raise NodeError(f"segmentation '{seg_node.GetName()}' has no segments")
    sid = segmentation.GetSegmentIdBySegmentName(segment_name) if segment_name else ""
    sid = sid or ids[0]
    lab = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__slicer_ai_tmp_ref")
    try:
        idl = vtk.vtkStringArray()
        idl.InsertNextValue(sid)
        if not segmentations_logic.ExportSegmentsToLabelmapNode(seg_node, idl, lab, reference_volume):
            raise RuntimeError("exporting the reference segment failed")
        arr = array_from_volume_node(lab)
    finally:
        scene.RemoveNode(lab)
    return arr > 0


def add_table(scene, rows, name="Results", table=None, columns=None):
    """rows: list of (key, value) or dicts -> a vtkMRMLTableNode (new unless `table` given).
    columns: names for a table that has none yet (default: the first dict's keys, or Metric / Value)."""
    if table is None:
        table = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    t = table.GetTable()
    if columns is not None:
        cols = list(columns)
    elif rows and isinstance(rows[0], dict):
        cols = list(rows[0].keys())
    else:
        cols = ["Metric", "Value"]
    if rows and not isinstance(rows[0], dict):
        rows = [{"Metric": k, "Value": v} for k, v in rows]
    if t.GetNumberOfColumns() == 0:
        for c in cols:
            arr = vtk.vtkStringArray()
            arr.SetName(c)
            t.AddColumn(arr)
    for r in rows:
        i = t.InsertNextBlankRow()
        for c, v in r.items():
            col = t.GetColumnByName(c)
            if col is None:
                continue
            col.SetValue(i, f"{v:.6g}" if isinstance(v, float) else str(v))
    t.Modified()
    table.Modified()
    return table


@contextmanager
def SceneTransaction(scene):
    """Everything added to the scene inside the block is removed again if the block raises."""
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    try:
        yield
    except BaseException:
        added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        for n in added:
            if n is not None and n.GetID() not in before and scene.IsNodePresent(n):
                scene.RemoveNode(n)
        raise
