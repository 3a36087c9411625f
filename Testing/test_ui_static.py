"""Every widget the module code names exists in its .ui file; every bound parameter exists."""
import re
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ui_names(ui):
    return {w.get("name") for w in ET.parse(ui).iter("widget")}


def test_srma_widgets_exist():
    code = (ROOT / "SRMASegmenter" / "SRMASegmenter.py").read_text()
    used = set(re.findall(r"self\.ui\.(\w+)", code))
    names = _ui_names(ROOT / "SRMASegmenter" / "Resources" / "UI" / "SRMASegmenter.ui")
    assert used, "no widgets referenced?"
    missing = used - names
    assert not missing, f"widgets used in code but absent from the .ui: {sorted(missing)}"


def test_srma_parameter_bindings():
    code = (ROOT / "SRMASegmenter" / "SRMASegmenter.py").read_text()
    block = code.split("class SRMASegmenterParameterNode:")[1].split("\nclass ")[0]
    fields = set(re.findall(r"^    (\w+):", block, re.M))
    tree = ET.parse(ROOT / "SRMASegmenter" / "Resources" / "UI" / "SRMASegmenter.ui")
    bound = {p.find("string").text for p in tree.iter("property") if p.get("name") == "SlicerParameterName"}
    assert bound == fields, (bound ^ fields)


def _check_module(name, param_class):
    code = (ROOT / name / f"{name}.py").read_text()
    ui = ROOT / name / "Resources" / "UI" / f"{name}.ui"
    used = set(re.findall(r"self\.ui\.(\w+)", code))
    assert used, "no widgets referenced?"
    missing = used - _ui_names(ui)
    assert not missing, f"widgets used in code but absent from the .ui: {sorted(missing)}"
    block = code.split(f"class {param_class}:")[1].split("\nclass ")[0]
    fields = set(re.findall(r"^    (\w+):", block, re.M))
    bound = {p.find("string").text for p in ET.parse(ui).iter("property") if p.get("name") == "SlicerParameterName"}
    assert bound == fields, (bound ^ fields)


def test_ultrascan_widgets_and_parameter_bindings():
    _check_module("UltraScanClassifier", "UltraScanClassifierParameterNode")


def test_both_modules_registered_in_cmake():
    top = (ROOT / "CMakeLists.txt").read_text()
    for m in ("SlicerAICommon", "SRMASegmenter", "UltraScanClassifier"):
        assert f"add_subdirectory({m})" in top
    mod = (ROOT / "UltraScanClassifier" / "CMakeLists.txt").read_text()
    for f in re.findall(r"^  (Resources/\S+|\$\{MODULE_NAME\}\S+)$", mod, re.M):
        f = f.replace("${MODULE_NAME}", "UltraScanClassifier")
        assert (ROOT / "UltraScanClassifier" / f).is_file(), f"CMake lists a missing file: {f}"
