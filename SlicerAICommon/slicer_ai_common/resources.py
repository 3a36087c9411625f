"""Where a module's shipped resources (weights, samples) are, in each way the code is installed.

- In Slicer (the module's CMake install) and in a source checkout, `Resources/` sits beside the module's
  `...Lib` package: the module's own folder, which Slicer knows as `slicer.modules.NAME.path`.
- Installed from the wheel (`pip install .`), the same folders are the package data of a resource
  package (`SRMASegmenterResources`, `UltraScanClassifierResources`), found with importlib.resources.

Standard library only: the Slicer module lists its models before torch is installed.
"""
from __future__ import annotations

from pathlib import Path


def resource_dir(lib_file: str, package: str, sub: str) -> Path:
    """`sub` (e.g. "Models") of a module's resources. lib_file: the `__file__` of a module in the
    module's `...Lib` package; package: the resource package of the wheel."""
    beside = Path(lib_file).resolve().parents[1] / "Resources" / sub
    if beside.is_dir():
        return beside
    try:
        from importlib.resources import files
        found = Path(str(files(package) / sub))
        if found.is_dir():
            return found
    except (ModuleNotFoundError, TypeError, OSError):
        # OSError: an editable install whose resource folder is gone raises NotADirectoryError
        # ("MultiplexedPath only supports directories") from importlib.resources itself
        pass
    return beside          # missing everywhere: the loaders say "no weights" with this path
