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


def _cmake_scripts():
    """Every Python file the Slicer build installs: {path relative to the repository root}."""
    import ast  # noqa: F401 - used by the import closure below
    out = set()
    for mod in ("SRMASegmenter", "UltraScanClassifier"):
        txt = (ROOT / mod / "CMakeLists.txt").read_text()
        block = txt.split("set(MODULE_PYTHON_SCRIPTS")[1].split(")")[0]
        out |= {f"{mod}/" + f.replace("${MODULE_NAME}", mod) for f in block.split()}
    txt = (ROOT / "SlicerAICommon" / "CMakeLists.txt").read_text()
    shared = txt.split("set(_shared_scripts")[1].split(")")[0].split()
    kern = txt.split("set(_kernel_scripts")[1].split(")")[0].split()
    return out | {f"SlicerAICommon/{f}" for f in shared} | {f"kernels/{f}" for f in kern}


def test_every_module_a_shipped_file_imports_is_shipped():
    """The Slicer install lists its Python files by hand (CMake): a file that a shipped file imports, at the
    top or inside a function, must be in those lists, or the module fails in Slicer only."""
    import ast
    roots = {"SRMASegmenterLib": "SRMASegmenter", "SRMASegmenterLogic": "SRMASegmenter",
             "UltraScanClassifierLib": "UltraScanClassifier", "UltraScanClassifierLogic": "UltraScanClassifier",
             "slicer_ai_common": "SlicerAICommon", "slicer_ai_mrml": "SlicerAICommon",
             "slicer_ai_app": "SlicerAICommon", "ssm_kernels": "kernels"}

    def target(mod):
        top = mod.split(".")[0]
        if top not in roots:
            return None
        base = ROOT / roots[top] / Path(*mod.split("."))
        for cand in (base.with_suffix(".py"), base / "__init__.py"):
            if cand.is_file():
                return str(cand.relative_to(ROOT))
        return None

    shipped = _cmake_scripts()
    missing = {}
    for f in sorted(shipped):
        tree = ast.parse((ROOT / f).read_text())
        pkg = ".".join(Path(f).parent.parts[1:])
        for node in ast.walk(tree):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(p for p in parts + ([node.module] if node.module else []) if p)
                mods = [base] + [f"{base}.{a.name}" for a in node.names]
            for m in mods:
                t = target(m)
                if t and t not in shipped:
                    missing.setdefault(t, f)
    assert not missing, "imported but not in any CMakeLists.txt (file: first importer): " + str(missing)


def test_the_shared_widget_mixin_finds_its_widgets_in_both_modules():
    """slicer_ai_app.AIModuleWidgetMixin drives cancelButton, progressBar and statusLabel of whichever module
    uses it: each module that uses it must have them in its .ui, and must call its two set-up hooks."""
    code = (ROOT / "SlicerAICommon" / "slicer_ai_app" / "__init__.py").read_text()
    used = set(re.findall(r"self\.ui\.(\w+)", code))
    assert used >= {"cancelButton", "progressBar", "statusLabel"}
    for name in ("SRMASegmenter", "UltraScanClassifier"):
        mod = (ROOT / name / f"{name}.py").read_text()
        assert f"class {name}Widget(AIModuleWidgetMixin, ScriptedLoadableModuleWidget" in mod
        assert "self._init_widget_state()" in mod and f'self._setup_common("UI/{name}.ui"' in mod
        missing = used - _ui_names(ROOT / name / "Resources" / "UI" / f"{name}.ui")
        assert not missing, f"{name}.ui lacks {sorted(missing)}"


def test_both_modules_run_through_the_shared_run_and_logic_holder():
    """Each module's run handlers go through AIModuleWidgetMixin._run (dependency check, progress, Cancel,
    error display) with a method of the widget that exists, the widget names itself for the install
    prompt, and its module logic is the shared holder given its own parameter node and MRML logic."""
    import ast
    for name in ("SRMASegmenter", "UltraScanClassifier"):
        tree = ast.parse((ROOT / name / f"{name}.py").read_text())
        classes = {c.name: c for c in tree.body if isinstance(c, ast.ClassDef)}
        widget, holder = classes[f"{name}Widget"], classes[f"{name}ModuleLogic"]
        methods = {f.name for f in widget.body if isinstance(f, ast.FunctionDef)}
        assert any(isinstance(a, ast.Assign) and a.targets[0].id == "moduleTitle" for a in widget.body)
        runs = [c for c in ast.walk(widget) if isinstance(c, ast.Call) and getattr(c.func, "attr", "") == "_run"]
        assert runs, f"{name}: no run goes through _run"
        for c in runs:
            assert isinstance(c.args[0], ast.Attribute) and c.args[0].attr in methods, ast.dump(c.args[0])
        handlers = {f.name for f in widget.body if isinstance(f, ast.FunctionDef) and f.name.startswith("on")
                    and any(c in ast.dump(f) for c in ("'_run'",))}
        assert handlers, f"{name}: no handler calls _run"
        assert [b.id for b in holder.bases] == ["AIModuleLogicMixin", "ScriptedLoadableModuleLogic"]
        assigned = {a.targets[0].id: a.value.id for a in holder.body if isinstance(a, ast.Assign)}
        assert assigned.get("parameterNodeClass") == f"{name}ParameterNode"
        assert "_make_logic" in {f.name for f in holder.body if isinstance(f, ast.FunctionDef)}
