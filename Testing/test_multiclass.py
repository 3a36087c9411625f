"""The 5-class liver model: configuration, GPU-style batched augmentation, training, organs in the logic
and the CLI (terminology, labels, geometry)."""
import json

import numpy as np
import pytest
import torch

from conftest import CHAOS, need

CHAOS5 = ("background", "liver", "right_kidney", "left_kidney", "spleen")


def _tiny5(dims=8):
    from SRMASegmenterLib.model import SRMAConfig, SRMAMamba
    torch.manual_seed(0)
    return SRMAMamba(SRMAConfig(dims=dims, out_chans=5, class_names=CHAOS5))


def test_multiclass_model_shapes_and_published_keys():
    from SRMASegmenterLib.model import SRMAConfig, SRMAMamba
    pub, five = SRMAMamba(SRMAConfig(dims=8)), _tiny5()
    assert list(pub.state_dict()) == list(five.state_dict())          # same parameter names
    diff = [k for k, v in pub.state_dict().items() if v.shape != five.state_dict()[k].shape]
    assert diff and all(k.startswith("out_conv1.") or ".ra_conv3." in k for k in diff), diff
    outs = five.eval()(torch.randn(1, 1, 32, 32, 16))
    assert len(outs) == 4 and all(o.shape == (1, 5, 32, 32, 16) for o in outs)
    assert pub.eval()(torch.randn(1, 1, 32, 32, 16))[0].shape == (1, 1, 32, 32, 16)


def test_config_from_old_manifest_and_mismatch():
    from SRMASegmenterLib.model import SRMAConfig
    old = {"in_chans": 1, "out_chans": 1, "dims": 48, "depths": [1, 1, 1, 1], "scan_backend": None}
    cfg = SRMAConfig.from_dict(old)
    assert cfg.out_chans == 1 and cfg.class_names == ("liver",) and cfg.depths == (1, 1, 1, 1)
    with pytest.raises(ValueError, match="class_names"):
        SRMAConfig.from_dict({"out_chans": 5, "class_names": ["background", "liver"]})


def test_refinement_head_starts_as_the_identity_and_works_on_the_input_grid():
    """`refine_channels` (not in the published model) adds FullResRefine: only `refine.*` keys beside the
    model's own; freshly built it returns the unrefined model's outputs exactly (its last convolution is
    zero), so weights trained without it continue unchanged; once its output layer is non-zero it changes
    the finest output only, voxel by voxel on the input grid ), and gradients reach it."""
    from SRMASegmenterLib.model import SRMAConfig, SRMAMamba
    plain = _tiny5().eval()
    torch.manual_seed(1)
    ref = SRMAMamba(SRMAConfig(dims=8, out_chans=5, class_names=CHAOS5, refine_channels=4)).eval()
    extra = [k for k in ref.state_dict() if k not in plain.state_dict()]
    assert extra and all(k.startswith("refine.") for k in extra)
    assert [k for k in ref.state_dict() if not k.startswith("refine.")] == list(plain.state_dict())
    ref.load_state_dict({**ref.state_dict(), **plain.state_dict()})
    x = torch.randn(1, 1, 32, 32, 16)
    with torch.no_grad():
        a, b = plain(x), ref(x)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    torch.nn.init.normal_(ref.refine.out.weight, std=0.5)
    with torch.no_grad():
        b = ref(x)
    assert not torch.allclose(a[0], b[0]) and all(torch.equal(p, q) for p, q in zip(a[1:], b[1:]))
    ref.train()
    loss = ref(x)[0].square().mean()
    loss.backward()
    assert ref.refine.conv1.weight.grad.abs().sum() > 0
    assert SRMAConfig.from_dict(ref.cfg.to_dict()).refine_channels == 4
    assert SRMAConfig.from_dict({"out_chans": 1}).refine_channels == 0          # old manifests: no head


def test_augment_identity_when_everything_is_off():
    """Patch = canvas, no transform: the sampling grid must hit voxel centres exactly."""
    from training.srma.augment3d import Augment3DConfig, augment_batch
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 32, 32, 16)
    y = torch.randint(0, 5, (2, 32, 32, 16))
    cfg = Augment3DConfig.none(patch=(32, 32, 16), spacing=(2.5, 2.5, 7.7), fg_fraction=0.0)
    xa, ya = augment_batch(x, y, 5, cfg, g)
    assert torch.allclose(xa, x, atol=1e-5)
    assert torch.equal(ya, y)


def test_augment_rotation_is_rigid_in_mm():
    """A 90 degree in-plane rotation of a square patch is a transpose-and-flip of the voxels; labels follow."""
    from training.srma.augment3d import Augment3DConfig, augment_batch
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 16, 16, 16)
    y = (x[:, 0] > 0).long()
    cfg = Augment3DConfig.none(patch=(16, 16, 16), spacing=(2.0, 2.0, 2.0), fg_fraction=0.0, p_rotate=1.0,
                               rot_inplane_deg=90.0, rot_outplane_deg=0.0)
    import training.srma.augment3d as A
    orig = A._u
    A._u = lambda n, lo, hi, g_, dev: torch.full((n,), float(hi))        # always the maximum angle
    try:
        xa, ya = augment_batch(x, y, 2, cfg, g)
    finally:
        A._u = orig
    cands = [torch.rot90(x, k, dims=(2, 3)) for k in (1, 3)]
    assert any(torch.allclose(xa, c, atol=1e-4) for c in cands)
    assert torch.equal(ya, (xa[:, 0] > 0).long())


def test_augment_keeps_labels_aligned_with_the_image():
    """Under the full recipe the label of every voxel is still the one its intensity was drawn from."""
    from training.srma.augment3d import Augment3DConfig, augment_batch, sampling_grid
    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 3, (3, 24, 24, 12))
    x = y[:, None].float() * 10.0                                           # intensity = 10 x label
    cfg = Augment3DConfig(patch=(16, 16, 8), spacing=(2.5, 2.5, 7.7), p_noise=0, p_blur=0, p_brightness=0,
                          p_contrast=0, p_lowres=0, p_gamma=0, p_gamma_invert=0, fg_classes=(1, 2))
    grid, _ = sampling_grid(y, cfg, torch.Generator().manual_seed(3))
    xs = torch.nn.functional.grid_sample(x, grid, mode="nearest", align_corners=False)
    ys = torch.nn.functional.grid_sample(y[:, None].float(), grid, mode="nearest", align_corners=False)
    assert torch.equal(xs, ys * 10.0)
    xa, ya = augment_batch(x, y, 3, cfg, g)
    assert xa.shape == (3, 1, 16, 16, 8) and ya.shape == (3, 16, 16, 8)


def test_organ_contrast_darkens_liver_and_spleen_only():
    """Organ contrast scales (value - background) inside liver and spleen by the drawn factor, leaves the
    kidneys and the rest of the patch untouched, and keeps the labels."""
    from training.srma.augment3d import Augment3DConfig, augment_batch
    y = torch.zeros(2, 32, 32, 8, dtype=torch.long)
    y[:, 2:14, 2:14] = 1                  # liver
    y[:, 18:24, 2:8] = 2                  # right kidney
    y[:, 18:30, 18:30] = 4                # spleen
    x = torch.where(y > 0, 5.0, 1.0)[:, None] + 0.0
    x[:, :, 0, 0, 0] = -1.0               # background level (the sample minimum)
    cfg = Augment3DConfig.none(patch=(32, 32, 8), spacing=(2.5, 2.5, 7.7), fg_fraction=0.0, p_organ=1.0,
                               organ_scale=(0.2, 0.2), organ_jitter=0.0)
    xa, ya = augment_batch(x, y, 5, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(ya, y)
    inner_liver, inner_spleen = xa[:, 0, 5:11, 5:11], xa[:, 0, 21:27, 21:27]
    assert torch.allclose(inner_liver, torch.full_like(inner_liver, -1 + 6 * 0.2), atol=1e-3)
    assert torch.allclose(inner_spleen, torch.full_like(inner_spleen, -1 + 6 * 0.2), atol=1e-3)
    assert torch.allclose(xa[:, 0, 19:23, 3:7], torch.full((2, 4, 4, 8), 5.0))     # kidney untouched
    assert torch.allclose(xa[:, 0, 2:14, 20:28], torch.full((2, 12, 8, 8), 1.0))   # far from the organs
    rim = xa[:, 0, 14, 5:11]                                                        # blended, no step edge
    assert bool(((rim > 0.2) & (rim < 1.0)).all())
    off = Augment3DConfig.none(patch=(32, 32, 8), spacing=(2.5, 2.5, 7.7), fg_fraction=0.0)
    assert torch.allclose(augment_batch(x, y, 5, off, torch.Generator().manual_seed(0))[0], x, atol=1e-5)


def test_contrast_flags_reach_the_augmentation_and_compress_about_the_mean():
    """--contrast / --p-contrast set nnU-Net's contrast transform; a factor of 0.4 brings every voxel 0.4 as
    far from the patch mean (within the patch's range), which is what CHAOS case_36 looks like."""
    from training.srma.augment3d import Augment3DConfig, intensity
    from training.srma.train import parse_args
    a = parse_args(["--data", "x", "--contrast", "0.75", "1.25", "--p-contrast", "0.15"])   # nnU-Net's
    assert a.contrast == [0.75, 1.25] and a.p_contrast == 0.15
    d = parse_args(["--data", "x"])
    assert d.contrast == [0.35, 1.5] and d.p_contrast == 0.3 and d.steps == 8100   # chosen by the 5-fold CV
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 8, 8, 4)
    off = Augment3DConfig.none(p_contrast=1.0, contrast=(0.4, 0.4))
    y = intensity(x, off, g)
    m = x.mean(dim=(2, 3, 4), keepdim=True)
    assert torch.allclose(y, (x - m) * 0.4 + m, atol=1e-6)
    assert torch.equal(intensity(x, Augment3DConfig.none(p_contrast=0.0, contrast=(0.4, 0.4)), g), x)


def test_resample_round_trip_keeps_shape_and_labels():
    from SRMASegmenterLib.inference import resample, resample_labels
    x = torch.zeros(1, 1, 64, 64, 8)
    x[..., 16:48, 16:48, 2:6] = 1
    lo = resample(x, (1.25, 1.25, 7.7), (2.5, 2.5, 7.7))
    assert lo.shape[2:] == (32, 32, 8)
    back = resample(lo, (2.5, 2.5, 7.7), (1.25, 1.25, 7.7), size=(64, 64, 8))
    m = back[0, 0] > 0.5
    t = x[0, 0] > 0.5
    assert 2 * (m & t).sum() / (m.sum() + t.sum()) > 0.97
    lab = torch.zeros(64, 64, 8, dtype=torch.uint8)
    lab[10:30, 10:30] = 1
    lab[40:60, 40:60] = 4
    lab2 = resample_labels(lab, (1.25, 1.25, 7.7), (2.5, 2.5, 7.7), 5)
    assert lab2.shape == (32, 32, 8) and set(torch.unique(lab2).tolist()) == {0, 1, 4}


def test_class_labels_match_numpy_argmax_including_ties():
    from SRMASegmenterLib.inference import class_labels

    g = torch.Generator().manual_seed(3)
    prob = torch.randint(0, 3, (5, 17, 9, 4), generator=g).float()      # many exact ties
    prob[:, 0, 0, 0] = 0.25                                            # a five-way tie -> class 0
    ref = np.argmax(prob.double().numpy(), axis=0)
    got = class_labels(prob)
    assert got.dtype == torch.uint8 and np.array_equal(got.numpy(), ref)
    one = torch.tensor([[[[0.2, 0.5, 0.7]]]])                          # one channel: P > threshold
    assert class_labels(one, 0.5).flatten().tolist() == [0, 0, 1]


def test_parse_organs():
    from SRMASegmenterLogic import parse_organs
    assert parse_organs("liver") == []
    assert parse_organs("liver,spleen,kidneys") == ["spleen", "right_kidney", "left_kidney"]
    assert parse_organs(["left_kidney", "Spleen"]) == ["spleen", "left_kidney"]
    with pytest.raises(ValueError, match="unknown organ 'pancreas'"):
        parse_organs("liver,pancreas")


def test_training_multiclass_loss_falls(tmp_path):
    """A tiny 5-class model trains a few steps on the CPU on real CHAOS volumes; its loss falls."""
    need(CHAOS)
    from training.srma.train import main
    out = tmp_path / "run"
    s = main(["--data", str(CHAOS), "--fold", "all", "--hold-out", "case_20", "--out", str(out),
              "--steps", "16", "--batch-size", "2", "--patch", "32", "32", "16", "--spacing", "10", "10", "15.4",
              "--dims", "8", "--aug", "none", "--lr", "3e-3", "--log-every", "4", "--device", "cpu", "--no-eval",
              "--export", str(tmp_path / "model")])
    rows = [l.split(",") for l in (out / "metrics.csv").read_text().splitlines()[1:]]
    losses = [float(r[1]) for r in rows]
    assert len(losses) == 4 and losses[-1] < losses[0] * 0.9, losses
    assert s["steps_done"] == 16
    man = json.loads((tmp_path / "model" / "model.json").read_text())
    assert man["config"]["out_chans"] == 5 and man["config"]["class_names"] == list(CHAOS5)
    assert man["train_spacing_ijk"] == [10.0, 10.0, 15.4] and man["inference"]["roi_size"] == [32, 32, 16]
    # resume continues at the saved step, not from zero
    s2 = main(["--data", str(CHAOS), "--fold", "all", "--hold-out", "case_20", "--out", str(out), "--steps", "20",
               "--batch-size", "2", "--patch", "32", "32", "16", "--spacing", "10", "10", "15.4", "--dims", "8",
               "--aug", "none", "--log-every", "4", "--device", "cpu", "--no-eval"])
    assert s2["steps_done"] == 20
    # the exported weights (no refinement head) continue into a model with one: it starts as the identity
    s3 = main(["--data", str(CHAOS), "--fold", "all", "--hold-out", "case_20", "--out", str(tmp_path / "refine"),
               "--steps", "8", "--batch-size", "2", "--patch", "32", "32", "16", "--spacing", "10", "10", "15.4",
               "--dims", "8", "--refine", "4", "--init", str(tmp_path / "model"), "--aug", "none", "--log-every", "4",
               "--device", "cpu", "--no-eval", "--export", str(tmp_path / "model_refine")])
    assert s3["steps_done"] == 8
    man = json.loads((tmp_path / "model_refine" / "model.json").read_text())
    assert man["config"]["refine_channels"] == 4
    from slicer_ai_common.weights import load_weights_file
    before, after = load_weights_file(tmp_path / "model")[0], load_weights_file(tmp_path / "model_refine")[0]
    assert not any(k.startswith("refine.") for k in before)
    assert float(after["refine.out.weight"].float().abs().sum()) > 0        # the head learnt from zero


@pytest.fixture(scope="module")
def tiny5_folder(tmp_path_factory):
    from slicer_ai_common.weights import save_sharded
    folder = tmp_path_factory.mktemp("m5") / "tiny5"
    m = _tiny5()
    save_sharded(m.state_dict(), folder, "tiny5", {"config": m.cfg.to_dict(), "train_spacing_ijk": [5.0, 5.0, 7.7],
                                                    "inference": {"roi_size": [64, 64, 32]}}, dtype="float32")
    return folder


def test_segmenter_gives_organs_on_the_input_grid(tiny5_folder, small_case):
    from SRMASegmenterLib.inference import LiverSegmenter
    arr, _, geom = small_case
    seg = LiverSegmenter.load(tiny5_folder, device="cpu")
    assert seg.organs == ["liver", "right_kidney", "left_kidney", "spleen"]
    assert seg.config.roi_size == (64, 64, 32) and seg.config.spacing == (5.0, 5.0, 7.7)
    mask, info = seg.predict(arr, geom, organs=["spleen", "left_kidney"])
    assert mask.shape == arr.shape
    assert set(info["organs"]) == {"spleen", "left_kidney"}
    assert all(m.shape == arr.shape for m in info["organs"].values())
    assert not (mask.astype(bool) & info["organs"]["spleen"].astype(bool)).any()   # one label per voxel
    with pytest.raises(ValueError, match="cannot segment pancreas"):
        seg.predict(arr, geom, organs=["pancreas"])


@pytest.mark.parametrize("direction", ["as read", "rotated in plane and flipped"])
def test_kept_probabilities_lie_on_the_input_grid_and_give_the_mask(tiny5_folder, small_case, direction):
    """predict(keep_probabilities=True): the class probabilities in the input's (k, j, i) layout, float32,
    summing to one, whose argmax -- largest component and holes filled as the module does -- is the mask it
    returned, also where the input's axes are permuted and flipped against the model's orientation."""
    from SRMASegmenterLib.inference import LiverSegmenter, postprocess
    from SRMASegmenterLib.volumes import Geometry
    arr, _, geom = small_case
    if direction != "as read":
        rot = np.array([[0.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])   # i <-> j, both flipped
        geom = Geometry(geom.spacing, geom.origin, rot @ np.asarray(geom.direction))
    seg = LiverSegmenter.load(tiny5_folder, device="cpu")
    mask, info = seg.predict(arr, geom, keep_probabilities=True)
    prob = info["probabilities"]
    assert prob.dtype == np.float32 and prob.shape == (5, *arr.shape)
    assert np.allclose(prob.sum(0), 1.0, atol=1e-4)
    liver = postprocess(prob.argmax(0) == CHAOS5.index("liver"))
    assert mask.any() and np.array_equal(liver, mask)
    _, plain = seg.predict(arr, geom)
    assert "probabilities" not in plain


def test_binary_model_refuses_organs(tiny_segmenter, small_case):
    arr, _, geom = small_case
    with pytest.raises(ValueError, match="cannot segment spleen"):
        tiny_segmenter.predict(arr, geom, organs=["spleen"])


def test_logic_adds_organ_segments_with_terminology(slicer_app, tiny5_folder, small_case):
    from slicer_ai_mrml.nodes import scalar_volume_from_array
    from SRMASegmenterLogic import ORGANS, SRMASegmenterLogic
    arr, _, geom = small_case
    scene = slicer_app.scene
    vol = scalar_volume_from_array(scene, arr, geom=geom, name="mri5")
    logic = SRMASegmenterLogic(scene, slicer_app.segmentations_logic)
    res = logic.run(vol, weights=str(tiny5_folder), device="cpu", organs="liver,spleen,kidneys")
    segm = res.segmentation_node.GetSegmentation()
    names = [segm.GetNthSegment(i).GetName() for i in range(segm.GetNumberOfSegments())]
    assert names == ["Liver", "Spleen", "Right kidney", "Left kidney"]
    for key in ("spleen", "right_kidney", "left_kidney"):
        s = segm.GetSegment(segm.GetSegmentIdBySegmentName(ORGANS[key][0]))
        import vtk
        tag = vtk.reference("")
        assert s.GetTag(s.GetTerminologyEntryTagName(), tag)
        assert str(tag) == ORGANS[key][1]
    assert "SCT^78961009^Spleen" in ORGANS["spleen"][1] and "SCT^24028007^Right" in ORGANS["right_kidney"][1]
    table = res.table_node.GetTable()
    keys = [table.GetValue(r, 0).ToString() for r in range(table.GetNumberOfRows())]
    assert "Spleen volume (mL)" in keys and "Left kidney volume (mL)" in keys
    for n in (vol, res.segmentation_node, res.table_node):
        scene.RemoveNode(n)


def test_cli_organs_labelmap_geometry_and_json(tiny5_folder, tmp_path):
    need(CHAOS)
    import SimpleITK as sitk
    from SRMASegmenterLogic.cli import main
    from SRMASegmenterLib.volumes import read_volume, write_volume
    arr, geom = read_volume(CHAOS / "case_20_t2.nii.gz")
    src = tmp_path / "in.nii.gz"
    write_volume(arr[:16, ::4, ::4].copy(), geom, src)
    out = tmp_path / "o" / "res.nii.gz"
    assert main([str(src), "-o", str(out), "--weights", str(tiny5_folder), "--device", "cpu",
                 "--organs", "liver,spleen,kidneys"]) == 0
    a, b = sitk.ReadImage(str(src)), sitk.ReadImage(str(out))
    assert a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing())
    assert np.allclose(a.GetOrigin(), b.GetOrigin()) and np.allclose(a.GetDirection(), b.GetDirection())
    assert set(np.unique(sitk.GetArrayFromImage(b))) <= {0, 1, 2, 3, 4}
    rep = json.loads((tmp_path / "o" / "res.json").read_text())
    assert set(rep["organ_volumes_ml"]) == {"spleen", "right_kidney", "left_kidney"}
    assert main([str(src), "-o", str(out), "--weights", str(tiny5_folder), "--organs", "liver,pancreas"]) == 2


def test_resolution_ceiling_is_exact_on_the_native_grid_and_falls_when_coarser():
    from training.srma.resolution_ceiling import liver_dice_through_grid

    z, y, x = np.mgrid[:24, :64, :64]
    labels = np.zeros((64, 64, 24), np.int64)
    ball = ((x.T - 31.3) ** 2 + (y.T - 30.7) ** 2) * 1.25 ** 2 + ((z.T - 11.6) * 5.0) ** 2 < 30.0 ** 2
    labels[ball] = 1
    labels[:6, :6, :] = 4                         # another organ: must not count as liver
    spacing = (1.25, 1.25, 5.0)
    same = liver_dice_through_grid(labels, spacing, spacing)
    fine_z = liver_dice_through_grid(labels, spacing, (5.0, 5.0, 5.0))
    coarse = liver_dice_through_grid(labels, spacing, (5.0, 5.0, 10.0))
    assert same == pytest.approx(1.0)
    assert 0.85 < coarse < fine_z < 1.0


def test_a_model_grid_finer_than_the_input_along_k_keeps_the_input_grid(tmp_path):
    """A model trained on a grid finer than the input's slices (e.g. 3.75 x 3.75 x 3.85 mm for 7.7 mm slices)
    sees the volume upsampled along k on its own grid, and its masks come back on the input's grid."""
    from slicer_ai_common.weights import save_sharded
    from SRMASegmenterLib.inference import LiverSegmenter
    from SRMASegmenterLib.volumes import Geometry
    m = _tiny5()
    save_sharded(m.state_dict(), tmp_path / "iso", "iso", {"config": m.cfg.to_dict(),
                 "train_spacing_ijk": [5.0, 5.0, 3.85], "inference": {"roi_size": [32, 32, 32]}}, dtype="float32")
    seg = LiverSegmenter.load(tmp_path / "iso", device="cpu")
    seen = []
    inner = seg.predict_probabilities
    seg.predict_probabilities = lambda x, *a, **k: (seen.append(tuple(x.shape)), inner(x, *a, **k))[1]
    rng = np.random.default_rng(0)
    arr = rng.normal(100, 20, (12, 40, 40)).astype(np.int16)           # (k, j, i): 12 slices of 7.7 mm
    mask, info = seg.predict(arr, Geometry((2.5, 2.5, 7.7), (0.0, 0.0, 0.0), np.eye(3)), organs=["spleen"])
    assert seen == [(1, 1, 20, 20, 24)]                                  # i, j halved; k doubled
    assert mask.shape == arr.shape and info["organs"]["spleen"].shape == arr.shape


def test_error_location_puts_a_one_voxel_rim_in_the_first_band_and_a_far_blob_in_none():
    """training/srma/error_location.py against cases worked by hand: a reference block predicted one voxel
    too wide in-plane (1.5 mm voxels) has every error within 3 mm of the surface, and fixing that band
    gives Dice 1; a false blob 20 mm away is outside every band up to 16 mm; distances use the spacing."""
    from training.srma.error_location import error_location
    t = np.zeros((6, 20, 20), bool)
    t[1:5, 5:15, 5:15] = True
    rim = t.copy()
    rim[1:5, 4:16, 4:16] = True
    r = error_location(rim, t, (7.7, 1.5, 1.5))
    assert r["fp"] == 4 * (144 - 100) and r["fn"] == 0
    assert r["err_within_3mm"] == 1.0 and r["dice_if_band_right_3mm"] == 1.0
    assert r["dice"] == pytest.approx(2 * 400 / (400 + 576))
    blob = t.copy()
    blob[2, 0:2, 0:2] = True                       # far from the block in-plane, on a liver slice
    far = error_location(blob, t, (7.7, 10.0, 10.0))   # 10 mm voxels: the blob is >= 30 mm away
    assert far["fp"] == 4 and far["err_within_16mm"] == 0.0 and far["dice_if_band_right_16mm"] == far["dice"]
    assert far["err_on_end_slices"] == 0.0 and far["err_off_liver_slices"] == 0.0
    off = t.copy()
    off[0, 5:15, 5:15] = True                      # a false slice above the liver
    assert error_location(off, t, (7.7, 1.5, 1.5))["err_off_liver_slices"] == 1.0


def test_decision_rule_bias_zero_is_the_argmax_and_a_positive_bias_draws_more_liver():
    """training.srma.decision_rule: bias 0 reproduces the module's argmax labels; a bias that admits the
    borderline voxels raises recall and costs precision; the liver stays one component."""
    from SRMASegmenterLib.inference import postprocess
    from training.srma.decision_rule import liver_with_bias, sweep
    rng = np.random.default_rng(0)
    truth = np.zeros((6, 12, 12), bool)
    truth[1:5, 2:10, 2:10] = True
    logits = rng.normal(0, 0.3, (5, *truth.shape))
    logits[1] += np.where(truth, 1.0, -1.0)
    logits[1][2, 2:10, 2:4] -= 1.3                      # a borderline strip of liver the argmax misses
    prob = np.exp(logits) / np.exp(logits).sum(0)
    assert np.array_equal(liver_with_bias(prob, 1, 0.0), postprocess(prob.argmax(0) == 1).astype(bool))
    rows = {r["bias"]: r for r in sweep(prob, truth, 1, (0.0, 0.3))}
    assert rows[0.3]["recall"] > rows[0.0]["recall"] and rows[0.3]["precision"] <= rows[0.0]["precision"]
    from scipy import ndimage
    assert ndimage.label(liver_with_bias(prob, 1, 0.3))[1] == 1
    one = prob[1:2]                                      # a one-channel model: P(liver) > 0.5 at bias 0
    assert np.array_equal(liver_with_bias(one, 1, 0.0), postprocess(one[0] > 0.5).astype(bool))


def test_shift_tta_shift_moves_by_whole_voxels_and_back():
    """training/srma/shift_tta.shift: output[i] = input[i - s] along each axis, the incoming edge repeated;
    shifting back restores every voxel but the s lost at the far edge; a zero shift is the identity."""
    import torch
    from training.srma.shift_tta import VIEWS, shift
    t = torch.arange(2 * 4 * 5 * 3, dtype=torch.float32).view(1, 2, 4, 5, 3)
    s = shift(t, (1, 0, 2))
    assert torch.equal(s[:, :, 1:, :, 2:], t[:, :, :-1, :, :-2])
    assert torch.equal(s[:, :, 0, :, 2:], t[:, :, 0, :, :-2]) and torch.equal(s[:, :, :, :, 0], s[:, :, :, :, 2])
    back = shift(s, (-1, 0, -2))
    assert torch.equal(back[:, :, :-1, :, :-2], t[:, :, :-1, :, :-2])
    assert torch.equal(shift(t, (0, 0, 0)), t)
    assert len(VIEWS["inplane"]) == 4 and VIEWS["k"] == [(0, 0, 0), (0, 0, 1)] and len(set(VIEWS["all"])) == 8 and VIEWS["none"] == [(0, 0, 0)]


def test_shift_tta_gamma_view_keeps_mean_and_sd_and_brightens_the_dark():
    """training/srma/shift_tta.gamma_view: gamma 1 is the image itself; another gamma keeps the image's mean
    and sd, keeps the order of intensities, and a gamma below 1 lifts the dark half relative to the bright."""
    import torch
    from training.srma.shift_tta import VIEWS, _view, gamma_view
    torch.manual_seed(0)
    x = torch.randn(1, 1, 6, 5, 4)
    assert gamma_view(x, 1.0) is x
    for g in (0.7, 1.5):
        y = gamma_view(x, g)
        assert abs(float(y.mean() - x.mean())) < 1e-5 and abs(float(y.std() - x.std())) < 1e-5
        assert torch.equal(torch.argsort(y.flatten()), torch.argsort(x.flatten()))
    lo = x <= x.median()
    assert float(gamma_view(x, 0.7)[lo].mean()) > float(x[lo].mean())
    assert _view((0, 0, 1)) == ((0, 0, 1), 1.0) and _view(VIEWS["gamma0.7"][0]) == ((0, 0, 0), 0.7)


def test_cases_by_id_keeps_the_order_asked_and_names_a_missing_case(tmp_path):
    """training.srma.data.cases_by_id (the analysis scripts' --cases): the CHAOS cases in the order given,
    image and labels paired; an unknown id is named in the error."""
    from training.srma.data import cases_by_id
    for n in ("03", "20"):
        for kind in ("t2", "labels"):
            (tmp_path / f"case_{n}_{kind}.nii.gz").write_bytes(b"")
    got = cases_by_id(tmp_path, ["case_20", "case_03"])
    assert [c["id"] for c in got] == ["case_20", "case_03"]
    assert got[0]["image"].endswith("case_20_t2.nii.gz") and got[0]["label"].endswith("case_20_labels.nii.gz")
    with pytest.raises(FileNotFoundError, match="no case case_99"):
        cases_by_id(tmp_path, ["case_03", "case_99"])


def test_bias_field_is_smooth_centred_and_as_strong_as_asked():
    """The probe's field: exp of a low-order polynomial, its log mean zero and max |log| the strength."""
    from training.srma.bias_field import smooth_bias_field
    f = smooth_bias_field((9, 20, 24), 0.4, seed=3)
    lf = np.log(f)
    assert f.shape == (9, 20, 24) and f.dtype == np.float64
    assert abs(lf.mean()) < 1e-12 and np.isclose(np.abs(lf).max(), 0.4)
    assert 0.6 < f.min() < 1.0 < f.max() < 1.5
    # smooth: neighbouring voxels differ by far less than the field's range; seeds give different fields
    assert np.abs(np.diff(lf, axis=2)).max() < 0.1 * (lf.max() - lf.min())
    assert not np.allclose(f, smooth_bias_field((9, 20, 24), 0.4, seed=4))
    assert np.allclose(smooth_bias_field((9, 20, 24), 0.0, seed=3), 1.0)


def test_bias_field_probe_scores_the_volume_as_it_is_and_under_each_field(tmp_path):
    """The probe runs the shipped model through the module's path on a CHAOS case, plain and under a field."""
    need(CHAOS)
    import csv

    from training.srma import bias_field
    out = tmp_path / "bias.csv"
    bias_field.main(["--data", str(CHAOS), "--cases", "case_20", "--strengths", "0.4", "--seeds", "1",
                     "--csv", str(out)])
    rows = list(csv.DictReader(open(out)))
    assert [(float(r["strength"]), int(r["seed"])) for r in rows] == [(0.0, -1), (0.4, 0)]
    assert float(rows[0]["field_min"]) == float(rows[0]["field_max"]) == 1.0
    assert np.isclose(np.log(float(rows[1]["field_max"])), 0.4) or np.isclose(np.log(float(rows[1]["field_min"])), -0.4)
    assert all(0.5 < float(r["dice"]) <= 1.0 for r in rows)
