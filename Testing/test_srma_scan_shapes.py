"""The SS2D map shapes that kernels/benchmarks/bench_cross_layout.py times as SRMA-Mamba's (srma224, srma128)
are the ones the model scans at those patches (the kernels package knows no model, so they are written out
there; this keeps them true if the model's geometry changes)."""
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name, patch", [("srma128", (128, 128, 48)), ("srma224", (224, 224, 64))])
def test_layout_benchmark_times_the_maps_the_model_scans(monkeypatch, name, patch):
    monkeypatch.syspath_prepend(str(ROOT / "kernels" / "benchmarks"))
    from bench_cross_layout import SHAPE_SETS

    import SRMASegmenterLib.model as srma
    seen = set()

    def record(x, delta, A, B, C, *args, **kw):      # the shapes only: no scan arithmetic
        seen.add(tuple(x.shape[1:]))
        return torch.zeros(x.shape, device=x.device)
    monkeypatch.setattr(srma, "cross_selective_scan", record)
    model = srma.SRMAMamba(srma.SRMAConfig(dims=48, out_chans=5)).eval().to("meta")   # shapes, no arithmetic
    with torch.no_grad():
        model(torch.zeros(1, 1, *patch, device="meta"))
    timed = {s[1:] for s in SHAPE_SETS[name]}
    assert all(s[0] == 2 for s in SHAPE_SETS[name])                   # the trainer's batch
    assert timed <= seen, sorted(timed - seen)                         # every timed map is one the model scans
    big = {s for s in seen if s[1] * s[2] >= (patch[0] // 2) * (patch[1] // 2) * (patch[2] // 2) // 8}
    assert big <= timed, sorted(big - timed)                           # and the large ones are all timed
