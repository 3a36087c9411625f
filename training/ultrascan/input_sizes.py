"""At which size should a trained classifier see the whole image? Out-of-fold logits at several test sizes.

    python -m training.ultrascan.input_sizes RUN [RUN ...] --data ../shared/data/busi \
        --sizes 192 224 256 288 320 352 384 --out runs/input_sizes
    python -m training.ultrascan.evaluate runs/input_sizes/cw1@288 runs/input_sizes/cw2@288 --ensemble

RUN: a cross-validation run folder of training.ultrascan.train (fold*/summary.json + final.safetensors,
trained at --img-size, 224 for every recipe here). Every fold's model scores its own validation images
(never trained on), the whole image resized to S x S, mirror-averaged as the runtime does, and the
logits are written as RUN_NAME@S/fold<k>_val_logits.npz, which evaluate.py reads like the trainer's own.

Why sizes other than the training one: the trainer's random-resized crops show a lesion larger than the
whole image at the same size does, so a network trained at 224 may see whole images best somewhat
larger (Touvron et al., "Fixing the train-test resolution discrepancy", NeurIPS 2019). The table printed
also chooses the size the honest way, per fold on the other folds only (nested), since picking the best
of several sizes on the same logits flatters it. The runtime classifies at the manifest's `input.size`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from .data import load_images, load_split
from .heatmap_methods import load_run
from .train import predict_logits


def fold_dirs(run) -> list[Path]:
    dirs = sorted(d for d in Path(run).glob("fold[0-9]*") if (d / "summary.json").is_file())
    if not dirs:
        raise FileNotFoundError(f"{run}: no fold*/summary.json")
    return dirs


def score_run(run, data, sizes, out, batch=32, flip=True) -> dict:
    """{size: [(fold, names, labels, logits), ...]} for one CV run, each written to out/<run>@<size>/.
    flip: mirror-averaged as the runtime does (False: the image alone, what classifying without the mirror
    would give at half the classifying forward's cost)."""
    res = {s: [] for s in sizes}
    for d in fold_dirs(run):
        model, args = load_run(d)
        names = load_split(args["split"])["folds"][int(args["fold"])]
        x, y = load_images(data, names, args.get("load_size", 256))
        with torch.no_grad():
            for s in sizes:
                lg = predict_logits(model, x, s, batch=batch, flip=flip)
                res[s].append((d.name, names, y.numpy(), lg))
                if out:
                    o = Path(out) / f"{Path(run).name}@{s}"
                    o.mkdir(parents=True, exist_ok=True)
                    np.savez(o / f"{d.name}_val_logits.npz", names=np.array(names), labels=y.numpy(), logits=lg)
    return res


def accuracy(folds) -> float:
    return float(np.mean(np.concatenate([lg.argmax(1) == y for _, _, y, lg in folds])))


def nested_choice(res: dict, ref: int = 224) -> tuple[list, float]:
    """Per fold, the size with the best accuracy on the other folds (ties: the one nearer ref); returns the
    sizes chosen and the pooled accuracy of each fold at its chosen size."""
    sizes = sorted(res)
    n = len(res[sizes[0]])
    if n < 2:                                 # nothing to choose on
        return [], float("nan")
    chosen, hits = [], []
    for k in range(n):
        def rest(s):
            return accuracy([f for i, f in enumerate(res[s]) if i != k])
        best = max(sizes, key=lambda s: (rest(s), -abs(s - ref)))
        chosen.append(best)
        _, _, y, lg = res[best][k]
        hits.append(lg.argmax(1) == y)
    return chosen, float(np.mean(np.concatenate(hits)))


def load_scored(out, run, sizes) -> dict:
    """score_run's result read back from what it wrote under out (e.g. after an interrupted run)."""
    from .evaluate import load_folds
    return {s: [(f["fold"], f["names"], f["labels"], f["logits"]) for f in load_folds(Path(out) / f"{Path(run).name}@{s}")]
            for s in sizes}


def mean_runs(results: list[dict]) -> dict:
    """The runs' logits averaged per size and fold (a seed ensemble, as ensemble.MemberMean), by
    evaluate.mean_folds, which also refuses runs whose folds hold other images."""
    from .evaluate import mean_folds
    keys = ("fold", "names", "labels", "logits")
    return {s: [tuple(f[k] for k in keys) for f in mean_folds([[dict(zip(keys, t)) for t in r[s]] for r in results])]
            for s in results[0]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--data", default=None, help="the BUSI folder (not needed with --tabulate)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[192, 224, 256, 288, 320, 352, 384])
    ap.add_argument("--out", default=None)
    ap.add_argument("--no-flip", action="store_true",
                    help="score the image alone, without averaging its mirror (write to another --out)")
    ap.add_argument("--tabulate", action="store_true",
                    help="score nothing: tabulate the logits an earlier run wrote under --out")
    a = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    if a.tabulate and not a.out:
        ap.error("--tabulate reads --out")
    if not a.tabulate and not a.data:
        ap.error("--data is needed to score")
    results = [load_scored(a.out, r, a.sizes) if a.tabulate else score_run(r, a.data, a.sizes, a.out, flip=not a.no_flip)
               for r in a.runs]
    rows = [(Path(r).name, res) for r, res in zip(a.runs, results)]
    if len(results) > 1:
        rows.append(("+".join(Path(r).name for r in a.runs), mean_runs(results)))
    print("| run | " + " | ".join(str(s) for s in a.sizes) + " | nested choice (sizes) |")
    print("|---|" + "---|" * (len(a.sizes) + 1))
    for name, res in rows:
        chosen, acc = nested_choice(res)
        print(f"| {name} | " + " | ".join(f"{accuracy(res[s]):.3f}" for s in a.sizes)
              + (f" | {acc:.3f} ({', '.join(map(str, chosen))}) |" if chosen else " | - |"))


if __name__ == "__main__":
    main()
