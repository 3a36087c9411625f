"""UltraScanClassifier: benign / malignant / normal for a breast-ultrasound image, with its evidence.

Thin module file: GUI wiring, parameter node, progress/cancel, showing the heatmap. The work is done by
UltraScanClassifierLogic (MRML only) over UltraScanClassifierLib (model, inference; plain Python).
"""
import os
import sys
from typing import Annotated

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from MRMLCorePython import vtkMRMLTableNode, vtkMRMLVolumeNode  # noqa: F401

TITLE = "UltraScan Classifier"


class UltraScanClassifier(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _(TITLE)
        self.parent.categories = ["Ultrasound"]
        self.parent.dependencies = []
        self.parent.contributors = ["Slicer liver and ultrasound AI team"]
        self.parent.helpText = _(
            "Classifies a breast-ultrasound image as benign, malignant or normal. Select a 2D image and click "
            "<b>Classify</b>: calibrated probabilities, a heatmap of the regions that drove the verdict, and a "
            "row in the results table. Folder mode classifies every image of a folder. Two shipped models: "
            "EfficientNet-Lite0 (ImageNet-initialised, two seeds averaged; the default, the more accurate in "
            "cross-validation: 0.865) and UltraScanNet (Laicu-Hausberger and Popa, 2025; 0.71), see their "
            "model cards. "
            "Decision support, not a diagnosis.")
        self.parent.acknowledgementText = _(
            "Architecture by Laicu-Hausberger and Popa; shipped weights trained on BUSI "
            "(Al-Dhabyani et al., Data in Brief 28, 2020).")


# From a source checkout the shared packages sit beside this folder; an installed extension has them on the path.
_HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.isdir(os.path.join(_HERE, "..", "SlicerAICommon")):
    sys.path.append(os.path.normpath(os.path.join(_HERE, "..", "SlicerAICommon")))
from slicer_ai_app import AIModuleLogicMixin, AIModuleWidgetMixin, add_library_paths  # noqa: E402

add_library_paths(_HERE)
from UltraScanClassifierLib.catalog import DEFAULT_MODEL, model_names  # noqa: E402 - standard library only

SHIPPED_MODELS = model_names() or [DEFAULT_MODEL]   # the Model choice: folders in Resources/Models, default first


@parameterNodeWrapper
class UltraScanClassifierParameterNode:
    inputImage: vtkMRMLVolumeNode
    resultsTable: vtkMRMLTableNode
    device: Annotated[str, Choice(["auto", "gpu", "cpu"])] = "auto"
    showHeatmap: bool = True
    heatmapOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.4
    model: Annotated[str, Choice(SHIPPED_MODELS)] = SHIPPED_MODELS[0]
    weightsPath: str = ""
    folderPath: str = ""


class UltraScanClassifierWidget(AIModuleWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The parameter node's lifecycle and the progress / Cancel state come from slicer_ai_app's mixin; this
    class keeps its widgets, what enables each button, and the runs."""

    moduleTitle = _(TITLE)  # what the install prompt and the log name

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self._init_widget_state()
        self._bars = {}

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self._setup_common("UI/UltraScanClassifier.ui", UltraScanClassifierModuleLogic())
        self._bars = {"benign": self.ui.benignBar, "malignant": self.ui.malignantBar, "normal": self.ui.normalBar}
        self.ui.classifyButton.connect("clicked(bool)", self.onClassify)
        self.ui.classifyFolderButton.connect("clicked(bool)", self.onClassifyFolder)
        self.ui.exportCsvButton.connect("clicked(bool)", self.onExportCsv)
        self.ui.heatmapOpacitySlider.connect("valueChanged(double)", self._setOpacity)
        self.ui.disclaimerLabel.text = _("Decision support only, not a diagnosis.")
        self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())

    def _checkCanApply(self, caller=None, event=None):
        p = self._parameterNode
        idle = self._progress is None
        self.ui.classifyButton.enabled = bool(p and p.inputImage) and idle
        self.ui.classifyFolderButton.enabled = bool(p and p.folderPath) and idle
        self.ui.exportCsvButton.enabled = bool(p and p.resultsTable) and idle

    def _showResult(self, res):
        r = res.classification
        self.ui.verdictLabel.text = f"<b>{r.label.capitalize()}</b>"
        for c, bar in self._bars.items():
            bar.value = int(round(100 * r.probabilities[c]))
            bar.format = f"{c}: {100 * r.probabilities[c]:.1f}%"
        self.ui.disclaimerLabel.text = self.logic.logic().classifier(self._parameterNode.device,
                                                                     self._weights()).disclaimer
        notes = "; ".join(r.notes)
        self.ui.modelLabel.text = f"{r.weights_id} ({r.device}, {r.seconds:.2f} s)" + (f"; {notes}" if notes else "")
        self.ui.resultsTableView.setMRMLTableNode(res.table_node)
        self._parameterNode.resultsTable = res.table_node
        if res.heatmap_node is not None:
            slicer.util.setSliceViewerLayers(background=self._parameterNode.inputImage, foreground=res.heatmap_node,
                                             foregroundOpacity=self._parameterNode.heatmapOpacity)

    def _weights(self):
        """A weights file or folder chosen by the user wins over the shipped model picked in the list."""
        p = self._parameterNode
        return p.weightsPath or p.model

    def _setOpacity(self, value):
        for name in ("Red", "Yellow", "Green"):
            w = slicer.app.layoutManager().sliceWidget(name) if slicer.app.layoutManager() else None
            if w is not None:
                w.sliceLogic().GetSliceCompositeNode().SetForegroundOpacity(value)

    def onClassify(self):
        self._run(self._classify, failed=_("Classification failed: "))

    def _classify(self):
        p = self._parameterNode
        res = self.logic.logic().classify(p.inputImage, device=p.device, weights=self._weights(),
                                          heatmap=p.showHeatmap, table_node=p.resultsTable,
                                          progress=self._progress, pump=slicer.app.processEvents)
        self._showResult(res)
        self.ui.statusLabel.text = _("Done.")

    def onClassifyFolder(self):
        self._run(self._classifyFolder, failed=_("Folder classification failed: "), wait_cursor=False,
                  cancelled=_("Cancelled: the rows already in the table are kept."), missing_status=False)

    def _classifyFolder(self):
        p = self._parameterNode
        res = self.logic.logic().classify_folder(p.folderPath, device=p.device, weights=self._weights(),
                                                 table_node=p.resultsTable, progress=self._progress,
                                                 pump=slicer.app.processEvents)
        p.resultsTable = res.table_node
        self.ui.resultsTableView.setMRMLTableNode(res.table_node)
        msg = _("Classified {n} images.").format(n=len(res.rows))
        if res.failures:
            msg += " " + _("Skipped {n}: ").format(n=len(res.failures)) + "; ".join(
                f"{os.path.basename(f)} ({e})" for f, e in res.failures[:5])
        self.ui.statusLabel.text = msg

    def onExportCsv(self):
        path = qt.QFileDialog.getSaveFileName(None, _("Export results"), "ultrasound_classification.csv", "CSV (*.csv)")
        if path:
            self.logic.logic().export_csv(self._parameterNode.resultsTable, path)
            self.ui.statusLabel.text = _("Exported to ") + path


class UltraScanClassifierModuleLogic(AIModuleLogicMixin, ScriptedLoadableModuleLogic):
    """Slicer-side holder of the parameter node and the MRML logic (UltraScanClassifierLogic)."""

    parameterNodeClass = UltraScanClassifierParameterNode

    def _make_logic(self):
        from UltraScanClassifierLogic import UltraScanClassifierLogic
        return UltraScanClassifierLogic(slicer.mrmlScene)


class UltraScanClassifierTest(ScriptedLoadableModuleTest):
    """Runs inside the Slicer application: real scene, the bundled sample images, the shipped model."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_classify_sample()
        self.test_3d_volume_refused()

    def _sample(self, name):
        here = os.path.dirname(os.path.abspath(__file__))
        return slicer.util.loadVolume(os.path.join(here, "Resources", "SampleData", name), {"singleFile": True})

    def test_classify_sample(self):
        import numpy as np
        from UltraScanClassifierLogic import UltraScanClassifierLogic
        node = self._sample("busi_malignant_12.png")
        res = UltraScanClassifierLogic(slicer.mrmlScene).classify(node, device="cpu")
        self.assertAlmostEqual(sum(res.classification.probabilities.values()), 1.0, places=6)
        m1, m2 = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(m1)
        res.heatmap_node.GetIJKToRASMatrix(m2)
        self.assertTrue(all(m1.GetElement(r, c) == m2.GetElement(r, c) for r in range(4) for c in range(4)))
        self.assertTrue(np.isfinite(slicer.util.arrayFromVolume(res.heatmap_node)).all())
        self.delayDisplay(f"Verdict: {res.classification.label}")

    def test_3d_volume_refused(self):
        import numpy as np
        from UltraScanClassifierLogic import NodeError, UltraScanClassifierLogic
        vol = slicer.util.addVolumeFromArray(np.random.rand(4, 32, 32).astype(np.float32))
        n = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(NodeError):
            UltraScanClassifierLogic(slicer.mrmlScene).classify(vol, device="cpu")
        self.assertEqual(n, slicer.mrmlScene.GetNumberOfNodes())
