"""The README figure's slice choice (scripts/render_liver_demo.py): slices inside the reference liver."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location(
    "render_liver_demo", Path(__file__).resolve().parents[1] / "scripts" / "render_liver_demo.py")
render = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render)


def test_slices_span_the_liver_and_ignore_other_labels():
    ref = np.zeros((40, 8, 8), np.uint8)
    ref[10:31, 2:5, 2:5] = 1          # liver on slices 10..30
    ref[0:40, 6, 6] = 4               # spleen on every slice: must not widen the extent
    zs = render.liver_slices(ref)
    assert zs == [14, 20, 26]
    assert all((ref[z] == 1).any() for z in zs)


def test_no_liver_is_an_error():
    with pytest.raises(ValueError, match="no liver"):
        render.liver_slices(np.full((5, 4, 4), 4, np.uint8))
