"""Shared fixtures. Tests that need ../shared (real data, fixtures) skip with a clear message without it."""
import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SLICER_AI_SHARED", ROOT.parent / "shared"))
CHAOS = SHARED / "data" / "chaos-mr-t2"
SRMA_FIX = SHARED / "fixtures" / "srma-official"
SAMPLE = ROOT / "SRMASegmenter" / "Resources" / "SampleData"


def need(path: Path):
    if not path.exists():
        pytest.skip(f"{path} is absent: this test needs the shared data/fixtures checked out beside the repo "
                    "(../shared) or SLICER_AI_SHARED pointing at them")
    return path


@pytest.fixture(scope="session")
def tiny_model_folder(tmp_path_factory):
    """The published architecture at EMBED_DIM 8 with the fixture's weights, as an installed model folder."""
    from safetensors.torch import load_file

    from slicer_ai_common.weights import save_sharded
    from SRMASegmenterLib.model import SRMAConfig

    sd = load_file(str(need(SRMA_FIX / "tiny_weights.safetensors")))
    folder = tmp_path_factory.mktemp("models") / "tiny"
    save_sharded(sd, folder, "tiny", {"config": SRMAConfig(dims=8).to_dict()}, dtype="float32")
    return folder


@pytest.fixture(scope="session")
def tiny_segmenter(tiny_model_folder):
    from SRMASegmenterLib.inference import InferenceConfig, LiverSegmenter
    return LiverSegmenter.load(tiny_model_folder, device="cpu",
                               config=InferenceConfig(roi_size=(64, 64, 16), sw_batch_size=4))


@pytest.fixture(scope="session")
def small_case():
    """A real CHAOS volume, subsampled in-plane to keep CPU inference short: (array kji, Geometry)."""
    from SRMASegmenterLib.volumes import read_volume
    arr, geom = read_volume(need(CHAOS / "case_20_t2.nii.gz"))
    lab, _ = read_volume(CHAOS / "case_20_labels.nii.gz")
    return arr[:, ::4, ::4].copy(), lab[:, ::4, ::4].copy(), geom


@pytest.fixture(scope="session")
def slicer_app():
    sc = pytest.importorskip("trame_slicer.core", reason="slicer-core (trame-slicer[standalone]) is not installed")
    return sc.SlicerApp()


def oblique_geometry(spacing=(1.1, 0.7, 4.5), origin=(12.5, -30.25, 101.0), angle=0.35):
    from SRMASegmenterLib.volumes import Geometry
    c, s = np.cos(angle), np.sin(angle)
    rz = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    rx = np.array([[1, 0, 0], [0, np.cos(0.2), -np.sin(0.2)], [0, np.sin(0.2), np.cos(0.2)]])
    return Geometry(spacing, origin, rx @ rz @ np.diag([1.0, -1.0, 1.0]))
