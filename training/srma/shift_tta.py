"""Would averaging the model over shifted (or intensity-changed) copies of the volume draw the liver better?

SRMA-Mamba's finest output lies on a grid twice as coarse as the model's 2.5 x 2.5 x 7.7 mm input grid (the
patch embedding has stride 2: 5 x 5 x 15.4 mm cells), and the errors that remain lie in a band along the
liver surface (docs/EVALUATION.md). Running the network on the volume shifted by one input voxel moves that
output grid by half a cell; the shifted probabilities, shifted back and averaged, sample the surface on a
grid twice as fine. This measures what that buys, through the module's own inference path (resampling,
post-processing), on cases the model never trained on:

    python -m training.srma.shift_tta --data ../shared/data/chaos-mr-t2 --weights FOLD_MODEL \
        --cases case_03 case_19 case_37 [--csv OUT.csv]

Views, as shifts in input voxels along (i, j, k) of the model grid: `none` (the module today), `k` (0 / 1
voxel through the slices), `inplane` (the four shifts by 0 / 1 voxel in i and j), `all` (the eight by 0 / 1
in i, j and k). Intensity views (`gamma0.7`, `gamma1.5`, and `gamma`: those two and the image as it is,
averaged) apply a gamma to the normalised model-grid image rescaled to [0, 1], then restore its mean and
sd, as the training augmentation does; case_15's iron-dark liver is the case they are for. The time each
takes is printed beside its Dice (n views cost n forward passes), and the mean entropy of the averaged
class probabilities on the model grid, which a test-time rule could pick a single view by (the most
confident) without any parameter fitted on these cases.
"""
from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch
from SRMASegmenterLib.inference import LiverSegmenter

from .evaluate import write_csv

VIEWS = {"none": [(0, 0, 0)],                                   # a view: a shift, or (shift, gamma)
         "k": [(0, 0, 0), (0, 0, 1)],
         "inplane": [(a, b, 0) for a, b in itertools.product((0, 1), repeat=2)],
         "all": list(itertools.product((0, 1), repeat=3)),
         "gamma0.7": [((0, 0, 0), 0.7)],
         "gamma1.5": [((0, 0, 0), 1.5)],
         "gamma": [((0, 0, 0), 1.0), ((0, 0, 0), 0.7), ((0, 0, 0), 1.5)]}


def gamma_view(x, g: float):
    """x with gamma g applied to its [0, 1] rescaling, then its own mean and sd restored (g = 1: x)."""
    if g == 1.0:
        return x
    lo, hi = x.min(), x.max()
    r = ((x - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1) ** g
    return (r - r.mean()) / r.std().clamp_min(1e-12) * x.std() + x.mean()


def _view(v):
    """A VIEWS entry as (shift, gamma)."""
    return (v[0], v[1]) if len(v) == 2 and isinstance(v[1], float) else (tuple(v), 1.0)


def shift(t, s):
    """t (N, C, I, J, K) moved by s[d] voxels along I, J, K (output[i] = input[i - s]); the voxels that come in
    at the edge repeat the edge (as the module pads nothing there). Negative s moves back."""
    for dim, v in zip((2, 3, 4), s):
        n = t.shape[dim]
        if v == 0 or n <= abs(v):
            continue
        if v > 0:
            t = torch.cat([t.narrow(dim, 0, 1)] * v + [t.narrow(dim, 0, n - v)], dim)
        else:
            t = torch.cat([t.narrow(dim, -v, n + v)] + [t.narrow(dim, n - 1, 1)] * -v, dim)
    return t


class ViewAveragingSegmenter(LiverSegmenter):
    """The module's segmenter, its model-grid probabilities averaged over `views` (VIEWS entries), each view's
    shift undone before the average; `last_entropy`: the mean entropy of the last average."""
    views = [(0, 0, 0)]
    last_entropy = float("nan")

    def predict_probabilities(self, x, *args, **kw):
        total = None
        for v in self.views:
            s, g = _view(v)
            p = super().predict_probabilities(gamma_view(shift(x, s), g), *args, **kw)   # (C, I, J, K)
            p = shift(p[None], tuple(-d for d in s))[0]
            total = p if total is None else total + p
        p = total / len(self.views)
        q = p.clamp_min(1e-8)
        self.last_entropy = float(-(q * torch.log(q)).sum(0).mean())
        return p


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--cases", nargs="+", required=True)
    p.add_argument("--views", nargs="+", default=list(VIEWS), choices=list(VIEWS))
    p.add_argument("--csv")
    a = p.parse_args(argv)
    from SRMASegmenterLib.metrics import segmentation_metrics
    from SRMASegmenterLib.volumes import read_volume

    from .data import cases_by_id

    seg = ViewAveragingSegmenter.load(a.weights, device="cpu")
    rows = []
    for case in cases_by_id(a.data, a.cases):
        c = case["id"]
        img, geom = read_volume(case["image"])
        lab, _ = read_volume(case["label"])
        truth = lab == 1
        for v in a.views:
            seg.views = VIEWS[v]
            t0 = time.perf_counter()
            mask, _ = seg.predict(img, geom)
            dt = time.perf_counter() - t0
            m = segmentation_metrics(mask.astype(bool), truth, tuple(geom.spacing)[::-1])
            hd95, assd = m["hd95_mm"], m["assd_mm"]
            rows.append(dict(case=c, views=v, n=len(VIEWS[v]), dice=m["dice"], precision=m["precision"],
                             recall=m["recall"], hd95_mm=hd95, assd_mm=assd, entropy=seg.last_entropy, seconds=dt))
            print(f"{c}  {v:8s} ({len(VIEWS[v])} views)  Dice {m['dice']:.4f}  precision {m['precision']:.3f}  "
                  f"recall {m['recall']:.3f}  HD95 {hd95:.1f} mm  ASSD {assd:.2f} mm  entropy "
                  f"{seg.last_entropy:.5f}  {dt:.1f} s", flush=True)
    print("\nmean over cases:")
    for v in a.views:
        rs = [r for r in rows if r["views"] == v]
        print(f"{v:8s}  Dice {np.mean([r['dice'] for r in rs]):.4f}  HD95 {np.mean([r['hd95_mm'] for r in rs]):.1f}  "
              f"ASSD {np.mean([r['assd_mm'] for r in rs]):.2f}  {np.median([r['seconds'] for r in rs]):.1f} s")
    single = [v for v in a.views if len(VIEWS[v]) == 1]
    if len(single) > 1:                # the most confident single view per case (no parameter fitted)
        picked = [min((r for r in rows if r["case"] == c and r["views"] in single), key=lambda r: r["entropy"])
                  for c in a.cases]
        print(f"lowest-entropy view of {single}: " + ", ".join(f"{r['case']} {r['views']}" for r in picked)
              + f"; Dice {np.mean([r['dice'] for r in picked]):.4f}")
    if a.csv:
        write_csv(a.csv, rows)


if __name__ == "__main__":
    main()
