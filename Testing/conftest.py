"""Shared fixtures. Tests that need ../shared (real data, fixtures) skip with a clear message without it."""
import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:     # the development package training/ (not installed: it ships nowhere)
    sys.path.append(str(ROOT))
SHARED = Path(os.environ.get("SLICER_AI_SHARED", ROOT.parent / "shared"))
CHAOS = SHARED / "data" / "chaos-mr-t2"
SRMA_FIX = SHARED / "fixtures" / "srma-official"
SAMPLE = ROOT / "SRMASegmenter" / "Resources" / "SampleData"


def lite0_training_keys(sd):
    """EfficientNet-Lite0 state dict, runtime keys (net._blocks.<stage>.<i>.) -> the training network's flat
    ones (net._blocks.<i>.): the inverse of efficientnet_lite.from_training_keys."""
    out = {}
    for k, v in sd.items():
        p = k.split(".")
        out[".".join(p[:2] + p[3:]) if p[1] == "_blocks" else k] = v
    return out


def trained_looking(net, head_std: float = 0.0, calibrate=None):
    """A freshly initialised classifier given the BatchNorm statistics (and, with head_std, Linear weights)
    of a trained one, so that its logits depend on the image and differ between seeds. calibrate: a batch
    of inputs whose activations set the BatchNorm statistics instead of random ones (needed where a fresh
    network's activations are too small for random statistics to leave its logits input-dependent, as for
    efficientnet-lite-pytorch's Lite0)."""
    import torch
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            if calibrate is None:
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
            else:
                m.reset_running_stats()
                m.momentum = None                 # a plain average over the calibration batch
        if calibrate is not None:
            was_training = net.training
            net.train()(calibrate)
            net.train(was_training)
        if head_std:
            for m in net.modules():
                if isinstance(m, torch.nn.Linear):
                    m.weight.normal_(0, head_std)
    return net


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


MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def _ds(v) -> str:
    """A decimal string of at most 16 characters (the DS limit; dciodvfy checks it)."""
    from pydicom.valuerep import format_number_as_ds
    return format_number_as_ds(float(v))


def new_dicom(sop_class: str, study: str | None = None, series: str | None = None):
    """A pydicom dataset of one SOP class with its file meta (explicit VR little endian), a new SOP instance
    UID, and the study / series UIDs given (new ones otherwise): what every test DICOM writer starts from."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study or generate_uid(), series or generate_uid()
    return ds


def write_mr_series(folder: Path, arr_kji: np.ndarray, geom, series_description="T2 SPIR", *, study=None,
                    number=5, image_type=("ORIGINAL", "PRIMARY", "M", "NONE"), transfer_syntax=None, tilt_slice=None):
    """One MR Image Storage file per slice, with the tags a real MR series has, shuffled file names (the
    reader must sort by position). `study`: a StudyInstanceUID to share with other series; `transfer_syntax`:
    e.g. pydicom's RLELossless to compress; `tilt_slice`: a slice index given another orientation (a
    series that mixes orientations). Returns the SeriesInstanceUID."""
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame_of_ref = study or generate_uid(), generate_uid(), generate_uid()
    d = np.asarray(geom.direction, float)
    sx, sy, sz = (float(v) for v in geom.spacing)
    order = np.random.default_rng(0).permutation(arr_kji.shape[0])
    for k in range(arr_kji.shape[0]):
        ds = new_dicom(MR_STORAGE, study, series)
        ds.FrameOfReferenceUID = frame_of_ref
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Liver", "T0001", "19700101", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20261124", "120000", "1", "A1"
        ds.ReferringPhysicianName, ds.Modality, ds.Manufacturer = "", "MR", "Test"
        ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = number, k + 1, series_description
        ds.ImageType = list(image_type)
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "2D"
        ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength, ds.MagneticFieldStrength = 1500.0, 80.0, 1, 1.5
        ds.PositionReferenceIndicator = ""
        dk = d if k != tilt_slice else d @ np.array([[1, 0, 0], [0, np.cos(0.3), -np.sin(0.3)], [0, np.sin(0.3), np.cos(0.3)]])
        ds.ImageOrientationPatient = [_ds(v) for v in list(dk[:, 0]) + list(dk[:, 1])]
        ds.ImagePositionPatient = [_ds(v) for v in np.asarray(geom.origin) + k * sz * d[:, 2]]
        ds.PatientPosition, ds.BodyPartExamined = "HFS", "ABDOMEN"
        ds.PixelSpacing = [sy, sx]                 # row spacing (between rows, j), column spacing (i)
        ds.SliceThickness = ds.SpacingBetweenSlices = sz
        ds.Rows, ds.Columns = arr_kji.shape[1], arr_kji.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.ascontiguousarray(arr_kji[k].astype("<i2")).tobytes()
        if transfer_syntax is not None:
            ds.compress(transfer_syntax)
        ds.save_as(str(folder / f"IM{order[k]:04d}"), enforce_file_format=True)
    return series


def right_handed_oblique(spacing=(1.3, 0.9, 5.0)):
    """DICOM stacks slices along row x column (a right-handed frame): an oblique geometry of that kind."""
    from SRMASegmenterLib.volumes import Geometry
    g = oblique_geometry(spacing=spacing)
    d = np.asarray(g.direction)
    return Geometry(g.spacing, g.origin, np.column_stack([d[:, 0], d[:, 1], np.cross(d[:, 0], d[:, 1])]))
