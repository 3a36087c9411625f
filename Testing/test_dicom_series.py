"""Issue 15 item 1: reading DICOM studies. A study folder (series in nested folders: a localizer, a T1 and a
T2 series, written with pydicom with the tags real MR series have) is listed, the series to segment is picked
by the rule (or by --series), and what the series reader would get wrong is refused with the reason:
multi-frame (enhanced) MR and a series that mixes slice orientations. An RLE-compressed series is read
voxel for voxel."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import new_dicom, right_handed_oblique, write_mr_series

pydicom = pytest.importorskip("pydicom")


def _vol(seed, shape=(12, 40, 48)):
    return (np.random.default_rng(seed).random(shape) * 900).astype(np.int16)


@pytest.fixture()
def study(tmp_path):
    """study/loc (3 slices, LOCALIZER), study/a/t1 (T1 in-phase), study/a/t2 (T2 SPIR): one StudyInstanceUID."""
    from pydicom.uid import generate_uid
    uid = generate_uid()
    g = right_handed_oblique()
    root = tmp_path / "study"
    vols = {"t1": _vol(1), "t2": _vol(2)}
    uids = {
        "loc": write_mr_series(root / "loc", _vol(0, (3, 40, 48)), g, "Localizer", study=uid, number=1,
                               image_type=("ORIGINAL", "PRIMARY", "LOCALIZER", "NONE")),
        "t1": write_mr_series(root / "a" / "t1", vols["t1"], g, "T1 in-phase", study=uid, number=3),
        "t2": write_mr_series(root / "a" / "t2", vols["t2"], g, "T2 SPIR", study=uid, number=4),
    }
    return root, uids, vols, g


def test_series_are_listed_and_the_t2_volume_is_picked(study):
    from SRMASegmenterLib.volumes import choose_series, find_dicom_series, read_volume
    root, uids, vols, g = study
    found = find_dicom_series(root)
    assert [s.description for s in found] == ["Localizer", "T1 in-phase", "T2 SPIR"]      # by series number
    assert [s.is_localizer for s in found] == [True, False, False]
    assert [len(s.files) for s in found] == [3, 12, 12] and found[2].uid == uids["t2"] and found[2].modality == "MR"
    assert choose_series(found).uid == uids["t2"]
    arr, geom = read_volume(root)
    assert np.array_equal(arr, vols["t2"]) and geom.equals(g, tol=1e-4)


@pytest.mark.parametrize("choice,want", [("t1", "t1"), ("T1 IN", "t1"), ("3", "t1"), ("4", "t2"), ("uid-t1", "t1")])
def test_series_choice_by_pattern_number_or_uid(study, choice, want):
    from SRMASegmenterLib.volumes import read_volume
    root, uids, vols, _ = study
    arr, _ = read_volume(root, uids["t1"] if choice == "uid-t1" else choice)
    assert np.array_equal(arr, vols[want])


def test_ambiguous_or_unmatched_choices_are_refused_with_the_list(study, tmp_path):
    from SRMASegmenterLib.volumes import VolumeError, choose_series, find_dicom_series
    root, uids, vols, g = study
    found = find_dicom_series(root)
    with pytest.raises(VolumeError, match=r"matches 2 of the 3 series.*T1 in-phase.*T2 SPIR"):
        choose_series(found, "in-phase|spir")
    with pytest.raises(VolumeError, match="matches 0"):
        choose_series(found, "FLAIR")
    # two volumes, neither says T2: the user must pick
    from pydicom.uid import generate_uid
    uid = generate_uid()
    write_mr_series(tmp_path / "s2" / "x", _vol(3), g, "DWI b50", study=uid, number=7)
    write_mr_series(tmp_path / "s2" / "y", _vol(4), g, "T1 opposed-phase", study=uid, number=8)
    with pytest.raises(VolumeError, match=r"2 DICOM series.*no single T2 volume.*DWI b50.*--series"):
        choose_series(find_dicom_series(tmp_path / "s2"))


def test_enhanced_multiframe_and_mixed_orientations_are_refused(tmp_path):
    from SRMASegmenterLib.volumes import ENHANCED_MR, VolumeError, read_volume
    g = right_handed_oblique()
    write_mr_series(tmp_path / "mixed", _vol(5), g, "T2 SPIR", tilt_slice=6)
    with pytest.raises(VolumeError, match=r"mixes slice orientations \(1 of 12"):
        read_volume(tmp_path / "mixed")
    (tmp_path / "enh").mkdir()
    ds = new_dicom(ENHANCED_MR)
    ds.Modality, ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = "MR", "T2 enhanced", 9, 1
    ds.PatientName, ds.PatientID = "Test^Liver", "T0001"
    ds.NumberOfFrames, ds.Rows, ds.Columns = 4, 16, 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = np.zeros((4, 16, 16), "<i2").tobytes()
    ds.save_as(str(tmp_path / "enh" / "enhanced.dcm"), enforce_file_format=True)
    with pytest.raises(VolumeError, match=r"multi-frame \(enhanced\) MR.*classic MR images"):
        read_volume(tmp_path / "enh")


def test_rle_compressed_series_is_read_voxel_for_voxel(tmp_path):
    from pydicom.uid import RLELossless
    from SRMASegmenterLib.volumes import read_volume
    g = right_handed_oblique()
    v = _vol(6)
    write_mr_series(tmp_path / "rle", v, g, "T2 SPIR", transfer_syntax=RLELossless)
    assert pydicom.dcmread(next((tmp_path / "rle").iterdir())).file_meta.TransferSyntaxUID == RLELossless
    arr, geom = read_volume(tmp_path / "rle")
    assert np.array_equal(arr, v) and geom.equals(g, tol=1e-4)


def test_cli_lists_series_and_segments_the_chosen_one(study, tmp_path):
    """srma-segment STUDY --list-series; STUDY -o x picks T2 and says so (stderr, JSON 'series');
    --series T1 segments the T1 series; an ambiguous --series is exit 2 with the list, before the model loads."""
    pytest.importorskip("trame_slicer.core")
    root, uids, vols, _ = study

    def cli(*a):
        return subprocess.run([sys.executable, "-m", "SRMASegmenterLogic.cli", *map(str, a)], capture_output=True,
                              text=True, timeout=900)
    r = cli(root, "--list-series")
    assert r.returncode == 0 and len(r.stdout.strip().splitlines()) == 3 and "(localizer)" in r.stdout, r.stderr
    r = cli(root, "--list-series", "--json")
    rows = json.loads(r.stdout)
    assert [x["description"] for x in rows] == ["Localizer", "T1 in-phase", "T2 SPIR"] and rows[0]["localizer"]
    r = cli(root, "-o", tmp_path / "t2_liver.nii.gz", "--device", "cpu")
    assert r.returncode == 0, r.stderr[-800:]
    assert "3 series in study; segmenting #4 'T2 SPIR'" in r.stderr
    rep = json.loads((tmp_path / "t2_liver.json").read_text())
    assert rep["series"]["uid"] == uids["t2"] and rep["series"]["images"] == 12
    r = cli(root, "-o", tmp_path / "t1_liver.nii.gz", "--series", "T1", "--device", "cpu")
    assert r.returncode == 0 and json.loads((tmp_path / "t1_liver.json").read_text())["series"]["uid"] == uids["t1"]
    r = cli(root, "-o", tmp_path / "x.nii.gz", "--series", "i", "--weights", tmp_path / "no-weights")
    assert r.returncode == 2 and "matches 3 of the 3 series" in r.stderr and not (tmp_path / "x.nii.gz").exists()
