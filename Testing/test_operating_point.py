"""The malignant-favouring decision rule of training/ultrascan/operating_point.py: its shift is chosen on
the other folds only, it moves images to malignant and never away from it, and it respects the accuracy
bound it is given."""
import numpy as np
import pytest


def _folds(seed=0, n=60):
    from UltraScanClassifierLib.model import CLASSES
    rng = np.random.default_rng(seed)
    folds = []
    for f in range(5):
        labels = rng.integers(0, len(CLASSES), n)
        logits = rng.normal(0, 1, (n, len(CLASSES)))
        logits[np.arange(n), labels] += 1.5                    # a classifier that is mostly right
        logits[labels == CLASSES.index("malignant"), CLASSES.index("malignant")] -= 1.0   # and shy of malignant
        folds.append({"fold": f"fold{f}", "labels": labels, "logits": logits.astype(np.float32)})
    return folds


def test_shift_moves_images_to_malignant_only():
    from training.ultrascan.operating_point import MALIGNANT, shifted_predictions
    logits = np.array([[2.0, 1.5, 0.0], [0.0, -1.0, 3.0], [0.1, 0.0, 0.2]])
    assert shifted_predictions(logits, 0.0).tolist() == [0, 2, 2]
    assert shifted_predictions(logits, 0.6).tolist() == [MALIGNANT, 2, MALIGNANT]
    before, after = shifted_predictions(logits, 0.0), shifted_predictions(logits, 5.0)
    assert all(a == MALIGNANT for b, a in zip(before, after) if a != b)


def test_choose_shift_respects_the_accuracy_bound():
    from training.ultrascan.operating_point import choose_shift, shifted_predictions
    f = _folds()[0]
    base = (shifted_predictions(f["logits"], 0.0) == f["labels"]).mean()
    b = choose_shift(f["logits"], f["labels"], max_loss=0.02)
    assert b > 0                                               # the malignant-shy classifier gains from a shift
    assert (shifted_predictions(f["logits"], b) == f["labels"]).mean() >= base - 0.02 - 1e-12
    assert choose_shift(f["logits"], f["labels"], max_loss=-1.0) == 0.0   # no shift meets an impossible bound


def test_nested_shift_ignores_the_held_out_fold():
    from training.ultrascan.operating_point import nested, rates
    folds = _folds()
    pred, labels, shifts = nested(folds, 0.02)
    # scrambling fold 0's labels changes only the shifts chosen for the other folds, never fold 0's own
    scrambled = [dict(f) for f in folds]
    scrambled[0]["labels"] = np.roll(folds[0]["labels"], 7)
    _, _, shifts2 = nested(scrambled, 0.02)
    assert shifts2[0] == shifts[0]
    r = rates(pred, labels)
    plain = rates(np.concatenate([f["logits"] for f in folds]).argmax(1), labels)
    assert r["recall_malignant"] > plain["recall_malignant"]
    assert r["accuracy"] == pytest.approx((pred == labels).mean())
