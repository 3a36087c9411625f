"""Which Python packages the modules need, and which are missing (checked on first use, never at import)."""
from __future__ import annotations

import importlib.util
import platform

# import name -> pip requirement: the runtime's third-party needs, the same as pyproject.toml's dependencies
# (less numpy, which torch brings, and ssm-kernels, which ships inside the extension)
REQUIRED = {"torch": "torch>=2.1", "monai": "monai>=1.3", "safetensors": "safetensors>=0.4", "scipy": "scipy", "PIL": "pillow",
            "SimpleITK": "SimpleITK>=2.2"}
# the GPU kernels: only where they can run
OPTIONAL_GPU = {"triton": "triton>=3.0"}


def gpu_kernels_possible() -> bool:
    """Triton kernels need Linux and an NVIDIA GPU; elsewhere the vectorised CPU path is used."""
    if platform.system() != "Linux":
        return False
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def missing_packages(include_gpu: bool | None = None) -> list[str]:
    """Requirements (pip syntax) not importable now."""
    need = dict(REQUIRED)
    if include_gpu is None:
        include_gpu = importlib.util.find_spec("torch") is not None and gpu_kernels_possible()
    if include_gpu:
        need.update(OPTIONAL_GPU)
    return [req for mod, req in need.items() if importlib.util.find_spec(mod) is None]


def require_highdicom(purpose: str = "DICOM SEG / SR output"):
    """Raise a one-line RuntimeError saying how to install highdicom (and pydicom) when they are missing."""
    try:
        import highdicom  # noqa: F401
        import pydicom  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f"{purpose} needs highdicom: pip install highdicom "
                           "(or pip install 'slicer-liver-ultrasound-ai[dicom]')") from e


def package_version(dist: str = "slicer-liver-ultrasound-ai") -> str:
    """The installed version of the project (the algorithm version written into DICOM objects); "dev" in a
    checkout that was not pip-installed (inside Slicer, for instance)."""
    from importlib import metadata
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "dev"
