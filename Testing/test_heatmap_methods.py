"""The heatmap-method comparison (training/ultrascan/heatmap_methods.py) on the CPU: its maps and its test."""
import numpy as np
import pytest
import torch


def test_mcnemar_exact():
    from training.ultrascan.heatmap_methods import mcnemar_p
    a = np.array([1, 1, 1, 1, 1, 0, 0])
    b = np.array([0, 0, 0, 0, 0, 0, 0])
    assert mcnemar_p(a, b) == pytest.approx(2 / 32)           # 5 discordant pairs, all one way
    assert mcnemar_p(a, a) == 1.0
    assert mcnemar_p(np.array([1, 0]), np.array([0, 1])) == 1.0


def test_every_method_gives_a_normalised_map_and_the_mirror_average_is_symmetric():
    pytest.importorskip("efficientnet_lite_pytorch", reason="pip install '.[train]' for the teacher")
    from training.ultrascan.baselines import EfficientNetLite
    from training.ultrascan.heatmap_methods import _blur, heatmaps
    torch.manual_seed(0)
    model = EfficientNetLite(0, 3, pretrained=False).eval()
    img = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    img[1] = torch.cat([img[1, :, :, :32], img[1, :, :, :32].flip(2)], dim=2)   # image 1 is left-right symmetric
    with torch.no_grad():
        maps = heatmaps(model, img, size=64, sizes=(96,))
    assert {"cam", "cam_flip", "cam@96", "gradcam14", "cam*g14", "cam+blur", "gradcam14+blur"} <= set(maps)
    for k, h in maps.items():
        assert h.shape == (2, 64, 64), k
        assert np.isfinite(h).all() and h.min() >= 0 and h.max() <= 1 + 1e-6, k
    # a symmetric image's mirror is itself: averaging its map with the flipped-back mirror map changes nothing
    # unless the flip-back is wrong, and then the map is symmetric only if the map was
    np.testing.assert_allclose(maps["cam_flip"][1], (maps["cam"][1] + maps["cam"][1][:, ::-1]) / 2
                               / max(1e-12, ((maps["cam"][1] + maps["cam"][1][:, ::-1]) / 2).max()), atol=1e-5)
    np.testing.assert_allclose(maps["cam_flip"][1], maps["cam_flip"][1][:, ::-1], atol=1e-5)
    # the blur keeps a constant map and spreads a point
    one = torch.zeros(1, 33, 33)
    one[0, 16, 16] = 1.0
    b = _blur(one, sigma=3.0)
    assert float(b.sum()) == pytest.approx(1.0, rel=1e-4) and float(b[0, 16, 16]) < 0.05
    assert torch.allclose(_blur(torch.ones(1, 20, 20)), torch.ones(1, 20, 20), atol=1e-5)


def test_runs_joined_by_plus_load_as_their_seed_ensemble(tmp_path):
    """`A+B` (two runs of one fold) loads as ensemble.MemberMean of the two trained networks; runs of
    different folds are refused."""
    pytest.importorskip("efficientnet_lite_pytorch", reason="pip install '.[train]' for the teacher")
    import json
    from safetensors.torch import save_file
    from training.ultrascan.baselines import EfficientNetLite
    from training.ultrascan.heatmap_methods import load_run
    from UltraScanClassifierLib.ensemble import MemberMean
    runs = []
    for seed, fold in ((1, 0), (2, 0), (3, 1)):
        torch.manual_seed(seed)
        d = tmp_path / f"s{seed}"
        d.mkdir()
        save_file({k: v.contiguous() for k, v in EfficientNetLite(0, 3, pretrained=False).state_dict().items()},
                  str(d / "final.safetensors"))
        (d / "summary.json").write_text(json.dumps({"args": {"model": "efficientnet_lite0", "split": "s.json",
                                                             "fold": fold}}))
        runs.append(d)
    model, args = load_run(f"{runs[0]}+{runs[1]}")
    assert isinstance(model, MemberMean) and not model.training and args["fold"] == 0
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = (load_run(runs[0])[0](x) + load_run(runs[1])[0](x)) / 2
        assert torch.allclose(model(x), want, atol=1e-5)
    with pytest.raises(ValueError, match="one fold"):
        load_run(f"{runs[0]}+{runs[2]}")


def test_classify_size_explains_the_runtime_class():
    """--classify-size C: the finer cam@S maps explain the class of the mirror-averaged logits at C x C (what
    the runtime shows for a manifest with input.size C), not the plain forward's class at the trained size."""
    pytest.importorskip("efficientnet_lite_pytorch", reason="pip install '.[train]' for the teacher")
    from training.ultrascan.augment import eval_batch
    from training.ultrascan.baselines import EfficientNetLite
    from training.ultrascan.heatmap_methods import _norm, _up, heatmaps
    from UltraScanClassifierLib.inference import grad_cam
    from conftest import trained_looking
    torch.manual_seed(3)
    model = trained_looking(EfficientNetLite(0, 3, pretrained=False), head_std=0.5).eval()
    img = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        model.net._fc.bias -= model(eval_batch(img, 64)).mean(0)    # classes near a tie: the size decides
        plain = heatmaps(model, img, size=64, sizes=(96,))["cam@96"]
        shown = heatmaps(model, img, size=64, sizes=(96,), classify_size=80)["cam@96"]
        xc = eval_batch(img, 80)
        lc = model(torch.cat([xc, xc.flip(3)]))
        tc = ((lc[:6] + lc[6:]) / 2).argmax(1)
        t64 = model(eval_batch(img, 64)).argmax(1)
        _, cam = grad_cam(model, eval_batch(img, 96), tc)
    assert (tc != t64).any()                       # the two classes differ somewhere: the test can tell them apart
    np.testing.assert_allclose(shown, _norm(_up(cam, img.shape[-2:])).numpy(), atol=1e-5)
    differ = (tc != t64).numpy()
    assert np.abs(shown[differ] - plain[differ]).max() > 1e-3 and np.allclose(shown[~differ], plain[~differ], atol=1e-6)
