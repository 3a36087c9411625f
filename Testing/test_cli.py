"""srma-segment: outputs keep the input geometry; errors are specific and do not stop a batch."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import CHAOS, need, oblique_geometry
from SRMASegmenterLib.volumes import read_volume, write_volume

pytest.importorskip("trame_slicer.core", reason="slicer-core (trame-slicer[standalone]) is not installed")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "SRMASegmenterLogic.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=900)


@pytest.fixture(scope="module")
def small_nifti(tmp_path_factory):
    arr, _ = read_volume(need(CHAOS / "case_20_t2.nii.gz"))
    p = tmp_path_factory.mktemp("in") / "small.nii.gz"
    write_volume(arr[:, ::4, ::4].copy(), oblique_geometry(), p)
    return p


@pytest.mark.parametrize("ext", ["nii.gz", "nrrd", "seg.nrrd"])
def test_outputs_keep_geometry(small_nifti, tiny_model_folder, tmp_path, ext):
    out = tmp_path / f"liver.{ext}"
    r = run_cli(small_nifti, "-o", out, "--weights", tiny_model_folder, "--device", "cpu", "--roi", "64", "64", "16",
                "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "liver.json").read_text())
    assert report["weights"].startswith("tiny@")
    printed = json.loads(r.stdout)                          # --json: the same report on stdout, nothing else
    assert len(printed) == 1 and printed[0]["liver_volume_ml"] == report["liver_volume_ml"]
    assert printed[0]["report"] == str(tmp_path / "liver.json")
    _, g_in = read_volume(small_nifti)
    if ext == "seg.nrrd":
        import SimpleITK as sitk
        img = sitk.ReadImage(str(out))
        assert np.allclose(img.GetSpacing()[:3], g_in.spacing, atol=1e-5)
        assert np.allclose(np.array(img.GetDirection()).reshape(img.GetDimension(), -1)[:3, :3], g_in.direction,
                           atol=1e-5)
        assert "Liver" in img.GetMetaData("Segment0_Name")
    else:
        mask, g_out = read_volume(out)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        assert g_out.equals(g_in, tol=1e-5)
        assert report["liver_volume_ml"] == pytest.approx(mask.sum() * np.prod(g_in.spacing) / 1000, rel=1e-5)


def test_every_chaos_volume_keeps_geometry(tiny_model_folder, tmp_path):
    """Folder mode over all of ../shared/data/chaos-mr-t2 (images only): one output per input, same geometry.
    The tiny weights run on a 5 mm model grid (manifest: train_spacing_ijk, one 64 x 64 x 48 window), so
    every volume also goes through the resampling to the model grid and back."""
    import json
    import shutil
    model = tmp_path / "model"
    shutil.copytree(tiny_model_folder, model)
    man = json.loads((model / "model.json").read_text())
    man.update(train_spacing_ijk=[5.0, 5.0, 7.7], inference={"roi_size": [64, 64, 48]})
    (model / "model.json").write_text(json.dumps(man))
    src = tmp_path / "in"
    src.mkdir()
    cases = sorted(need(CHAOS).glob("case_*_t2.nii.gz"))
    for c in cases:
        (src / c.name).symlink_to(c)
    out = tmp_path / "out"
    r = run_cli(src, "-o", out, "--weights", model, "--device", "cpu")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("liver") >= len(cases)
    for c in cases:
        arr, g_in = read_volume(c)
        m, g_out = read_volume(out / c.name.replace(".nii.gz", "_liver.nii.gz"))
        assert m.shape == arr.shape
        assert g_out.equals(g_in, tol=1e-4), c.name


def test_errors(tiny_model_folder, tmp_path, small_nifti):
    r = run_cli(tmp_path / "missing.nii.gz", "-o", tmp_path / "o.nii.gz")
    assert r.returncode == 2 and "input not found" in r.stderr
    r = run_cli(small_nifti, "-o", tmp_path / "o.png")
    assert r.returncode == 2 and "output must end in" in r.stderr
    r = run_cli(small_nifti, "-o", tmp_path / "o.nii.gz", "--weights", tmp_path / "none.safetensors")
    assert r.returncode == 3 and "not found" in r.stderr
    # a batch with a truncated file and a 2D image: both reported, the good volume still done
    d = tmp_path / "batch"
    d.mkdir()
    (d / "a_good.nii.gz").write_bytes(small_nifti.read_bytes())
    (d / "b_trunc.nii.gz").write_bytes(small_nifti.read_bytes()[:300])
    write_volume(np.random.rand(1, 32, 32).astype(np.float32), oblique_geometry(), d / "c_flat.nii.gz")
    r = run_cli(d, "-o", tmp_path / "bout", "--weights", tiny_model_folder, "--device", "cpu", "--roi", "64", "64", "16")
    assert r.returncode == 1
    assert "b_trunc.nii.gz: FAILED: could not read" in r.stderr
    assert "c_flat.nii.gz: FAILED" in r.stderr and "2D image" in r.stderr
    assert (tmp_path / "bout" / "a_good_liver.nii.gz").exists()
    assert "1 of 3 segmented" in r.stdout
