"""Score the average of several models' class probabilities on held-out cases (development only).

    python -m training.srma.ensemble_eval --data ../shared/data/chaos-mr-t2 --split splits/chaos_t2_5fold.json \
        --fold 0 --weights FOLD0_SEED0 FOLD0_SEED1 --device cpu --out runs/ensemble_fold0

Each window goes through every model and their softmax outputs are averaged before resampling, arg-max and
post-processing, so the rest of the path is the module's own (evaluate.evaluate_cases). Used to ask
whether a seed ensemble pays for its inference time (docs/EVALUATION.md).
"""
from __future__ import annotations

import argparse


def ensemble(segmenters):
    """The first segmenter, its per-window probabilities replaced by the mean over all of them."""
    first = segmenters[0]
    fns = [s._probabilities for s in segmenters]
    first._probabilities = lambda t: sum(f(t) for f in fns) / len(fns)
    return first


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--split", required=True)
    p.add_argument("--fold", required=True)
    p.add_argument("--weights", nargs="+", required=True, help="model folders of the same classes")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs/ensemble_eval")
    a = p.parse_args(argv)

    from SRMASegmenterLib.inference import LiverSegmenter
    from .data import find_cases, split_cases
    from .evaluate import evaluate_cases

    _, cases = split_cases(find_cases(a.data), a.split, fold=a.fold)
    segs = [LiverSegmenter.load(w, device=a.device) for w in a.weights]
    if len({tuple(s.organs) for s in segs}) != 1:
        raise SystemExit("the models do not segment the same classes")
    _, summary = evaluate_cases(ensemble(segs), cases, a.out, overlays=False, log=lambda m: print(m, flush=True))
    print("mean: " + ", ".join(f"{k} {v['mean']:.4g}" for k, v in summary.items()))
    return summary


if __name__ == "__main__":
    main()
