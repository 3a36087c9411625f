"""Near-duplicate detection for the BUSI cross-validation (training/ultrascan/duplicates.py), on a small
synthetic BUSI folder: a frame and its slightly noisy twin, an exact copy under another label, and
unrelated images."""
import json

import numpy as np
import pytest
from PIL import Image

from training.ultrascan import duplicates as dup


def _texture(rng, h=90, w=120):
    base = rng.random((h // 6, w // 6))
    img = np.kron(base, np.ones((6, 6))) + 0.3 * rng.random((h, w))  # blobs a thumbnail keeps
    return (255 * img / img.max()).astype(np.uint8)


@pytest.fixture
def busi(tmp_path):
    rng = np.random.default_rng(0)
    a = _texture(rng)
    twin = np.clip(a.astype(int) + rng.integers(-6, 7, a.shape), 0, 255).astype(np.uint8)
    files = {"benign/benign (1).png": a, "benign/benign (2).png": twin, "malignant/malignant (1).png": a.copy(),
             "benign/benign (3).png": _texture(rng), "normal/normal (1).png": _texture(rng),
             "malignant/malignant (2).png": _texture(rng)}
    for n, arr in files.items():
        (tmp_path / n).parent.mkdir(exist_ok=True)
        Image.fromarray(arr).save(tmp_path / n)
    return tmp_path


def test_groups_twins_and_scores(busi, tmp_path, capsys):
    names = sorted(str(p.relative_to(busi)) for p in busi.glob("*/*.png"))
    groups = dup.near_duplicate_groups(dup.thumbnails(busi, names), 0.95)
    assert [[names[i] for i in g] for g in groups] == [
        ["benign/benign (1).png", "benign/benign (2).png", "malignant/malignant (1).png"]]
    # the noisy twin and the copy are near-duplicates; unrelated textures are not
    assert dup.near_duplicate_groups(dup.thumbnails(busi, names), 0.9999) == [
        [names.index("benign/benign (1).png"), names.index("malignant/malignant (1).png")]]
    folds = [["benign/benign (1).png", "normal/normal (1).png"],
             ["benign/benign (2).png", "benign/benign (3).png"],
             ["malignant/malignant (1).png", "malignant/malignant (2).png"]]
    kind = dup.twins_in_training(names, groups, folds)
    assert kind == {"benign/benign (1).png": "same", "benign/benign (2).png": "same",
                    "malignant/malignant (1).png": "different"}
    # out-of-fold logits: right on the two benign twins, wrong on the mixed-label copy and on one other
    run = tmp_path / "run"
    run.mkdir()
    for fi, f in enumerate(folds):
        labels = np.array([dup.label_of(n) for n in f])
        pred = labels.copy()
        if fi == 2:
            pred[:] = 0                               # both malignant images called benign
        np.savez(run / f"fold{fi}_val_logits.npz", names=np.array(f), labels=labels,
                 logits=np.eye(3)[pred].astype(np.float32))
    s = dup.score_runs([run], kind)[str(run)]
    assert s["same"] == {"n": 2, "accuracy": 1.0} and s["different"] == {"n": 1, "accuracy": 0.0}
    assert s["none"] == {"n": 3, "accuracy": pytest.approx(2 / 3)} and s["all"]["accuracy"] == pytest.approx(4 / 6)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"folds": folds}))
    out = tmp_path / "dup.json"
    dup.main([str(busi), "--split", str(split), "--runs", str(run), "--out", str(out)])
    rep = json.loads(out.read_text())
    assert rep["mixed_label_groups"] == [["benign/benign (1).png", "benign/benign (2).png", "malignant/malignant (1).png"]]
    assert "1 groups mix labels" in capsys.readouterr().out


def test_grouped_split_keeps_each_group_in_one_fold(busi):
    from training.ultrascan.data import make_split
    plain = make_split(busi, k=3, seed=0)
    assert make_split(busi, k=3, seed=0, groups=None) == plain       # the ungrouped split is unchanged
    group = ["benign/benign (1).png", "benign/benign (2).png", "malignant/malignant (1).png"]
    for seed in range(5):
        s = make_split(busi, k=3, seed=seed, groups=[group])
        flat = [n for f in s["folds"] for n in f]
        assert sorted(flat) == sorted(n for f in plain["folds"] for n in f)    # every image once
        assert sum(all(n in f for n in group) for f in s["folds"]) == 1      # the group in one fold
        names = sorted(flat)
        kind = dup.twins_in_training(names, [[names.index(n) for n in group]], s["folds"])
        assert kind == {}                                                  # no twin across folds
    with pytest.raises(ValueError, match="not in"):
        make_split(busi, k=3, groups=[["benign/benign (1).png", "benign/none.png"]])
    with pytest.raises(ValueError, match="two groups"):
        make_split(busi, k=3, groups=[group, ["benign/benign (1).png", "benign/benign (3).png"]])
