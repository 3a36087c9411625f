"""Slicer-application helpers both module files use (imports slicer: never imported by the plain
libraries or the MRML logics)."""
from __future__ import annotations

import os
import sys


def add_library_paths(module_dir: str) -> None:
    """Make the plain-Python packages importable from a source checkout: the module folder, its Lib
    folder, ../SlicerAICommon and ../kernels, where they exist (an installed extension has them on the
    path already, so nothing is added there)."""
    for p in (module_dir, os.path.join(module_dir, "Lib"), os.path.join(module_dir, "..", "SlicerAICommon"),
              os.path.join(module_dir, "..", "kernels")):
        p = os.path.normpath(p)
        if os.path.isdir(p) and p not in sys.path:
            sys.path.append(p)


def ensure_dependencies(module_title: str, ask: bool = True) -> bool:
    """On first use: find missing packages and install them with the user's consent."""
    import slicer
    from slicer.i18n import tr as _

    from slicer_ai_common.dependencies import missing_packages

    missing = missing_packages()
    if not missing:
        return True
    if ask and not slicer.util.confirmOkCancelDisplay(
            module_title + _(" needs these Python packages: ") + ", ".join(missing) +
            _(". Install them now? (This can take several minutes.)")):
        return False
    torch_missing = [m for m in missing if m.startswith("torch")]
    if torch_missing:
        try:
            import PyTorchUtils  # the PyTorch extension picks the right CUDA/CPU build
            PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False)
        except ImportError:
            slicer.util.pip_install(" ".join(torch_missing))
    rest = [m for m in missing if not m.startswith("torch")]
    if rest:
        slicer.util.pip_install(" ".join(f'"{m}"' for m in rest))
    return not missing_packages()


class AIModuleWidgetMixin:
    """What both module widgets do alike, moved here verbatim from them: loading the .ui, the parameter
    node's lifecycle (connect / disconnect the GUI, follow scene close), and the progress / Cancel state of
    one run at a time. Use it first among the bases:

        class MyWidget(AIModuleWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin)

    and call `_init_widget_state()` in __init__ and `_setup_common(ui_file, module_logic)` in setup(). The
    widget keeps its own `initializeParameterNode` (which node to preselect), `_checkCanApply` (which buttons
    a state enables) and its run handlers, which wrap the work in `_start()` / `_finish()`. Needs `self.ui`
    to have cancelButton, progressBar and statusLabel."""

    def _init_widget_state(self):
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._progress = None

    def _setup_common(self, ui_file: str, module_logic):
        import slicer
        ui_widget = slicer.util.loadUI(self.resourcePath(ui_file))
        self.layout.addWidget(ui_widget)
        self.ui = slicer.util.childWidgetVariables(ui_widget)
        ui_widget.setMRMLScene(slicer.mrmlScene)
        self.logic = module_logic
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.cancelButton.enabled = False
        self.ui.progressBar.hide()

    def cleanup(self):
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        import vtk
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event):
        if self._progress is not None:      # a run in progress: stop it, its results have no scene to go to
            self._progress.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def setParameterNode(self, node):
        import vtk
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = node
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _onProgress(self, stage, fraction):
        self.ui.progressBar.value = int(100 * fraction)
        self.ui.statusLabel.text = stage

    def onCancel(self):
        from slicer.i18n import tr as _
        if self._progress is not None:
            self._progress.cancel()
            self.ui.statusLabel.text = _("Cancelling...")

    def _start(self):
        from slicer_ai_common.progress import Progress
        self._progress = Progress(self._onProgress)
        self.ui.cancelButton.enabled = True
        self.ui.progressBar.show()
        self._checkCanApply()

    def _finish(self):
        self._progress = None
        self.ui.cancelButton.enabled = False
        self.ui.progressBar.hide()
        self._checkCanApply()

    def _run(self, work, failed: str, cancelled: str | None = None, wait_cursor: bool = True,
             missing_status: bool = True) -> None:
        """One run, the way both modules do it: the packages checked first (the user asked to install what
        is missing), progress and Cancel live while `work()` runs, a cancelled run said in the status line,
        any failure logged, said in the status line and shown in an error dialog (`failed` + the message);
        the widgets always put back. The widget sets `moduleTitle` (the name the install prompt shows)."""
        import logging

        import slicer
        from slicer.i18n import tr as _

        from slicer_ai_common.progress import Cancelled

        if not ensure_dependencies(self.moduleTitle):
            if missing_status:
                self.ui.statusLabel.text = _("Missing Python packages: not run.")
            return
        self._start()
        try:
            if wait_cursor:
                with slicer.util.WaitCursor():
                    work()
            else:
                work()
        except Cancelled:
            self.ui.statusLabel.text = cancelled or _("Cancelled: nothing was added to the scene.")
        except Exception as e:  # noqa: BLE001 - every failure is shown, the scene is unchanged
            logging.exception("%s failed", self.moduleTitle)
            self.ui.statusLabel.text = _("Failed: ") + str(e)
            slicer.util.errorDisplay(failed + str(e))
        finally:
            self._finish()


class AIModuleLogicMixin:
    """The Slicer-side module logic of both modules: holds the parameter node and builds the MRML logic on
    first use. Use it first among the bases, `class MyModuleLogic(AIModuleLogicMixin,
    ScriptedLoadableModuleLogic)`, set `parameterNodeClass` and define `_make_logic()`."""

    parameterNodeClass = None
    _logic = None

    def getParameterNode(self):
        return self.parameterNodeClass(super().getParameterNode())

    def logic(self):
        if self._logic is None:
            self._logic = self._make_logic()
        return self._logic

    def _make_logic(self):
        raise NotImplementedError
