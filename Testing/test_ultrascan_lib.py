"""UltraScanClassifierLib: image loading (both BUSI layouts), metrics against hand-computed values,
temperature scaling, augmentation, the console script's outputs and error paths."""
import json
import shutil

import numpy as np
import pytest
import torch

from conftest import SHARED, need
from UltraScanClassifierLib import metrics as M
from UltraScanClassifierLib.images import ImageError, check_image, list_images, read_image

BUSI = SHARED / "data" / "busi"


# --------------------------------------------------------------------------------------- loading
def test_loader_project_layout_grayscale_and_rgb():
    from training.ultrascan.data import list_busi, load_images
    items = list_busi(need(BUSI))
    assert len(items) == 624
    counts = np.bincount([c for _, c in items])
    assert counts.tolist() == [350, 168, 106]
    modes = {read_image(BUSI / n)[0].ndim for n, _ in items[:400]}
    assert modes == {2, 3}, "the copy holds both grayscale and RGB images"
    x, y = load_images(BUSI, [n for n, _ in items[:6]], size=64)
    assert x.shape == (6, 3, 64, 64) and x.dtype == torch.uint8 and y.tolist() == [0] * 6


def test_loader_original_release_layout(tmp_path):
    """RGB images of any size with *_mask.png files beside them (the public release's layout)."""
    from PIL import Image

    from training.ultrascan.data import list_busi, load_images, make_split
    for cls in ("benign", "malignant", "normal"):
        (tmp_path / cls).mkdir()
        for i, path in enumerate(list_images(need(BUSI / cls))[:5], 1):
            src, _ = read_image(path)
            rgb = np.repeat(src[..., None], 3, axis=2) if src.ndim == 2 else src
            Image.fromarray(rgb).resize((300 + 13 * i, 220)).save(tmp_path / cls / f"{cls} ({i}).png")
            Image.fromarray(np.zeros((220, 300), np.uint8)).save(tmp_path / cls / f"{cls} ({i})_mask.png")
        Image.fromarray(np.zeros((220, 300), np.uint8)).save(tmp_path / cls / f"{cls} (1)_mask_1.png")
    items = list_busi(tmp_path)
    assert len(items) == 15 and not any("_mask" in n for n, _ in items)
    x, y = load_images(tmp_path, [n for n, _ in items], size=96)
    assert x.shape == (15, 3, 96, 96)
    s = make_split(tmp_path, k=5, seed=1)
    assert sorted(n for f in s["folds"] for n in f) == sorted(n for n, _ in items)
    assert all(sorted(n.split("/")[0] for n in f) == ["benign", "malignant", "normal"] for f in s["folds"])


def test_shipped_split_file_is_stratified_and_disjoint():
    from pathlib import Path

    from training.ultrascan.data import load_split
    s = load_split(Path(__file__).resolve().parents[1] / "splits" / "busi_5fold.json")
    names = [n for f in s["folds"] for n in f]
    assert len(names) == len(set(names)) == 624
    for f in s["folds"]:
        frac = np.bincount([["benign", "malignant", "normal"].index(n.split("/")[0]) for n in f], minlength=3) / len(f)
        assert np.allclose(frac, [350 / 624, 168 / 624, 106 / 624], atol=0.02)


@pytest.mark.parametrize("arr,msg", [
    (np.zeros((0, 10), np.uint8), "empty image"),
    (np.full((40, 40), 9, np.uint8), "constant image"),
    (np.array([[np.nan] * 40] * 40, np.float32), "NaN"),
    (np.random.rand(5, 40, 40), "3D array"),
    (np.random.rand(8, 8), "too small"),
])
def test_check_image_errors(arr, msg):
    with pytest.raises(ImageError, match=msg):
        check_image(arr, "x")


def test_check_image_formats():
    g = (np.random.rand(32, 48) * 255).astype(np.uint8)
    a = check_image(g)
    assert a.shape == (32, 48, 3) and np.allclose(a[..., 0], g / 255.0) and np.array_equal(a[..., 0], a[..., 2])
    rgba = np.dstack([g, g, g, np.full_like(g, 255)])
    assert np.array_equal(check_image(rgba), a)
    u16 = g.astype(np.uint16) * 200
    b = check_image(u16)
    assert b.min() == 0 and b.max() == 1


# --------------------------------------------------------------------------------------- metrics
def test_metrics_against_hand_computed_values():
    y = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 1, 1, 2, 2])
    cm = M.confusion_matrix(y, pred, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    p, r, f = M.precision_recall_f1(cm)
    assert np.allclose(p, [1.0, 0.5, 0.5]) and np.allclose(r, [2 / 3, 0.5, 1.0])
    assert np.allclose(f, [0.8, 0.5, 2 / 3])
    logits = np.log(np.eye(3)[pred] * 0.7 + 0.1)
    rep = M.classification_report(logits, y, ["a", "b", "c"])
    assert rep["accuracy"] == pytest.approx(4 / 6)
    assert rep["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    # AUC by hand: scores for class 0, positives {0.8, 0.8, 0.1}, negatives {0.1, 0.1, 0.1}
    assert M.roc_auc([0.8, 0.8, 0.1, 0.1, 0.1, 0.1], [1, 1, 1, 0, 0, 0]) == pytest.approx((3 + 3 + 1.5) / 9)
    # ECE: all confidences 0.8 (one bin), accuracy 4/6
    assert rep["ece"] == pytest.approx(abs(4 / 6 - 0.8), abs=1e-9)


def test_auc_matches_monai():
    from monai.metrics import compute_roc_auc
    rng = np.random.default_rng(0)
    s = rng.random(200)
    y = (rng.random(200) < s).astype(int)
    s[::7] = 0.5                                   # ties
    assert M.roc_auc(s, y) == pytest.approx(float(compute_roc_auc(torch.tensor(s), torch.tensor(y))), abs=1e-12)


def test_temperature_scaling_recovers_a_known_temperature():
    rng = np.random.default_rng(1)
    true_logits = rng.normal(size=(4000, 3)) * 2.0
    y = np.array([rng.choice(3, p=p) for p in M.softmax(true_logits)])
    t = M.fit_temperature(true_logits * 3.0, y)     # logits 3x too sharp -> T near 3
    assert t == pytest.approx(3.0, rel=0.1)
    assert M.classification_report(true_logits * 3.0, y, "abc", t)["nll"] < \
        M.classification_report(true_logits * 3.0, y, "abc")["nll"]


# ---------------------------------------------------------------------------------- augmentation
def test_train_batch_shapes_targets_and_determinism():
    from training.ultrascan.augment import AugmentConfig, train_batch
    x = torch.randint(0, 255, (6, 3, 64, 64), dtype=torch.uint8)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    for preset in ("published", "scratch"):
        cfg = AugmentConfig.preset(preset, 48)
        outs = []
        for _ in range(2):
            g = torch.Generator().manual_seed(3)
            torch.manual_seed(3)
            outs.append(train_batch(x, y, cfg, 3, g))
        (a, ta), (b, tb) = outs
        assert a.shape == (6, 3, 48, 48) and torch.isfinite(a).all()
        assert torch.allclose(ta.sum(1), torch.ones(6)) and torch.equal(a, b) and torch.equal(ta, tb)
    cfg = AugmentConfig.preset("scratch", 48)
    _, t = train_batch(x, y, cfg, 3, torch.Generator().manual_seed(0))
    assert (t.argmax(1) == y).all()                 # no mixing in the scratch preset: smoothing only


def test_mask_boxes_in_grid_sample_coordinates():
    """The box of a mask's pixels in the normalised coordinates grid_sample reads (image edges at -1 and 1)."""
    from training.ultrascan.augment import mask_boxes
    m = torch.zeros(2, 1, 64, 32)
    m[0, 0, 16:48, 8:16] = 1.0                      # rows 16-47 of 64, columns 8-15 of 32
    box, has = mask_boxes(m)
    assert has.tolist() == [True, False]
    assert torch.allclose(box[0], torch.tensor([(8 + 16) / 32 - 1, (16 + 48) / 64 - 1, 8 / 32, 32 / 64]))


def test_lesion_crops_centre_on_the_outline_and_leave_other_draws_alone():
    """With lesion_crop = 1 every image with an outline is cropped around it: through the same affine as the
    pixels, the outline fills a far larger share of the crop than of the image, its centre near the crop's;
    images without an outline still get a crop (of 0.3-0.7 of the side, kept inside the image); with
    lesion_crop = 0 the batch is exactly the plain one (no extra random draws)."""
    from training.ultrascan.augment import AugmentConfig, train_batch
    x = torch.randint(0, 255, (8, 3, 128, 128), dtype=torch.uint8)
    y = torch.tensor([0, 1, 0, 1, 0, 1, 2, 2])
    masks = torch.zeros(8, 1, 128, 128, dtype=torch.uint8)
    for i in range(6):                              # small lesions (12 x 16 px) at different places
        r, c = 10 + 15 * i, 100 - 14 * i
        masks[i, 0, r:r + 12, c:c + 16] = 255
    cfg = AugmentConfig.preset("scratch", 64)
    cfg.ra_ops, cfg.reprob = 0, 0.0
    plain = train_batch(x, y, cfg, 3, torch.Generator().manual_seed(1), masks)
    cfg.lesion_crop = 0.0
    same = train_batch(x, y, cfg, 3, torch.Generator().manual_seed(1), masks)
    assert all(torch.equal(a, b) for a, b in zip(plain, same))
    cfg.lesion_crop = 1.0
    _, _, m = train_batch(x, y, cfg, 3, torch.Generator().manual_seed(1), masks)
    share = m[:6].mean(dim=(1, 2, 3))
    whole = masks[:6].float().mean(dim=(1, 2, 3)) / 255
    assert (share > 4 * whole).all() and (share < 0.5).all()       # (margin 1.6-2.6: 4-10 % of the crop)
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    for i in range(6):
        w = m[i, 0] / m[i, 0].sum()
        cy, cx = float((w * ys).sum()), float((w * xs).sum())
        assert abs(cy - 31.5) < 16 and abs(cx - 31.5) < 16          # jitter: at most a quarter of the half-side
    assert float(m[6:].sum()) == 0


# ------------------------------------------------------------------------------------ console script
def test_cli_json_and_error_paths(tmp_path, capsys):
    from UltraScanClassifierLib.cli import main
    good = tmp_path / "ok.png"
    shutil.copy(need(BUSI / "benign" / "benign (2).png"), good)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    from PIL import Image
    Image.fromarray(np.full((50, 50), 3, np.uint8)).save(tmp_path / "flat.png")
    files = [good, tmp_path / "empty.png", tmp_path / "text.png", tmp_path / "flat.png", tmp_path / "missing.png"]
    rc = main([str(f) for f in files] + ["--json", "--device", "cpu", "--heatmap-dir", str(tmp_path / "h")])
    out, err = capsys.readouterr()
    assert rc == 1
    res = json.loads(out)
    assert [r["file"] for r in res] == [str(good)]
    assert set(res[0]["probabilities"]) == {"benign", "malignant", "normal"}
    assert abs(sum(res[0]["probabilities"].values()) - 1) < 1e-5 and res[0]["label"] in res[0]["probabilities"]
    assert (tmp_path / "h" / "ok_heatmap.png").is_file()
    for f, msg in (("empty.png", "empty file"), ("text.png", "not a readable image"), ("flat.png", "constant image"),
                   ("missing.png", "no such file")):
        assert f in err and msg in err, (f, err)


def test_cli_bad_weights_and_nothing_readable(tmp_path, capsys):
    from UltraScanClassifierLib.cli import main
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"garbage")
    assert main([str(need(BUSI / "benign" / "benign (2).png")), "--weights", str(bad)]) == 3
    assert "cannot load weights" in capsys.readouterr().err
    (tmp_path / "x.png").write_text("no")
    assert main([str(tmp_path / "x.png"), "--device", "cpu"]) == 2


# ------------------------------------------------------------------------------- other checkpoints
def test_authors_style_checkpoint_loads_by_name(tmp_path):
    """A .pth holding {'model': state_dict} (the layout of the authors' checkpoints) loads strictly and gives
    the shipped model's logits; an ImageNet-style 1000-class checkpoint initialises all but the head."""
    from UltraScanClassifierLib.inference import UltrasoundClassifier
    from UltraScanClassifierLib.model import UltraScanNet
    from training.ultrascan.train import load_init
    shipped = UltrasoundClassifier.load("ultrascannet_busi", device="cpu")
    sd = {k: v.float() for k, v in shipped.model.state_dict().items()}
    torch.save({"model": sd, "epoch": 3}, tmp_path / "ckpt.pth")
    other = UltrasoundClassifier.load(tmp_path / "ckpt.pth", device="cpu")
    img = read_image(need(BUSI / "normal" / "normal (5).png"))[0]
    a = shipped.classify(img, heatmap=False)
    b = other.classify(img, heatmap=False)
    assert np.allclose(a.logits, b.logits, atol=1e-5) and other.temperature == 1.0
    imagenet = dict(sd)
    imagenet["head.weight"] = torch.zeros(1000, 640)
    imagenet["head.bias"] = torch.zeros(1000)
    torch.save({"state_dict": imagenet}, tmp_path / "mambavision_like.pth.tar.pth")
    m = UltraScanNet()
    n, total = load_init(m, tmp_path / "mambavision_like.pth.tar.pth")
    assert n == total - 2
    assert torch.equal(m.state_dict()["levels.2.blocks.0.mixer.A_log"], sd["levels.2.blocks.0.mixer.A_log"])


def test_batch_inference_equals_one_by_one():
    from UltraScanClassifierLib.inference import UltrasoundClassifier
    clf = UltrasoundClassifier.load(device="cpu")
    imgs = [read_image(p)[0] for p in list_images(need(BUSI / "malignant"))[:3]]
    imgs[1] = imgs[1][:, 30:]                              # different sizes in one batch
    batch = clf.classify_batch(imgs, heatmap=True, batch_size=2)
    for img, b in zip(imgs, batch):
        one = clf.classify(img, heatmap=True)
        assert b.label == one.label and np.allclose(b.logits, one.logits, atol=1e-4)
        assert b.heatmap.shape == img.shape[:2] and np.allclose(b.heatmap, one.heatmap, atol=1e-3)


def test_balanced_class_weights_and_weighted_loss_against_float64():
    import torch.nn.functional as F
    from training.ultrascan.train import balanced_class_weights, weighted_soft_ce
    w = balanced_class_weights(torch.tensor([0, 0, 0, 1, 2, 2]), 3)
    assert torch.allclose(w, torch.tensor([6 / 9, 6 / 3, 6 / 6]))                 # n / (K n_c): mean 1 per image
    assert balanced_class_weights(torch.tensor([0, 0, 2]), 3)[1] == 0              # an absent class: 0, not inf
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 3, generator=g)
    y = torch.softmax(torch.randn(5, 3, generator=g) * 3, 1)                      # mixed, smoothed targets
    ref = [sum(-y[i, c].double() * F.log_softmax(logits.double(), 1)[i, c] for c in range(3))
           * sum(y[i, c].double() * w[c].double() for c in range(3)) for i in range(5)]
    assert abs(float(weighted_soft_ce(logits, y, w)) - float(sum(ref) / 5)) < 1e-6
    plain = -(y.double() * F.log_softmax(logits.double(), 1)).sum(1).mean()
    assert abs(float(weighted_soft_ce(logits, y)) - float(plain)) < 1e-6         # no weights: the plain loss
    assert abs(float(weighted_soft_ce(logits, y, torch.ones(3))) - float(plain)) < 1e-6
