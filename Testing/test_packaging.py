"""Issue 14 item 6: the wheel works when installed. Both distributions (the project and `ssm-kernels`)
are built as wheels and installed, not editable, into a fresh virtual environment; both console scripts
then run on the bundled samples with the shipped weights, from the installed packages and resources.

The third-party dependencies (torch, MONAI, SimpleITK, slicer-core...) are not downloaded again: the new
environment sees the test interpreter's site-packages through a .pth line, which adds the folder to
sys.path after the environment's own without running that folder's .pth files, so the checkout's editable
installs stay invisible (asserted below)."""
import json
import os
import site
import subprocess
import sys
import sysconfig

import pytest

from conftest import ROOT

DIST = "slicer-liver-ultrasound-ai"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    dist, venv = tmp / "dist", tmp / "venv"
    run = dict(capture_output=True, text=True, timeout=1800)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        str(dist), str(ROOT), str(ROOT / "kernels")], **run)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([sys.executable, "-m", "venv", str(venv)], **run)
    assert r.returncode == 0, r.stderr[-2000:]
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             **run).stdout.strip()
    outer = [p for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]] if os.path.isdir(p)]
    with open(os.path.join(purelib, "zz_outer_site.pth"), "w") as fh:
        fh.write("\n".join(dict.fromkeys(outer)) + "\n")
    wheels = sorted(str(p) for p in dist.glob("*.whl"))
    assert len(wheels) == 2, wheels
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", *wheels], **run)
    assert r.returncode == 0, r.stderr[-2000:]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return venv, env, tmp


def test_packages_resources_and_dependencies_come_from_the_wheel(installed):
    venv, env, tmp = installed
    code = ("import json, importlib.metadata as m, SRMASegmenterLib, UltraScanClassifierLib, ssm_kernels, "
            "slicer_ai_common\n"
            "from SRMASegmenterLib.inference import MODELS_DIR as a\n"
            "from UltraScanClassifierLib.catalog import MODELS_DIR as b\n"
            "print(json.dumps(dict(files=[SRMASegmenterLib.__file__, UltraScanClassifierLib.__file__, "
            "ssm_kernels.__file__, slicer_ai_common.__file__], models=[str(a), str(b)], "
            f"requires=m.requires('{DIST}'))))")
    r = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, cwd=tmp, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout)
    assert all(f.startswith(str(venv)) for f in got["files"]), got["files"]          # not the checkout
    assert all(m.startswith(str(venv)) and os.path.isdir(m) for m in got["models"]), got["models"]
    assert any(q.split(";")[0].strip().startswith("ssm-kernels") for q in got["requires"]), got["requires"]


def test_both_clis_run_on_the_samples_with_the_shipped_weights(installed):
    venv, env, tmp = installed
    sample = ROOT / "SRMASegmenter" / "Resources" / "SampleData" / "chaos_case20_t2.nii.gz"
    r = subprocess.run([str(venv / "bin" / "srma-segment"), str(sample), "-o", str(tmp / "out" / "liver.nii.gz"),
                        "--device", "cpu"], capture_output=True, text=True, cwd=tmp, env=env, timeout=1800)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads((tmp / "out" / "liver.json").read_text())
    assert rep["weights"].startswith("srma_chaos_t2_5class@") and 1000 < rep["liver_volume_ml"] < 2500
    r = subprocess.run([str(venv / "bin" / "ultrascan-classify"), str(ROOT / "UltraScanClassifier" / "Resources" /
                        "SampleData"), "--json", "--device", "cpu"], capture_output=True, text=True, cwd=tmp, env=env,
                       timeout=1800)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(r.stdout)
    assert len(rows) == 3 and all(x["weights"].startswith("efficientnet_lite0_busi@") for x in rows)


def test_one_list_of_runtime_requirements():
    """The wheel's dependencies and the list the in-Slicer check installs from are the same requirements
    (numpy comes with torch; ssm-kernels ships inside the extension), and none is training-only."""
    import tomllib

    from slicer_ai_common.dependencies import REQUIRED
    deps = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    assert deps - {"ssm-kernels", "numpy<2.4"} == set(REQUIRED.values())
    assert not {d for d in deps if d.split(">")[0].split("=")[0] in {"pyyaml", "matplotlib", "tqdm"}}


def test_resource_dir_missing_everywhere_is_the_folder_beside_not_an_import_error(tmp_path, monkeypatch):
    """An editable install whose Resources/Models folder is gone made importlib.resources raise
    NotADirectoryError ("MultiplexedPath only supports directories") while the module was being imported,
    so SRMASegmenterLib could not even be imported to say "no weights". The lookup now falls back to the
    folder beside the Lib package, and the loaders report the missing weights with that path."""
    import importlib.resources

    from slicer_ai_common.resources import resource_dir

    def broken(package):
        raise NotADirectoryError("MultiplexedPath only supports directories")
    monkeypatch.setattr(importlib.resources, "files", broken)
    lib = tmp_path / "ModuleLib" / "inference.py"
    lib.parent.mkdir()
    lib.write_text("")
    assert resource_dir(str(lib), "SomeResources", "Models") == (tmp_path / "Resources" / "Models").resolve()
    (tmp_path / "Resources" / "Models").mkdir(parents=True)           # present beside: found first
    assert resource_dir(str(lib), "SomeResources", "Models").is_dir()
