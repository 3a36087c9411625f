"""Issue 17 item 13: the model runs off the GUI thread while the GUI keeps pumping events; the scene is
read before and written after, on the calling thread; Cancel and errors cross back; without a pump
(console, batch, CLI) nothing changes."""
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import oblique_geometry
from slicer_ai_common.progress import Cancelled, Progress, call_in_worker

SAMPLES = Path(__file__).resolve().parents[1] / "UltraScanClassifier" / "Resources" / "SampleData"


def test_worker_runs_elsewhere_while_the_caller_pumps():
    main = threading.get_ident()
    seen, pumps, reports = {}, [], []

    def fn(prog):
        seen["thread"] = threading.get_ident()
        for i in range(5):
            prog.step("working", i / 4)
            time.sleep(0.03)
        return 42

    prog = Progress(lambda s, f: reports.append((s, f, threading.get_ident())))
    assert call_in_worker(fn, prog, pump=lambda: pumps.append(threading.get_ident()), interval=0.01) == 42
    assert seen["thread"] != main
    assert len(pumps) >= 3 and set(pumps) == {main}          # the GUI thread kept running its events
    assert reports and {t for *_, t in reports} == {main}    # widgets are only touched on the GUI thread
    assert reports[-1][:2] == ("working", 1.0)               # the last report is never lost


def test_worker_cancel_from_the_gui_thread_and_errors_cross_back():
    prog = Progress()
    started = threading.Event()

    def slow(p):
        started.set()
        for _ in range(500):
            p.step("x", 0.5)
            time.sleep(0.01)
        return "finished"

    with pytest.raises(Cancelled):
        call_in_worker(slow, prog, pump=lambda: started.is_set() and prog.cancel(), interval=0.01)

    def bad(p):
        raise KeyError("specific")
    with pytest.raises(KeyError, match="specific"):
        call_in_worker(bad, Progress(), pump=lambda: None)


def test_without_a_pump_the_function_runs_here():
    main = threading.get_ident()
    assert call_in_worker(lambda p: threading.get_ident()) == main


@pytest.fixture()
def liver_bits(slicer_app, small_case, tiny_segmenter):
    from slicer_ai_mrml.nodes import scalar_volume_from_array
    from SRMASegmenterLogic import SRMASegmenterLogic
    arr, lab, _ = small_case
    geom = oblique_geometry()
    vol = scalar_volume_from_array(slicer_app.scene, arr, geom=geom, name="mri")
    logic = SRMASegmenterLogic(slicer_app.scene, slicer_app.segmentations_logic)

    class Slow:                              # the tiny model, slowed down and watched
        def __init__(self):
            self.thread = None

        def predict(self, *a, **k):
            self.thread = threading.get_ident()
            time.sleep(0.3)
            return tiny_segmenter.predict(*a, **k)

    yield slicer_app, logic, vol, arr, geom, Slow()
    slicer_app.scene.Clear(0)


def test_segment_liver_with_a_pump_runs_the_model_on_a_worker(liver_bits, tiny_segmenter):
    app, logic, vol, arr, geom, slow = liver_bits
    pumps = []
    res = logic.run(vol, segmenter=slow, pump=lambda: pumps.append(app.scene.GetNumberOfNodes()))
    assert slow.thread is not None and slow.thread != threading.get_ident()
    assert len(pumps) >= 3
    expected, _ = tiny_segmenter.predict(arr, geom)
    assert np.array_equal(res.mask, expected)
    assert res.segmentation_node.GetScene() is app.scene and res.table_node.GetScene() is app.scene


def test_segment_liver_cancelled_from_the_pump_adds_nothing(liver_bits):
    app, logic, vol, arr, geom, slow = liver_bits
    before = app.scene.GetNumberOfNodes()
    prog = Progress()
    with pytest.raises(Cancelled):
        logic.run(vol, segmenter=slow, progress=prog, pump=prog.cancel)
    assert app.scene.GetNumberOfNodes() == before


def test_input_removed_during_the_run_adds_nothing(liver_bits):
    from SRMASegmenterLogic import NodeError
    app, logic, vol, arr, geom, slow = liver_bits
    removed = []

    def pump():                              # the user deletes the input while the model runs
        if not removed:
            app.scene.RemoveNode(vol)
            removed.append(True)
    before_classes = app.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    with pytest.raises(NodeError, match="removed from the scene during the run"):
        logic.run(vol, segmenter=slow, pump=pump)
    assert app.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == before_classes
    assert app.scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 0


def test_classify_with_a_pump_runs_the_model_on_a_worker(slicer_app):
    from slicer_ai_mrml.nodes import scalar_volume_from_array
    from UltraScanClassifierLib.images import read_image
    from UltraScanClassifierLib.inference import UltrasoundClassifier
    from UltraScanClassifierLogic import UltraScanClassifierLogic

    clf = UltrasoundClassifier.load("efficientnet_lite0_busi", device="cpu")
    threads = []

    class Watched:
        def classify(self, *a, **k):
            threads.append(threading.get_ident())
            return clf.classify(*a, **k)

    arr, _ = read_image(sorted(SAMPLES.glob("*.png"))[0])
    arr = arr if arr.ndim == 2 else arr[..., 0]
    node = scalar_volume_from_array(slicer_app.scene, arr[None], name="us")
    logic = UltraScanClassifierLogic(slicer_app.scene)
    pumps = []
    try:
        res = logic.classify(node, classifier=Watched(), heatmap=True, pump=lambda: pumps.append(1))
        assert threads and threads[0] != threading.get_ident()
        assert res.classification.label == clf.classify(arr, heatmap=False).label
        assert res.heatmap_node is not None and res.heatmap_node.GetScene() is slicer_app.scene
    finally:
        slicer_app.scene.Clear(0)


def test_classify_folder_with_a_pump(slicer_app):
    from UltraScanClassifierLib.images import read_image
    from UltraScanClassifierLib.inference import UltrasoundClassifier
    from UltraScanClassifierLogic import UltraScanClassifierLogic

    clf = UltrasoundClassifier.load("efficientnet_lite0_busi", device="cpu")
    logic = UltraScanClassifierLogic(slicer_app.scene)
    pumps = []
    try:
        res = logic.classify_folder(SAMPLES, classifier=clf, pump=lambda: pumps.append(1))
        assert len(res.rows) == 3 and not res.failures
        expected = [clf.classify(*read_image(p), heatmap=False).label for p in sorted(SAMPLES.glob("*.png"))]
        assert [r["Label"] for r in res.rows] == expected
    finally:
        slicer_app.scene.Clear(0)
