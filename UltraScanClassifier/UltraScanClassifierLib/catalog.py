"""Where the shipped ultrasound models are and which is the default; standard library only, so the
Slicer module can list them (its Model choice) before torch is installed."""
from __future__ import annotations

from pathlib import Path

from slicer_ai_common.resources import resource_dir
from slicer_ai_common.weights import MANIFEST          # standard library only, like this file

MODELS_DIR = resource_dir(__file__, "UltraScanClassifierResources", "Models")   # Slicer / checkout / wheel
DEFAULT_MODEL = "efficientnet_lite0_busi"   # the more accurate one: CV accuracy 0.865 (leak-free folds) vs UltraScanNet 0.71


def model_names(root=MODELS_DIR) -> list:
    """Names of the shipped models (folders with a manifest), the default first."""
    root = Path(root)
    names = sorted(p.name for p in root.iterdir() if (p / MANIFEST).is_file()) if root.is_dir() else []
    return sorted(names, key=lambda n: n != DEFAULT_MODEL)
