"""SRMASegmenterLogic on real MRML (slicer-core), a real CHAOS volume and the real model architecture."""
import numpy as np
import pytest

from conftest import oblique_geometry
from slicer_ai_common.progress import Cancelled, Progress
from slicer_ai_common.weights import WeightsError


@pytest.fixture()
def scene_bits(slicer_app, small_case):
    from slicer_ai_mrml.nodes import scalar_volume_from_array
    from SRMASegmenterLogic import SRMASegmenterLogic
    arr, lab, _ = small_case
    geom = oblique_geometry()
    vol = scalar_volume_from_array(slicer_app.scene, arr, geom=geom, name="mri")
    logic = SRMASegmenterLogic(slicer_app.scene, slicer_app.segmentations_logic)
    yield slicer_app, logic, vol, arr, lab, geom
    slicer_app.scene.Clear(0)


def n_nodes(app):
    return app.scene.GetNumberOfNodes()


def test_geometry_roundtrip_oblique(scene_bits):
    from slicer_ai_mrml.nodes import array_from_volume_node, geometry_from_volume_node
    app, logic, vol, arr, lab, geom = scene_bits
    assert geometry_from_volume_node(vol).equals(geom, tol=1e-9)
    assert np.array_equal(array_from_volume_node(vol), arr)


def test_segment_equals_model_mask(scene_bits, tiny_segmenter):
    import vtk
    from slicer_ai_mrml.nodes import mask_from_segmentation
    app, logic, vol, arr, lab, geom = scene_bits
    expected, info = tiny_segmenter.predict(arr, geom)
    res = logic.run(vol, segmenter=tiny_segmenter)
    assert np.array_equal(res.mask, expected)
    back = mask_from_segmentation(app.scene, app.segmentations_logic, res.segmentation_node, vol, "Liver")
    assert np.array_equal(back, expected > 0)
    seg = res.segmentation_node.GetSegmentation().GetSegment(res.segment_id)
    assert seg.GetName() == "Liver"
    tag = vtk.reference("")
    assert seg.GetTag(seg.GetTerminologyEntryTagName(), tag)
    assert "SCT^10200004^Liver" in str(tag)
    assert np.allclose(seg.GetColor(), (221 / 255, 130 / 255, 101 / 255))
    # reference geometry of the segmentation = the input volume's
    m_in, m_seg = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    vol.GetIJKToRASMatrix(m_in)
    ref = res.segmentation_node.GetSegmentation().GetConversionParameter("Reference image geometry")
    vals = [float(v) for v in ref.split(";")[:16]]
    assert np.allclose(vals, [m_in.GetElement(r, c) for r in range(4) for c in range(4)], atol=1e-6)


def _table(res):
    t = res.table_node.GetTable()
    return {t.GetValue(i, 0).ToString(): t.GetValue(i, 1).ToString() for i in range(t.GetNumberOfRows())}


def test_table_values_independent(scene_bits, tiny_segmenter):
    from slicer_ai_mrml.nodes import import_mask_as_segment
    app, logic, vol, arr, lab, geom = scene_bits
    ref_node, _, _ = import_mask_as_segment(app.scene, app.segmentations_logic, lab == 1, vol, name="Reference",
                                            color=(0.2, 0.8, 0.2), show_3d=False)
    res = logic.run(vol, reference_segmentation=ref_node, segmenter=tiny_segmenter)
    tab = _table(res)
    voxel_ml = np.prod(geom.spacing) / 1000.0
    assert float(tab["Liver volume (mL)"]) == pytest.approx(res.mask.sum() * voxel_ml, rel=1e-5)
    p, t = res.mask > 0, lab == 1
    dice = 2 * (p & t).sum() / (p.sum() + t.sum())
    assert float(tab["Dice"]) == pytest.approx(dice, rel=1e-5)
    assert float(tab["Volume difference (mL)"]) == pytest.approx((p.sum() - t.sum()) * voxel_ml, rel=1e-4, abs=1e-6)
    assert tab["Model"] == "SRMA-Mamba" and tab["Weights"].startswith("tiny@") and tab["Device"] == "cpu"


def test_cancel_mid_run_adds_nothing(scene_bits, tiny_segmenter):
    app, logic, vol, *_ = scene_bits
    before = n_nodes(app)
    prog = Progress()
    calls = []

    def cb(stage, frac):
        calls.append(stage)
        if stage == "segmenting" and frac > 0:
            prog.cancel()
    prog.callback = cb
    with pytest.raises(Cancelled):
        logic.run(vol, segmenter=tiny_segmenter, progress=prog)
    assert "segmenting" in calls
    assert n_nodes(app) == before


def test_failure_while_adding_rolls_back(scene_bits, tiny_segmenter, monkeypatch):
    import SRMASegmenterLogic as L
    app, logic, vol, *_ = scene_bits
    before = n_nodes(app)

    def boom(*a, **k):
        raise RuntimeError("table write failed")
    monkeypatch.setattr(L, "add_table", boom)
    with pytest.raises(RuntimeError, match="table write failed"):
        logic.run(vol, segmenter=tiny_segmenter)
    assert n_nodes(app) == before


@pytest.mark.parametrize("kind", ["2d", "vector", "constant", "nan", "segmentation_node", "labelmap", "none"])
def test_bad_inputs_change_nothing(slicer_app, tiny_segmenter, kind):
    from slicer_ai_mrml.nodes import NodeError, scalar_volume_from_array
    from SRMASegmenterLib.volumes import VolumeError
    from SRMASegmenterLogic import SRMASegmenterLogic
    scene = slicer_app.scene
    g = oblique_geometry()
    rng = np.random.default_rng(1)
    node = {
        "2d": lambda: scalar_volume_from_array(scene, rng.normal(size=(1, 32, 32)).astype(np.float32), geom=g),
        "vector": lambda: scalar_volume_from_array(scene, rng.normal(size=(8, 32, 32, 3)).astype(np.float32), geom=g,
                                                   cls="vtkMRMLVectorVolumeNode"),
        "constant": lambda: scalar_volume_from_array(scene, np.full((8, 32, 32), 5, np.int16), geom=g),
        "nan": lambda: scalar_volume_from_array(scene, np.where(rng.random((8, 32, 32)) > 0.9, np.nan, 1.0)
                                                .astype(np.float32), geom=g),
        "segmentation_node": lambda: scene.AddNewNodeByClass("vtkMRMLSegmentationNode"),
        "labelmap": lambda: scalar_volume_from_array(scene, rng.integers(0, 2, (8, 32, 32)).astype(np.uint8), geom=g,
                                                     cls="vtkMRMLLabelMapVolumeNode"),
        "none": lambda: None,
    }[kind]()
    before = n_nodes(slicer_app)
    logic = SRMASegmenterLogic(scene, slicer_app.segmentations_logic)
    with pytest.raises((NodeError, VolumeError)) as e:
        logic.run(node, segmenter=tiny_segmenter)
    expected = {"2d": "2D image", "vector": "components per voxel", "constant": "constant", "nan": "NaN",
                "segmentation_node": "select a scalar", "labelmap": "select a scalar", "none": "no input volume"}[kind]
    assert expected in str(e.value)
    assert n_nodes(slicer_app) == before
    scene.Clear(0)


def test_wrong_weights_change_nothing(scene_bits, tmp_path):
    app, logic, vol, *_ = scene_bits
    before = n_nodes(app)
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(WeightsError):
        logic.run(vol, weights=bad, device="cpu")
    assert n_nodes(app) == before


def test_reference_segmentation_on_another_grid_is_compared_in_space(scene_bits, tiny_segmenter):
    """Issue 17 item 3 in the module: a reference segmentation drawn on another volume's grid (here shifted
    by 3 voxels along i) is brought onto the input's grid before the metrics, not compared voxel by voxel."""
    from SRMASegmenterLib.volumes import Geometry
    from slicer_ai_mrml.nodes import import_mask_as_segment, mask_from_segmentation, scalar_volume_from_array
    app, logic, vol, arr, lab, geom = scene_bits
    liver = lab == 1
    d = np.asarray(geom.direction)
    shifted = Geometry(geom.spacing, tuple(np.asarray(geom.origin) + d[:, 0] * 3 * geom.spacing[0]), d)
    other = scalar_volume_from_array(app.scene, arr, geom=shifted, name="other")
    ref = np.zeros_like(liver)
    ref[:, :, :-3] = liver[:, :, 3:]                  # ref voxel i lies where the input's voxel i + 3 does
    ref_node, _, _ = import_mask_as_segment(app.scene, app.segmentations_logic, ref, other, name="Reference",
                                            color=(0.2, 0.8, 0.2), show_3d=False)
    expected = np.zeros_like(liver)
    expected[:, :, 3:] = liver[:, :, 3:]
    got = mask_from_segmentation(app.scene, app.segmentations_logic, ref_node, vol)
    assert got.shape == liver.shape and np.array_equal(got, expected)
    res = logic.run(vol, reference_segmentation=ref_node, segmenter=tiny_segmenter)
    p = res.mask > 0
    dice = 2 * (p & expected).sum() / max(1, p.sum() + expected.sum())
    assert float(_table(res)["Dice"]) == pytest.approx(dice, rel=1e-5, abs=1e-9)
