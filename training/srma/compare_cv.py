"""Compare two liver cross-validations case by case, from the per-fold metrics CSVs that evaluate.py and
train.py write (`<dir>/fold{0..4}_metrics.csv`, one row per held-out case):

    python -m training.srma.compare_cv docs/eval/liver_cv_long_wide docs/eval/liver_5400 [--without case_15]

Prints mean +- sd (sample sd) of Dice, HD95, ASSD, precision and recall for each CV, with and without the
cases named in --without, the per-fold mean Dice, the lowest case, the spleen volume labelled liver, and
the paired comparison: how many cases the second CV is better on, the median difference and a two-sided
sign test.
"""
from __future__ import annotations

import argparse
import csv
import statistics as st
from pathlib import Path

KEYS = ("dice", "hd95_mm", "assd_mm", "precision", "recall")


def load_cv(folder, folds=5):
    """{case id: {metric: float}} and [[case ids of fold f]] from <folder>/fold{f}_metrics.csv."""
    rows, by_fold = {}, []
    for f in range(folds):
        ids = []
        for r in csv.DictReader(open(Path(folder) / f"fold{f}_metrics.csv")):
            rows[r["id"]] = {k: float(v) for k, v in r.items() if k not in ("id", "device") and v not in ("", None)}
            ids.append(r["id"])
        by_fold.append(ids)
    return rows, by_fold


def sign_test(wins, n):
    """Two-sided exact sign test p-value for `wins` successes out of n (ties dropped beforehand)."""
    from scipy.stats import binomtest
    return float(binomtest(wins, n, 0.5).pvalue)


def summary(rows, ids):
    out = {k: (st.mean(rows[i][k] for i in ids), st.stdev(rows[i][k] for i in ids)) for k in KEYS}
    out["lowest"] = min((rows[i]["dice"], i) for i in ids)
    out["spleen_in_liver_ml"] = max(rows[i].get("spleen_in_liver_ml", float("nan")) for i in ids)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--without", nargs="*", default=["case_15"])
    p.add_argument("--folds", type=int, default=5)
    a = p.parse_args(argv)
    (ra, fa), (rb, fb) = load_cv(a.before, a.folds), load_cv(a.after, a.folds)
    if set(ra) != set(rb):
        raise SystemExit(f"the two CVs hold different cases: {sorted(set(ra) ^ set(rb))}")
    ids = sorted(ra)
    sub = [i for i in ids if i not in set(a.without)]
    for name, rows, folds in ((a.before, ra, fa), (a.after, rb, fb)):
        for sel, lab in ((ids, f"{len(ids)} cases"), (sub, f"without {' '.join(a.without)}")):
            s = summary(rows, sel)
            print(f"{name} [{lab}]: " + "  ".join(f"{k} {m:.3f} +- {sd:.3f}" for k, (m, sd) in
                                                  ((k, s[k]) for k in KEYS))
                  + f"  lowest {s['lowest'][0]:.3f} ({s['lowest'][1]})  spleen in liver <= {s['spleen_in_liver_ml']:.1f} mL")
        print(f"{name}: per-fold mean Dice " + " / ".join(f"{st.mean(rows[i]['dice'] for i in f):.3f}" for f in folds))
    d = {i: rb[i]["dice"] - ra[i]["dice"] for i in ids}
    untied = [i for i in ids if d[i] != 0]
    wins = sum(d[i] > 0 for i in untied)
    worst, best = min(d, key=d.get), max(d, key=d.get)
    print(f"paired: second better on {wins} of {len(ids)} cases, median {st.median(d.values()):+.3f} "
          f"({d[worst]:+.3f} {worst} .. {d[best]:+.3f} {best}), two-sided sign test p = {sign_test(wins, len(untied)):.3f}")
    for i in ids:
        print(f"  {i}: Dice {ra[i]['dice']:.3f} -> {rb[i]['dice']:.3f}  HD95 {ra[i]['hd95_mm']:.1f} -> {rb[i]['hd95_mm']:.1f} mm"
              f"  recall {ra[i]['recall']:.3f} -> {rb[i]['recall']:.3f}")
    return d


if __name__ == "__main__":
    main()
