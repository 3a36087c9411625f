"""SRMASegmenter: one-click liver segmentation of MRI volumes with SRMA-Mamba.

Thin module file: GUI wiring, parameter node, progress/cancel. The work is done by
SRMASegmenterLogic (MRML only) over SRMASegmenterLib (model, inference; plain Python).
"""
import os
import sys
from typing import Annotated

import slicer
import vtk
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from MRMLCorePython import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode  # noqa: F401


class SRMASegmenter(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SRMA Liver Segmenter")
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["Slicer liver and ultrasound AI team"]
        self.parent.helpText = _(
            "Segments the liver in an MRI volume with SRMA-Mamba (Zeng et al., arXiv 2508.12410). "
            "Select a scalar volume and click <b>Segment Liver</b>: the result is an editable 'Liver' segment and a "
            "table with its volume. Decision support, not a diagnosis: review and edit the segment.")
        self.parent.acknowledgementText = _(
            "Model architecture by Zeng et al.; shipped weights trained on CHAOS MR T2 (Kavur et al., CC BY-SA 4.0).")


# From a source checkout the shared packages sit beside this folder; an installed extension has them on the path.
_HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.isdir(os.path.join(_HERE, "..", "SlicerAICommon")):
    sys.path.append(os.path.normpath(os.path.join(_HERE, "..", "SlicerAICommon")))
from slicer_ai_app import AIModuleLogicMixin, AIModuleWidgetMixin, add_library_paths  # noqa: E402

add_library_paths(_HERE)


@parameterNodeWrapper
class SRMASegmenterParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    referenceSegmentation: vtkMRMLSegmentationNode
    modality: Annotated[str, Choice(["T2", "T1"])] = "T2"
    device: Annotated[str, Choice(["auto", "gpu", "cpu"])] = "auto"
    smoothing: bool = False
    otherOrgans: bool = False
    weightsPath: str = ""


class SRMASegmenterWidget(AIModuleWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The parameter node's lifecycle and the progress / Cancel state come from slicer_ai_app's mixin; this
    class keeps its widgets, what enables Segment Liver, and the run."""

    moduleTitle = _("SRMA Liver Segmenter")  # what the install prompt and the log name

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self._init_widget_state()

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self._setup_common("UI/SRMASegmenter.ui", SRMASegmenterModuleLogic())
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first and not first.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = first

    def _checkCanApply(self, caller=None, event=None):
        ok = bool(self._parameterNode and self._parameterNode.inputVolume)
        self.ui.applyButton.enabled = ok and self._progress is None
        self.ui.applyButton.toolTip = _("Segment the liver") if ok else _("Select an input volume")

    def onApplyButton(self):
        self._run(self._segment, failed=_("Liver segmentation failed: "))

    def _segment(self):
        p = self._parameterNode
        res = self.logic.logic().run(
            p.inputVolume, output_segmentation=p.outputSegmentation,
            reference_segmentation=p.referenceSegmentation, device=p.device,
            weights=p.weightsPath or None, smoothing=p.smoothing, modality=p.modality,
            progress=self._progress, organs="spleen,kidneys" if p.otherOrgans else None,
            pump=slicer.app.processEvents)  # the model runs on a worker thread; the GUI stays live
        if p.outputSegmentation is None:
            p.outputSegmentation = res.segmentation_node
        self.ui.resultsTableView.setMRMLTableNode(res.table_node)
        res.segmentation_node.GetDisplayNode().SetVisibility(True)
        notes = "; ".join(res.info.get("notes", []))
        self.ui.statusLabel.text = (_("Liver: ") + f"{res.info['volume_ml']:.0f} mL, {res.info['seconds']:.1f} s "
                                    f"on {res.info['device']}" + (f" ({notes})" if notes else ""))


class SRMASegmenterModuleLogic(AIModuleLogicMixin, ScriptedLoadableModuleLogic):
    """Slicer-side holder of the parameter node and the MRML logic (SRMASegmenterLogic)."""

    parameterNodeClass = SRMASegmenterParameterNode

    def _make_logic(self):
        from SRMASegmenterLogic import SRMASegmenterLogic
        return SRMASegmenterLogic(slicer.mrmlScene, slicer.modules.segmentations.logic())


class SRMASegmenterTest(ScriptedLoadableModuleTest):
    """Runs inside the Slicer application: real scene, real logics, the bundled sample volume."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_segment_sample()
        self.test_bad_input_leaves_scene()

    def _sample(self):
        here = os.path.dirname(os.path.abspath(__file__))
        path = os.path.join(here, "Resources", "SampleData", "chaos_case20_t2.nii.gz")
        return slicer.util.loadVolume(os.path.normpath(path))

    def test_segment_sample(self):
        from SRMASegmenterLogic import SRMASegmenterLogic
        vol = self._sample()
        logic = SRMASegmenterLogic(slicer.mrmlScene, slicer.modules.segmentations.logic())
        res = logic.run(vol, device="cpu")
        seg = res.segmentation_node.GetSegmentation().GetSegment(res.segment_id)
        self.assertEqual(seg.GetName(), "Liver")
        tag = vtk.reference("")
        self.assertTrue(seg.GetTag(seg.GetTerminologyEntryTagName(), tag))
        self.assertIn("10200004", str(tag))
        self.assertGreater(res.info["volume_ml"], 500)
        self.delayDisplay("Liver segmented: %.0f mL" % res.info["volume_ml"])

    def test_bad_input_leaves_scene(self):
        import numpy as np
        from SRMASegmenterLogic import SRMASegmenterLogic
        vol = slicer.util.addVolumeFromArray(np.zeros((8, 8, 8), dtype=np.int16))
        n = slicer.mrmlScene.GetNumberOfNodes()
        logic = SRMASegmenterLogic(slicer.mrmlScene, slicer.modules.segmentations.logic())
        with self.assertRaises(ValueError):
            logic.run(vol, device="cpu")
        self.assertEqual(n, slicer.mrmlScene.GetNumberOfNodes())
