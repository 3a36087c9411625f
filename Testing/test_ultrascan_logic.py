"""UltraScanClassifierLogic on real MRML nodes (slicer-core), real BUSI images and the shipped model."""
import csv

import numpy as np
import pytest

from conftest import SHARED, need
from slicer_ai_common.progress import Cancelled, Progress
from slicer_ai_common.weights import WeightsError

BUSI = SHARED / "data" / "busi"
OBLIQUE = np.array([[0.0, -0.2, 0.0, 12.5], [0.3, 0.0, 0.0, -40.0], [0.0, 0.0, 0.7, 3.25], [0, 0, 0, 1.0]])


@pytest.fixture(scope="module")
def clf():
    from UltraScanClassifierLib.inference import UltrasoundClassifier
    return UltrasoundClassifier.load(device="cpu")


@pytest.fixture()
def app(slicer_app):
    yield slicer_app
    slicer_app.scene.Clear(0)


def gray_image(name="malignant/malignant (12).png"):
    from UltraScanClassifierLib.images import read_image
    arr, _ = read_image(need(BUSI / name))
    assert arr.ndim == 2
    return arr


def set_matrix(node, m):
    import vtk
    vm = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            vm.SetElement(r, c, m[r, c])
    node.SetIJKToRASMatrix(vm)


def image_node(scene, arr, rgb=False, name="us"):
    from slicer_ai_mrml.nodes import scalar_volume_from_array
    if rgb:
        vol = np.repeat(arr[None, :, :, None], 3, axis=3)
        node = scalar_volume_from_array(scene, vol, name=name, cls="vtkMRMLVectorVolumeNode")
    else:
        node = scalar_volume_from_array(scene, arr[None], name=name)
    set_matrix(node, OBLIQUE)
    return node


def ijk_to_ras(node):
    import vtk
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def test_rgb_and_grayscale_give_the_same_result(app, clf):
    from UltraScanClassifierLogic import UltraScanClassifierLogic
    logic = UltraScanClassifierLogic(app.scene)
    arr = gray_image()
    g = logic.classify(image_node(app.scene, arr), classifier=clf, heatmap=False)
    c = logic.classify(image_node(app.scene, arr, rgb=True, name="us rgb"), classifier=clf, heatmap=False)
    assert g.classification.label == c.classification.label
    for k in g.classification.probabilities:
        assert abs(g.classification.probabilities[k] - c.classification.probabilities[k]) < 1e-6


def test_heatmap_has_the_input_geometry_and_table_holds_the_model_output(app, clf):
    from slicer_ai_mrml.nodes import array_from_volume_node
    from UltraScanClassifierLogic import TABLE_COLUMNS, UltraScanClassifierLogic
    logic = UltraScanClassifierLogic(app.scene)
    arr = gray_image("benign/benign (3).png")[:, 17:]          # not square
    node = image_node(app.scene, arr)
    res = logic.classify(node, classifier=clf)
    h = res.heatmap_node
    assert np.allclose(ijk_to_ras(h), ijk_to_ras(node), atol=0, rtol=0)     # spacing, origin, direction
    assert h.GetImageData().GetDimensions() == node.GetImageData().GetDimensions()
    heat = array_from_volume_node(h)
    assert heat.shape == (1,) + arr.shape and 0 <= heat.min() and heat.max() <= 1.0 and heat.max() > 0
    direct = clf.classify(arr, heatmap=True)
    assert np.allclose(heat[0], direct.heatmap, atol=1e-5)
    rows = logic.table_rows(res.table_node)
    assert len(rows) == 1 and list(rows[0]) == list(TABLE_COLUMNS)
    assert rows[0]["Label"] == direct.label == res.classification.label
    for c in ("benign", "malignant", "normal"):
        assert abs(float(rows[0][f"P({c})"]) - direct.probabilities[c]) < 1e-5
    assert abs(sum(direct.probabilities.values()) - 1) < 1e-9
    # a second run appends to the same table and reuses the heatmap node
    n = app.scene.GetNumberOfNodes()
    logic.classify(node, classifier=clf)
    assert app.scene.GetNumberOfNodes() == n
    assert len(logic.table_rows(res.table_node)) == 2


def _bad_nodes(scene):
    from slicer_ai_mrml.nodes import scalar_volume_from_array
    arr = gray_image().astype(np.float32)
    nan = arr.copy()
    nan[5:9, 5:9] = np.nan
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "no pixels")
    return [
        (scalar_volume_from_array(scene, np.stack([arr, arr, arr]), name="3d"), "3D volume with 3 slices"),
        (empty, "has no image data"),
        (scalar_volume_from_array(scene, np.full((1, 64, 64), 7.0, np.float32), name="flat"), "constant image"),
        (scalar_volume_from_array(scene, nan[None], name="nan"), "NaN"),
        (scalar_volume_from_array(scene, np.zeros((1, 1, 0), np.uint8), name="zero"), None),
    ]


def test_bad_inputs_give_specific_errors_and_change_nothing(app, clf):
    from UltraScanClassifierLib.images import ImageError
    from UltraScanClassifierLogic import NodeError, UltraScanClassifierLogic
    logic = UltraScanClassifierLogic(app.scene)
    for node, msg in _bad_nodes(app.scene):
        before = app.scene.GetNumberOfNodes()
        with pytest.raises((NodeError, ImageError)) as e:
            logic.classify(node, classifier=clf)
        if msg:
            assert msg in str(e.value), str(e.value)
        assert app.scene.GetNumberOfNodes() == before
    node = image_node(app.scene, gray_image())
    before = app.scene.GetNumberOfNodes()
    with pytest.raises(WeightsError, match="no weights at .*ultrascannet.safetensors"):
        logic.classify(node, weights="/nonexistent/ultrascannet.safetensors")
    assert app.scene.GetNumberOfNodes() == before


def test_folder_mode_cancel_keeps_finished_rows_and_adds_no_partial_row(app, clf, tmp_path):
    import shutil
    from UltraScanClassifierLogic import UltraScanClassifierLogic
    folder = tmp_path / "imgs"
    folder.mkdir()
    for n in ("benign (1).png", "benign (2).png", "benign (3).png", "benign (4).png"):
        shutil.copy(need(BUSI / "benign" / n), folder / n)
    (folder / "notes.png").write_bytes(b"not an image")
    logic = UltraScanClassifierLogic(app.scene)
    done = logic.classify_folder(folder, classifier=clf)
    assert len(done.rows) == 4 and len(done.failures) == 1 and "not a readable image" in done.failures[0][1]
    out = logic.export_csv(done.table_node, tmp_path / "t.csv")
    assert len(list(csv.DictReader(open(out)))) == 4
    app.scene.RemoveNode(done.table_node)

    calls = []

    def cb(stage, frac):
        calls.append(stage)
        if len(calls) == 3:          # while the 3rd image is being classified
            progress.cancel()
    progress = Progress(cb)
    with pytest.raises(Cancelled):
        logic.classify_folder(folder, classifier=clf, progress=progress)
    table = logic.find_table()
    rows = logic.table_rows(table)
    assert len(rows) == 2 and all(r["Label"] for r in rows)
    assert [r["Image"] for r in rows] == sorted(p.name for p in folder.glob("benign*"))[:2]


def test_cancel_on_one_image_leaves_the_scene(app, clf):
    from UltraScanClassifierLogic import UltraScanClassifierLogic
    logic = UltraScanClassifierLogic(app.scene)
    node = image_node(app.scene, gray_image())
    before = app.scene.GetNumberOfNodes()
    progress = Progress(lambda s, f: progress.cancel() if f >= 1.0 else None)
    with pytest.raises(Cancelled):
        logic.classify(node, classifier=clf, progress=progress)
    assert app.scene.GetNumberOfNodes() == before


def test_one_frame_of_a_multi_frame_volume(app, clf):
    from slicer_ai_mrml.nodes import array_from_volume_node, scalar_volume_from_array
    from UltraScanClassifierLogic import NodeError, UltraScanClassifierLogic
    logic = UltraScanClassifierLogic(app.scene)
    frames = np.stack([gray_image("benign/benign (3).png"), gray_image(), gray_image("normal/normal (5).png")])
    cine = scalar_volume_from_array(app.scene, frames, name="cine")
    set_matrix(cine, OBLIQUE)
    res = logic.classify(cine, classifier=clf, frame=1)
    single = clf.classify(frames[1], heatmap=False)
    assert res.classification.label == single.label
    assert np.allclose(res.classification.logits, single.logits, atol=1e-5)
    assert "frame 2 of 3" in res.frame_note and any("frame 2 of 3" in n for n in res.classification.notes)
    assert res.row["Image"] == "cine [frame 2]"
    heat = array_from_volume_node(res.heatmap_node)
    assert heat.shape == frames.shape and heat[1].max() > 0 and heat[0].max() == 0 and heat[2].max() == 0
    assert np.allclose(ijk_to_ras(res.heatmap_node), ijk_to_ras(cine), atol=0, rtol=0)
    n = app.scene.GetNumberOfNodes()
    with pytest.raises(NodeError, match="frame 5 does not exist"):
        logic.classify(cine, classifier=clf, frame=5)
    assert app.scene.GetNumberOfNodes() == n


def test_second_model_by_name_through_the_logic(app):
    """The module passes the chosen model's name as `weights`: the logic loads it and the table row says
    which model gave the verdict; the heatmap keeps the input geometry with this model too."""
    from UltraScanClassifierLogic import UltraScanClassifierLogic
    logic = UltraScanClassifierLogic(app.scene)
    arr = gray_image("benign/benign (3).png")[:, 17:]
    node = image_node(app.scene, arr)
    res = logic.classify(node, device="cpu", weights="ultrascannet_busi")
    rows = logic.table_rows(res.table_node)
    assert rows[0]["Weights"].startswith("ultrascannet_busi@")
    assert np.allclose(ijk_to_ras(res.heatmap_node), ijk_to_ras(node), atol=0, rtol=0)
    default = logic.classify(node, device="cpu", table_node=res.table_node)
    assert logic.table_rows(default.table_node)[1]["Weights"].startswith("efficientnet_lite0_busi@")
