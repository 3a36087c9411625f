"""Slicer-application helpers both module files use (imports slicer: never imported by the plain
libraries or the MRML logics)."""
from __future__ import annotations


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
