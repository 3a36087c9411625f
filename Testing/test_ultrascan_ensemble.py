"""A seed ensemble of the ultrasound classifier (ensemble.MemberMean): exported from several training runs
into one model folder, it loads through the same loader and gives the mean of its members' logits, its
closed-form Grad-CAM equals the backward's in float64, the frozen CPU path equals eager, and the
cross-validation tools average the members' out-of-fold logits the same way."""
import json

import numpy as np
import pytest
import torch
from conftest import lite0_training_keys, trained_looking
from safetensors.torch import save_file

from UltraScanClassifierLib.efficientnet_lite import EfficientNetLite0
from UltraScanClassifierLib.ensemble import MemberMean
from UltraScanClassifierLib.inference import UltrasoundClassifier, grad_cam, preprocess
from UltraScanClassifierLib.model import build_classifier



def _member(seed):
    torch.manual_seed(seed)
    return trained_looking(EfficientNetLite0(num_classes=3).eval())   # members differ beyond the head


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from training.ultrascan.export import export
    root = tmp_path_factory.mktemp("ens")
    files, nets = [], []
    for seed in (1, 2):
        net = _member(seed)
        f = root / f"seed{seed}.safetensors"
        save_file(lite0_training_keys(net.state_dict()), str(f))
        files.append(f)
        nets.append(net)
    rec = export(files, root / "model", name="lite0_pair", architecture="EfficientNet-Lite0",
                 record={"input": {"tta_flip": True}})
    single = export(files[0], root / "single", name="lite0_one", architecture="EfficientNet-Lite0")
    return root, nets, rec, single


def _images(n=3, seed=0):
    g = np.random.default_rng(seed)
    return [g.random((120 + 20 * i, 150, 3)).astype(np.float32) for i in range(n)]


def test_export_writes_members_and_loads_as_one_model(exported):
    root, nets, rec, single = exported
    man = json.loads((root / "model" / "model.json").read_text())
    assert man["config"]["members"] == 2 and man["architecture"] == "EfficientNet-Lite0"
    clf = UltrasoundClassifier.load(root / "model", device="cpu")
    assert isinstance(clf.model, MemberMean) and len(clf.model.members) == 2 and clf.cpu_freeze
    keys = set(clf.model.state_dict())
    assert all(k.startswith(("members.0.", "members.1.")) for k in keys)
    assert len(keys) == 2 * len(nets[0].state_dict())
    one = UltrasoundClassifier.load(root / "single", device="cpu")       # a single run stays as it was
    assert isinstance(one.model, EfficientNetLite0) and "members" not in one.record.manifest["config"]


def test_ensemble_logits_are_the_mean_of_its_members_in_float64(exported):
    root, nets, _, _ = exported
    ens = UltrasoundClassifier.load(root / "model", device="cpu").model.double()
    x = torch.cat([preprocess(i) for i in _images()]).double()
    # the members as exported (fp16 weights) and re-read alone: the mean of their logits
    sd = {k: v.double() for k, v in ens.state_dict().items()}
    alone = []
    for i in range(2):
        net = EfficientNetLite0(num_classes=3).double().eval()
        net.load_state_dict({k.split(".", 2)[2]: v for k, v in sd.items() if k.startswith(f"members.{i}.")})
        with torch.no_grad():
            alone.append(net(x))
    with torch.no_grad():
        got = ens(x)
    assert float((alone[0] - alone[1]).abs().max()) > 1e-3          # the members differ
    assert torch.allclose(got, (alone[0] + alone[1]) / 2, rtol=0, atol=1e-12)


def test_ensemble_closed_form_cam_equals_the_backward_in_float64(exported):
    root = exported[0]
    model = UltrasoundClassifier.load(root / "model", device="cpu").model.double().eval()
    x = torch.cat([preprocess(i) for i in _images()]).double()
    for target in (None, torch.tensor([2, 0, 1])):
        lg_a, cam_a = grad_cam(model, x, target)
        lg_b, cam_b = grad_cam(model, x, target, analytic=False)
        assert float(cam_b.amax()) > 0 and cam_a.shape == cam_b.shape == (3, 1, 7, 7)
        assert torch.allclose(lg_a.double(), lg_b.double(), atol=1e-6)   # analytic logits come back as float32
        assert torch.allclose(cam_a, cam_b, rtol=1e-9, atol=1e-12 * float(cam_b.amax()))
    model.train()
    assert model.cam_weights() is None


def test_ensemble_classifies_frozen_on_the_cpu_as_eager(exported):
    root = exported[0]
    fast = UltrasoundClassifier.load(root / "model", device="cpu")
    eager = UltrasoundClassifier.load(root / "model", device="cpu")
    eager.cpu_freeze = False
    img = _images(1, seed=3)[0]
    a, b = fast.classify(img, heatmap=True), eager.classify(img, heatmap=True)
    assert fast._frozen and all(isinstance(f, torch.jit.ScriptModule) for f in fast._frozen.values())
    assert a.label == b.label and np.allclose(a.logits, b.logits, atol=1e-4)
    assert a.heatmap.shape == img.shape[:2] and np.allclose(a.heatmap, b.heatmap, atol=1e-4)
    assert abs(sum(a.probabilities.values()) - 1) < 1e-6


def test_build_classifier_members_and_errors():
    net, cfg = build_classifier("EfficientNet-Lite0", {"members": 3})
    assert isinstance(net, MemberMean) and len(net.members) == 3 and cfg["members"] == 3
    net, cfg = build_classifier("EfficientNet-Lite0", {"members": 1})
    assert isinstance(net, EfficientNetLite0) and "members" not in cfg
    with pytest.raises(ValueError, match="members"):
        build_classifier("EfficientNet-Lite0", {"members": 0})
    with pytest.raises(ValueError, match="at least 2"):
        MemberMean([EfficientNetLite0()])


def test_mean_folds_averages_matching_folds_and_refuses_others():
    from training.ultrascan.evaluate import evaluate_cv, mean_folds
    g = np.random.default_rng(0)

    def run(shift):
        return [{"fold": f"fold{i}", "names": [f"img{i}_{j}" for j in range(6)], "labels": np.arange(6) % 3,
                 "logits": g.normal(size=(6, 3)) + shift} for i in range(2)]
    a, b = run(0.0), run(1.0)
    m = mean_folds([a, b])
    assert [f["fold"] for f in m] == ["fold0", "fold1"]
    assert np.allclose(m[1]["logits"], (a[1]["logits"] + b[1]["logits"]) / 2)
    res = evaluate_cv("a+b", folds=m)
    assert res["pooled_out_of_fold"]["n"] == 12
    b[0]["names"] = list(reversed(b[0]["names"]))
    with pytest.raises(ValueError, match="same images"):
        mean_folds([a, b])
