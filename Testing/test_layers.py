"""Imports go one way (modules -> SlicerAICommon -> kernels), read from the source: the shared layer and the
kernels know no model, a Lib never imports its Logic, and the plain-Python packages import neither slicer
nor Qt (issue 14, item 2)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("SRMASegmenter", "UltraScanClassifier")


def _imports(path: Path):
    """Top-level module names imported anywhere in the file (function-level imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def _files(*parts):
    base = ROOT.joinpath(*parts)
    files = sorted(base.rglob("*.py"))
    assert files, f"no Python files under {base}"
    return files


def test_shared_layer_and_kernels_know_no_model():
    bad = [(str(f.relative_to(ROOT)), m) for d in (("SlicerAICommon",), ("kernels", "ssm_kernels"))
           for f in _files(*d) for m in _imports(f) if m.startswith(MODELS)]
    assert not bad, bad


def test_libs_do_not_import_their_logic():
    bad = [(str(f.relative_to(ROOT)), m) for mod in MODELS for f in _files(mod, f"{mod}Lib")
           for m in _imports(f) if m.endswith("Logic") or m == mod]
    assert not bad, bad


def test_plain_packages_import_neither_slicer_nor_qt():
    plain = [("SlicerAICommon", "slicer_ai_common"), ("kernels", "ssm_kernels")] + [(m, f"{m}Lib") for m in MODELS]
    gui = {"slicer", "qt", "ctk", "vtk", "MRMLCorePython", "trame_slicer", "slicer_ai_mrml", "slicer_ai_app"}
    bad = [(str(f.relative_to(ROOT)), m) for d in plain for f in _files(*d) for m in _imports(f) if m in gui]
    assert not bad, bad


def test_runtime_never_imports_the_training_code():
    """training/ is development code beside the runtime: nothing that a Slicer user installs imports it, and
    the packages that ship (CMake lists, wheel) hold no training, augmentation, data-split, export or
    baseline module any more."""
    runtime = [(m,) for m in MODELS] + [("SlicerAICommon",), ("kernels", "ssm_kernels")]
    bad = [(str(f.relative_to(ROOT)), m) for d in runtime for f in _files(*d) for m in _imports(f) if m == "training"]
    assert not bad, bad
    moved = {"train.py", "augment.py", "augment3d.py", "data.py", "export.py", "evaluate.py", "baselines.py"}
    left = [str(f.relative_to(ROOT)) for mod in MODELS for f in _files(mod) if f.name in moved]
    assert not left, left
    assert {f.name for f in _files("training")} >= moved


def test_the_check_can_fail():
    """The reader sees function-level imports too (as the old nodes.py's import of SRMASegmenterLib was)."""
    src = ROOT / "Testing" / "_layers_probe.py"
    src.write_text("def f():\n    from SRMASegmenterLib.volumes import Geometry\n")
    try:
        assert "SRMASegmenterLib" in _imports(src)
    finally:
        src.unlink()
