"""Classifying at another whole-image size: the runtime honours the manifest's input.size, and
training/ultrascan/input_sizes.py scores every fold's own validation images at each size (mirror-averaged,
written where evaluate.py reads them) and chooses the size per fold on the other folds only."""
import json

import numpy as np
import pytest
import torch
from conftest import lite0_training_keys, trained_looking
from safetensors.torch import save_file

from UltraScanClassifierLib.inference import UltrasoundClassifier, preprocess



def test_runtime_classifies_at_the_manifest_input_size(tmp_path):
    from training.ultrascan.export import export
    from UltraScanClassifierLib.efficientnet_lite import EfficientNetLite0
    torch.manual_seed(0)
    net = trained_looking(EfficientNetLite0(num_classes=3).eval(), head_std=0.5)   # logits depend on the image
    save_file(lite0_training_keys(net.state_dict()), str(tmp_path / "w.safetensors"))
    rec = {"input": {"size": 288, "tta_flip": True}}
    export(tmp_path / "w.safetensors", tmp_path / "m288", name="m288", architecture="EfficientNet-Lite0", record=rec)
    export(tmp_path / "w.safetensors", tmp_path / "m224", name="m224", architecture="EfficientNet-Lite0",
           record={"input": {"tta_flip": True}})
    img = np.random.default_rng(1).random((150, 170)).astype(np.float32)
    c288 = UltrasoundClassifier.load(tmp_path / "m288", device="cpu")
    c224 = UltrasoundClassifier.load(tmp_path / "m224", device="cpu")
    assert (c288.input_size, c224.input_size) == (288, 224)
    for clf, s in ((c288, 288), (c224, 224)):
        clf.cpu_freeze = False
        r = clf.classify(img, heatmap=True)
        x = preprocess(np.repeat(img[..., None], 3, axis=2), s)
        with torch.no_grad():
            m = clf.model.float()
            want = (m(x) + m(x.flip(3))) / 2
        assert np.allclose(r.logits, want[0].numpy(), atol=1e-4)
        assert r.heatmap.shape == img.shape
    assert not np.allclose(c288.classify(img, heatmap=False).logits, c224.classify(img, heatmap=False).logits,
                           atol=1e-4)


def test_nested_choice_picks_on_the_other_folds():
    from training.ultrascan.input_sizes import accuracy, mean_runs, nested_choice
    y = np.array([0, 1, 2, 0])
    right, wrong = np.eye(3)[y], np.eye(3)[(y + 1) % 3]
    # size 256 is right on folds 0-2 and wrong on fold 3; 224 right on fold 3 only
    res = {224: [("f0", [], y, wrong), ("f1", [], y, wrong), ("f2", [], y, wrong), ("f3", [], y, right)],
           256: [("f0", [], y, right), ("f1", [], y, right), ("f2", [], y, right), ("f3", [], y, wrong)]}
    chosen, acc = nested_choice(res)
    assert chosen == [256, 256, 256, 256] and acc == pytest.approx(0.75)    # fold 3's choice made without fold 3
    assert accuracy(res[224]) == pytest.approx(0.25)
    m = mean_runs([res, {s: [(a, b, c, -d) for a, b, c, d in v] for s, v in res.items()}])
    assert np.allclose(m[256][0][3], 0)
    assert nested_choice({224: res[224][:1], 256: res[256][:1]}) == ([], pytest.approx(float("nan"), nan_ok=True))


def test_input_sizes_scores_each_fold_on_its_own_images(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch", reason="pip install '.[train]' for the teacher")
    from PIL import Image
    from training.ultrascan.baselines import EfficientNetLite
    from training.ultrascan.data import load_images
    from training.ultrascan.evaluate import load_folds
    from training.ultrascan.input_sizes import score_run
    from training.ultrascan.train import predict_logits
    g = np.random.default_rng(0)
    data = tmp_path / "busi"
    names = []
    for c in ("benign", "malignant", "normal"):
        (data / c).mkdir(parents=True)
        for i in range(2):
            n = f"{c}/{c} ({i}).png"
            a = g.random((40, 50)) * 100
            a[:, :20 + 5 * i] += 150                    # a bright left band: the mirror is another image
            Image.fromarray(a.astype(np.uint8)).save(data / n)
            names.append(n)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"folds": [names[0::2], names[1::2]]}))
    run = tmp_path / "cw"
    for f in (0, 1):
        d = run / f"fold{f}"
        d.mkdir(parents=True)
        torch.manual_seed(f)
        net = trained_looking(EfficientNetLite(0, 3, pretrained=False), calibrate=torch.randn(4, 3, 64, 64)).eval()
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(d / "final.safetensors"))
        (d / "summary.json").write_text(json.dumps({"args": {"model": "efficientnet_lite0", "split": str(split),
                                                             "fold": f, "load_size": 64}}))
    res = score_run(run, data, [64, 96], tmp_path / "out")
    assert sorted(res) == [64, 96] and [f[0] for f in res[96]] == ["fold0", "fold1"]
    folds = load_folds(tmp_path / "out" / "cw@96")
    assert [f["names"] for f in folds] == [names[0::2], names[1::2]]
    from training.ultrascan.heatmap_methods import load_run
    model, _ = load_run(run / "fold1")
    x, _ = load_images(data, names[1::2], 64)
    with torch.no_grad():
        want = predict_logits(model, x, 96, flip=True)
    assert np.allclose(folds[1]["logits"], want, atol=1e-5)
    assert not np.allclose(res[64][1][3], res[96][1][3], atol=1e-4)        # the size matters
    alone = score_run(run, data, [96], None, flip=False)                 # --no-flip: the image without its mirror
    with torch.no_grad():
        assert np.allclose(alone[96][1][3], predict_logits(model, x, 96, flip=False), atol=1e-5)
    assert np.abs(alone[96][1][3] - res[96][1][3]).max() > 1e-3
    from training.ultrascan.input_sizes import load_scored              # read back, as --tabulate does
    back = load_scored(tmp_path / "out", run, [64, 96])
    assert all(np.allclose(back[s][k][3], res[s][k][3]) and back[s][k][1] == res[s][k][1]
               for s in (64, 96) for k in (0, 1))
