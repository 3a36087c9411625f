"""Would a different decision rule draw the liver better? Dice, precision and recall of the liver when it is
taken where P(liver) + bias >= the most probable other class, for a range of biases (0: the module's argmax),
after the module's post-processing (largest component, holes filled), through the module's inference path.

A positive bias draws more liver (recall up, precision down). If the best bias gains little, the model's
errors are confident rather than borderline, and no threshold will fix them. Only cases the model never
trained on say anything; a bias would have to be chosen by cross-validation before it is used.

    python -m training.srma.decision_rule --data ../shared/data/chaos-mr-t2 --weights MODEL \
        --cases case_03 case_19 case_37 [--biases -0.2 -0.1 0 0.1 0.2 0.3 0.4] [--csv OUT.csv]
"""
from __future__ import annotations

import argparse

import numpy as np

from .evaluate import write_csv

BIASES = (-0.2, -0.1, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5)


def liver_with_bias(prob: np.ndarray, liver: int, bias: float) -> np.ndarray:
    """prob: (classes, ...) probabilities. The liver where P(liver) + bias >= every other class's P, or for a
    one-channel (binary) model where P(liver) + bias > 0.5; at bias 0 exactly the module's labels (its argmax,
    ties to the lower index; its 0.5 threshold). Post-processed as the module does."""
    from SRMASegmenterLib.inference import postprocess

    if prob.shape[0] == 1:
        raw = prob[0] + bias > 0.5
    elif bias == 0:
        raw = prob.argmax(0) == liver
    else:
        raw = prob[liver] + bias >= np.delete(prob, liver, axis=0).max(0)
    return postprocess(raw).astype(bool)


def sweep(prob: np.ndarray, truth: np.ndarray, liver: int, biases=BIASES) -> list[dict]:
    from SRMASegmenterLib.metrics import overlap_metrics

    rows = []
    for b in biases:
        m = overlap_metrics(liver_with_bias(prob, liver, b), truth)
        rows.append(dict(bias=float(b), dice=m["dice"], precision=m["precision"], recall=m["recall"]))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--cases", nargs="+", required=True)
    p.add_argument("--biases", type=float, nargs="+", default=list(BIASES))
    p.add_argument("--device", default="cpu")
    p.add_argument("--csv")
    a = p.parse_args(argv)
    from SRMASegmenterLib.inference import LiverSegmenter
    from SRMASegmenterLib.volumes import read_volume

    from .data import cases_by_id

    seg = LiverSegmenter.load(a.weights, device=a.device)
    liver = seg.classes.index("liver")
    out = []
    for case in cases_by_id(a.data, a.cases):
        c = case["id"]
        img, geom = read_volume(case["image"])
        lab, _ = read_volume(case["label"])
        _, info = seg.predict(img, geom, keep_probabilities=True)
        for r in sweep(info["probabilities"], lab == 1, liver, a.biases):
            out.append(dict(case=c, **r))
            print(f"{c}  bias {r['bias']:+.2f}  Dice {r['dice']:.4f}  precision {r['precision']:.3f}  "
                  f"recall {r['recall']:.3f}", flush=True)
    print("\nmean over cases:")
    for b in a.biases:
        rs = [r for r in out if r["bias"] == b]
        print(f"bias {b:+.2f}  Dice {np.mean([r['dice'] for r in rs]):.4f}  precision "
              f"{np.mean([r['precision'] for r in rs]):.3f}  recall {np.mean([r['recall'] for r in rs]):.3f}")
    if a.csv:
        write_csv(a.csv, out)


if __name__ == "__main__":
    main()
