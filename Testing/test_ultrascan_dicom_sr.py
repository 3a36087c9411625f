"""Issue 15 item 3, ultrasound: the classification of a DICOM ultrasound image as a DICOM SR. A US image
is written with pydicom from a bundled BUSI sample; `ultrascan-classify --dicom-sr` writes a report that
references it, names the finding in SNOMED CT and holds each class's probability, equal to the JSON output,
and that dciodvfy accepts; a PNG input gets no report."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, new_dicom

hd = pytest.importorskip("highdicom", reason="DICOM SR needs highdicom (pip install highdicom)")
pydicom = pytest.importorskip("pydicom")

SAMPLES = ROOT / "UltraScanClassifier" / "Resources" / "SampleData"
US_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"


def write_us_image(path: Path, png: Path):
    """A single-frame US Image Storage file with the tags a real one has (8-bit grayscale)."""
    from PIL import Image
    img = np.asarray(Image.open(png).convert("L"))
    ds = new_dicom(US_STORAGE)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Breast", "B0001", "19700101", "F"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20261124", "120000", "1", "A2"
    ds.ReferringPhysicianName, ds.Modality, ds.Manufacturer = "", "US", "Test"
    ds.SeriesNumber, ds.InstanceNumber, ds.Laterality, ds.PatientOrientation = 2, 1, "R", ""
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Rows, ds.Columns = img.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = img.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return ds


def _items(seq):
    for it in seq:
        yield it
        if "ContentSequence" in it:
            yield from _items(it.ContentSequence)


def test_cli_writes_a_report_for_dicom_inputs_only(tmp_path):
    from UltraScanClassifierLib.dicom_sr import FINDINGS
    src = write_us_image(tmp_path / "in" / "lesion.dcm", SAMPLES / "busi_malignant_12.png")
    shutil.copy(SAMPLES / "busi_benign_3.png", tmp_path / "in" / "other.png")
    r = subprocess.run([sys.executable, "-m", "UltraScanClassifierLib.cli", str(tmp_path / "in"), "--json",
                        "--device", "cpu", "--dicom-sr", str(tmp_path / "sr")], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-800:]
    rows = {Path(x["file"]).name: x for x in json.loads(r.stdout)}
    assert "dicom_sr" not in rows["other.png"] and rows["lesion.dcm"]["dicom_sr"] == str(tmp_path / "sr" / "lesion.sr.dcm")
    assert sorted(p.name for p in (tmp_path / "sr").iterdir()) == ["lesion.sr.dcm"]
    sr = pydicom.dcmread(tmp_path / "sr" / "lesion.sr.dcm")
    assert sr.Modality == "SR" and sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"      # Comprehensive SR
    assert sr.StudyInstanceUID == src.StudyInstanceUID and sr.PatientID == "B0001"
    items = list(_items(sr.ContentSequence))
    finding = [i for i in items if i.ValueType == "CODE" and i.ConceptNameCodeSequence[0].CodeMeaning == "Finding"]
    label = rows["lesion.dcm"]["label"]
    assert len(finding) == 1 and finding[0].ConceptCodeSequence[0].CodeValue == FINDINGS[label][0]
    probs = {i.ConceptNameCodeSequence[0].CodeMeaning.rsplit(" ", 1)[-1]: float(i.MeasuredValueSequence[0].NumericValue)
             for i in items if i.ValueType == "NUM"}
    assert probs == pytest.approx(rows["lesion.dcm"]["probabilities"], abs=1e-5)
    refs = {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in items if i.ValueType == "IMAGE"}
    assert refs == {src.SOPInstanceUID}
    exe = shutil.which("dciodvfy") or str(Path(sys.executable).parent / "dciodvfy")
    if Path(exe).exists():
        for f in (tmp_path / "sr" / "lesion.sr.dcm", tmp_path / "in" / "lesion.dcm"):
            out = subprocess.run([exe, str(f)], capture_output=True, text=True, timeout=120)
            assert not [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")], f.name


def test_an_unwritable_report_folder_costs_nothing(tmp_path):
    (tmp_path / "file").write_text("x")
    r = subprocess.run([sys.executable, "-m", "UltraScanClassifierLib.cli", str(SAMPLES / "busi_normal_5.png"),
                        "--device", "cpu", "--dicom-sr", str(tmp_path / "file" / "sr")], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 2 and "cannot write DICOM reports" in r.stderr and "Traceback" not in r.stderr


def test_a_cine_loop_needs_a_frame_and_its_report_references_it(tmp_path):
    """A multi-frame US DICOM (cine) is refused without --frame; with --frame 2 the second frame is
    classified (as the same frame given alone would be) and the report references frame 2."""
    from PIL import Image
    from UltraScanClassifierLib.images import ImageError, read_image
    pngs = [SAMPLES / "busi_benign_3.png", SAMPLES / "busi_malignant_12.png", SAMPLES / "busi_normal_5.png"]
    frames = [np.asarray(Image.open(p).convert("L").resize((200, 160))) for p in pngs]
    ds = write_us_image(tmp_path / "cine" / "cine.dcm", pngs[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"   # US Multi-frame
    ds.NumberOfFrames, ds.FrameIncrementPointer = 3, (0x0018, 0x1063)
    ds.FrameTime, (ds.Rows, ds.Columns) = 33.3, frames[0].shape
    ds.PixelData = np.stack(frames).tobytes()
    ds.save_as(str(tmp_path / "cine" / "cine.dcm"), enforce_file_format=True)
    with pytest.raises(ImageError, match=r"3 frames \(a cine loop\); choose one frame \(--frame 1..3\)"):
        read_image(tmp_path / "cine" / "cine.dcm")
    arr, _ = read_image(tmp_path / "cine" / "cine.dcm", 2)
    assert np.array_equal(arr, frames[1])
    Image.fromarray(frames[1]).save(tmp_path / "frame2.png")
    cmd = [sys.executable, "-m", "UltraScanClassifierLib.cli", "--json", "--device", "cpu"]
    r = subprocess.run(cmd + [str(tmp_path / "cine" / "cine.dcm"), str(tmp_path / "frame2.png"), "--frame", "2",
                              "--dicom-sr", str(tmp_path / "sr")], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-800:]
    cine, single = json.loads(r.stdout)
    assert cine["probabilities"] == pytest.approx(single["probabilities"], abs=1e-5)
    assert "frame 2 of a multi-frame file" in cine["notes"] and not single["notes"]
    sr = pydicom.dcmread(tmp_path / "sr" / "cine.sr.dcm")
    refs = [i.ReferencedSOPSequence[0] for i in _items(sr.ContentSequence) if i.ValueType == "IMAGE"]
    assert refs and all(int(ref.ReferencedFrameNumber) == 2 for ref in refs)
    r = subprocess.run(cmd + [str(tmp_path / "cine" / "cine.dcm")], capture_output=True, text=True, timeout=900)
    assert r.returncode == 2 and "choose one frame" in r.stderr
