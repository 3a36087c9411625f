"""The second shipped ultrasound model (EfficientNet-Lite0): the runtime network built on MONAI equals the
training network in float64, the shipped folder verifies and loads by name, mirror averaging is what the
manifest says, and the CLI and logic pick a model by name."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import lite0_training_keys
from slicer_ai_common.weights import WeightsError
from UltraScanClassifierLib.images import read_image
from UltraScanClassifierLib.inference import MODELS_DIR, UltrasoundClassifier

SAMPLES = Path(__file__).resolve().parents[1] / "UltraScanClassifier" / "Resources" / "SampleData"
LITE = "efficientnet_lite0_busi"



def test_runtime_lite0_equals_the_training_network_in_float64():
    """Same weights (renamed by from_training_keys) -> the same logits and feature map as the
    efficientnet-lite-pytorch network the teacher trains as, for each shipped member; and the shipped
    ensemble's logits are the mean of its members' training networks."""
    pytest.importorskip("efficientnet_lite_pytorch", reason="the [train] extra is not installed")
    from training.ultrascan.baselines import EfficientNetLite
    from UltraScanClassifierLib.efficientnet_lite import EfficientNetLite0, from_training_keys
    from UltraScanClassifierLib.images import check_image
    from UltraScanClassifierLib.inference import preprocess
    shipped = UltrasoundClassifier.load(LITE, device="cpu").model       # trained weights: live networks
    members = list(getattr(shipped, "members", [shipped]))
    x = torch.cat([preprocess(check_image(read_image(SAMPLES / f)[0]), 288) for f in
                   ("busi_benign_3.png", "busi_malignant_12.png", "busi_normal_5.png")]).double()
    ref_logits = []
    for m in members:
        ref = EfficientNetLite(0, num_classes=3, pretrained=False)
        ref.load_state_dict(lite0_training_keys(m.state_dict()), strict=True)
        run = EfficientNetLite0(num_classes=3)
        run.load_state_dict(from_training_keys(ref.state_dict()), strict=True)
        ref, run = ref.eval().double(), run.eval().double()
        with torch.no_grad():
            a, b = ref(x), run(x)
            fa, fb = ref.forward_features(x), run.forward_features(x)
        assert a.shape == (3, 3) and float((a[0] - a[1]).abs().max()) > 0.1   # outputs depend on the input
        assert torch.allclose(a, b, rtol=0, atol=1e-10) and torch.allclose(fa, fb, rtol=0, atol=1e-10)
        ref_logits.append(a)
    assert len(members) == shipped_members()
    with torch.no_grad():
        ens = shipped.double()(x)
    assert torch.allclose(ens, torch.stack(ref_logits).mean(0), rtol=0, atol=1e-10)
    assert float((ref_logits[0] - ref_logits[-1]).abs().max()) > 0.05   # the members are different networks


def shipped_members():
    """How many networks the shipped Lite0's manifest says it averages (1 where it names none)."""
    man = json.loads((MODELS_DIR / LITE / "model.json").read_text())
    return int(man["config"].get("members", 1))


def test_training_key_renaming_covers_every_block():
    from UltraScanClassifierLib.efficientnet_lite import REPEATS, EfficientNetLite0, from_training_keys
    run_keys = set(EfficientNetLite0().state_dict())
    flat = lite0_training_keys(dict.fromkeys(run_keys, 0))
    assert sum(REPEATS) == 16 and len(flat) == len(run_keys) and set(from_training_keys(flat)) == run_keys


def test_shipped_lite0_verifies_loads_by_name_and_averages_mirrors():
    assert UltrasoundClassifier.model_names() == [LITE, "ultrascannet_busi"]   # the more accurate model is the default
    clf = UltrasoundClassifier.load(LITE, device="cpu")
    man = clf.record.manifest
    assert man["architecture"] == "EfficientNet-Lite0" and clf.tta_flip and 0.5 < clf.temperature < 2
    assert all(f["bytes"] <= 40 * 2**20 for f in man["files"]) and man["dtype"] == "float16"
    assert "87%" in clf.disclaimer                          # its own cross-validated accuracy, not UltraScanNet's
    img = read_image(SAMPLES / "busi_malignant_12.png")[0]
    r = clf.classify(img, heatmap=True)
    assert r.heatmap.shape == img.shape[:2] and float(r.heatmap.max()) == pytest.approx(1.0)
    from UltraScanClassifierLib.images import check_image
    from UltraScanClassifierLib.inference import preprocess
    x = preprocess(check_image(img), clf.input_size)
    with torch.no_grad():
        plain, mirrored = clf.model(x).numpy()[0], clf.model(x.flip(3)).numpy()[0]
    assert np.allclose(r.logits, (plain + mirrored) / 2, atol=1e-4)
    assert not np.allclose(plain, mirrored, atol=1e-3)      # the mirror does change the logits
    no_heat = clf.classify(img, heatmap=False)
    assert np.allclose(no_heat.logits, r.logits, atol=1e-4)


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(WeightsError, match="no shipped model named 'nope'.*ultrascannet_busi"):
        UltrasoundClassifier.load("nope", device="cpu")


def test_cli_model_flag(capsys):
    from UltraScanClassifierLib.cli import main
    img = str(SAMPLES / "busi_benign_3.png")
    assert main([img, "--model", "ultrascannet_busi", "--json", "--device", "cpu"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res[0]["weights"].startswith("ultrascannet_busi@")
    assert main([img, "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["weights"].startswith(LITE + "@")   # the default
    with pytest.raises(SystemExit) as e:
        main([img, "--model", LITE, "--weights", str(MODELS_DIR / LITE)])
    assert e.value.code == 2 and "not both" in capsys.readouterr().err


def test_mirrored_heatmap_in_one_forward_equals_two_pass():
    """With mirror averaging the heatmap comes from the same forward that classifies (the target class taken
    from the averaged logits inside grad_cam, the map in closed form): the same logits and heatmap as
    classifying first and explaining by Grad-CAM's backward in a second forward, on an image whose mirror
    changes the logits."""
    import torch.nn.functional as F
    from UltraScanClassifierLib.images import check_image
    from UltraScanClassifierLib.inference import grad_cam, preprocess
    clf = UltrasoundClassifier.load(LITE, device="cpu")
    clf.heatmap_size = None                   # the heatmap from the classifying forward (models without the key)
    img = read_image(SAMPLES / "busi_malignant_12.png")[0]
    r = clf.classify(img, heatmap=True)
    x = preprocess(check_image(img), clf.input_size)
    x2 = torch.cat([x, x.flip(3)])
    with torch.no_grad():
        lg = clf.model(x2).float()
    t = ((lg[:1] + lg[1:]) / 2).argmax(1)
    logits, cam = grad_cam(clf.model, x2, torch.cat([t, t]), analytic=False)   # the backward, as published
    cam = (cam[:1] + cam[1:].flip(3)) / 2
    h = F.interpolate(cam.float(), size=img.shape[:2], mode="bilinear", align_corners=False)[0, 0]
    h = (h / h.max()).numpy()
    assert np.allclose(r.logits, ((logits[:1] + logits[1:]) / 2).numpy()[0], atol=1e-4)
    assert np.allclose(r.heatmap, h, atol=1e-4) and r.label == clf.classes[int(t)]


def test_heatmap_from_the_finer_forward_explains_the_class_shown():
    """The shipped Lite0's manifest asks for its heatmap from a second forward at 320 x 320 (the method that
    pointed at the lesion most often over five folds): the map is Grad-CAM by backward on the 320 input for
    the class of the mirror-averaged logits of the classifying forward (288 x 288), on a 10 x 10 grid instead
    of that forward's 9 x 9; the logits and label are those of classifying without a heatmap; and the map is
    not the classifying forward's."""
    import torch.nn.functional as F
    from UltraScanClassifierLib.images import check_image
    from UltraScanClassifierLib.inference import grad_cam, preprocess
    clf = UltrasoundClassifier.load(LITE, device="cpu")
    assert clf.record.manifest["input"]["heatmap_size"] == 320 and clf.heatmap_size == 320
    for name in ("busi_malignant_12.png", "busi_benign_3.png"):
        img = read_image(SAMPLES / name)[0]
        r, plain = clf.classify(img, heatmap=True), clf.classify(img, heatmap=False)
        assert np.allclose(r.logits, plain.logits, atol=1e-5) and r.label == plain.label
        _, cam = grad_cam(clf.model, preprocess(check_image(img), 320), torch.tensor([clf.classes.index(r.label)]),
                          analytic=False)
        assert cam.shape[-2:] == (10, 10)
        h = F.interpolate(cam.float(), size=img.shape[:2], mode="bilinear", align_corners=False)[0, 0]
        h = (h / h.max()).numpy()
        assert r.heatmap.shape == img.shape[:2] and np.allclose(r.heatmap, h, atol=1e-4)
        clf.heatmap_size = None
        coarse = clf.classify(img, heatmap=True).heatmap
        clf.heatmap_size = 320
        assert float(np.abs(coarse - r.heatmap).max()) > 0.1
    # batches take the same path: the same maps as one by one
    imgs = [check_image(read_image(SAMPLES / n)[0]) for n in ("busi_malignant_12.png", "busi_benign_3.png")]
    batch = clf.classify_batch(imgs, heatmap=True)
    for b, i in zip(batch, imgs):
        assert np.allclose(b.heatmap, clf.classify(i, heatmap=True).heatmap, atol=1e-4)


@pytest.mark.parametrize("name", [LITE, "ultrascannet_busi"])
def test_closed_form_cam_equals_the_backward_in_float64(name):
    """Both shipped heads are a global mean and linear maps (UltraScanNet: eval BatchNorm first), so the
    closed-form map from cam_weights() is Grad-CAM exactly: equal to the backward's map in float64 for the
    predicted class and for every other class, on real images; in training mode there is no closed form."""
    from UltraScanClassifierLib.images import check_image
    from UltraScanClassifierLib.inference import grad_cam, preprocess
    model = UltrasoundClassifier.load(name, device="cpu").model.double().eval()
    x = torch.cat([preprocess(check_image(read_image(p)[0])) for p in sorted(SAMPLES.glob("busi_*.png"))]).double()
    assert x.shape[0] >= 3
    for target in (None, torch.tensor([0, 1, 2][:x.shape[0]] + [1] * (x.shape[0] - 3))):
        lg_a, cam_a = grad_cam(model, x, target)
        lg_b, cam_b = grad_cam(model, x, target, analytic=False)
        assert cam_a.shape == cam_b.shape and float(cam_b.amax()) > 0
        assert torch.allclose(lg_a.double(), lg_b.double(), atol=1e-10)
        assert torch.allclose(cam_a, cam_b, rtol=1e-9, atol=1e-12 * float(cam_b.amax()))
    model.train()
    assert model.cam_weights() is None


def test_cpu_runs_lite0_frozen_with_the_eager_result():
    """On the CPU the default model's feature extractor runs frozen by TorchScript (built at the first call):
    the label, probabilities and heatmap equal the eager network's, with and without the heatmap."""
    from UltraScanClassifierLib.images import check_image
    img = check_image(read_image(SAMPLES / "busi_malignant_12.png")[0])
    fast = UltrasoundClassifier.load(LITE, device="cpu")
    eager = UltrasoundClassifier.load(LITE, device="cpu")
    eager.cpu_freeze = False
    a, b = fast.classify(img, heatmap=True), eager.classify(img, heatmap=True)
    # one frozen extractor per input shape: the mirror pair at the classifying size and the heatmap's image at 320
    assert (fast.input_size, fast.heatmap_size) == (288, 320)
    assert sorted(fast._frozen) == [(1, 3, 320, 320), (2, 3, 288, 288)] and not eager._frozen
    assert all(isinstance(f, torch.jit.ScriptModule) for f in fast._frozen.values())
    assert a.label == b.label and np.allclose(a.logits, b.logits, atol=1e-4)
    assert np.allclose(a.heatmap, b.heatmap, atol=1e-4)
    assert np.allclose(fast.classify(img, heatmap=False).logits, b.logits, atol=1e-4)
    assert UltrasoundClassifier.load("ultrascannet_busi", device="cpu").cpu_freeze is False   # not traced


def test_frozen_features_refused_where_they_differ_from_eager():
    """A feature extractor whose traced graph does not reproduce eager (here: random) is not frozen."""
    from UltraScanClassifierLib.inference import frozen_cpu_features

    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward_features(self, x):
            return self.conv(x)

    class Noisy(Plain):
        def forward_features(self, x):
            return self.conv(x) + torch.randn_like(self.conv(x))

    x = torch.randn(2, 3, 16, 16)
    assert frozen_cpu_features(Noisy().eval(), x) is None
    assert frozen_cpu_features(Plain().eval(), x) is not None
