"""Where the shipped ultrasound models are and which is the default; standard library only, so the
Slicer module can list them (its Model choice) before torch is installed."""
from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parents[1] / "Resources" / "Models"
DEFAULT_MODEL = "ultrascannet_busi"
MANIFEST = "model.json"   # slicer_ai_common.weights.MANIFEST


def model_names(root=MODELS_DIR) -> list:
    """Names of the shipped models (folders with a manifest), the default first."""
    root = Path(root)
    names = sorted(p.name for p in root.iterdir() if (p / MANIFEST).is_file()) if root.is_dir() else []
    return sorted(names, key=lambda n: n != DEFAULT_MODEL)
