"""UltraScanNet as published: key-for-key state dict, golden outputs of the authors' code, gradients,
any input size; the baselines' architectures."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED, need
from UltraScanClassifierLib.model import UltraScanNet, UltraScanNetConfig, count_parameters, mixer_kind

FIX = SHARED / "fixtures" / "ultrascannet-official"
TINY = dict(dim=8, in_dim=8, num_heads=(1, 2, 2, 4))


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_published_config_matches_state_dict():
    shapes = json.loads(need(FIX / "state_dict_shapes_default.json").read_text())
    sd = UltraScanNet().state_dict()
    assert {k: list(v.shape) for k, v in sd.items()} == shapes
    assert len(sd) == 368
    assert count_parameters(UltraScanNet()) == 37_200_451


def test_mixer_layout_as_published():
    assert [mixer_kind(i, 11) for i in range(11)] == ["scan"] * 4 + ["conv"] + ["attention"] * 6
    assert [mixer_kind(i, 4) for i in range(4)] == ["scan"] * 2 + ["attention"] * 2


def _tiny_model(backend=None):
    from safetensors.torch import load_file
    m = UltraScanNet(UltraScanNetConfig(**TINY, scan_backend=backend)).eval()
    m.load_state_dict(load_file(str(need(FIX / "tiny_weights.safetensors"))), strict=True)
    return m


@pytest.mark.parametrize("backend", ["torch", "ref"])
def test_golden_outputs_tiny(backend):
    """Every stage of the authors' code reproduced from the same input and weights, rel. error < 1e-4."""
    io = np.load(need(FIX / "tiny_io.npz"))
    m = _tiny_model(backend)
    with torch.no_grad():
        fmap, stages = m.forward_features(torch.from_numpy(io["input"]), return_stages=True)
        logits = m.forward_head(fmap)
    for name, got in zip(["stem", "level0", "level1", "level2", "level3"], stages):
        assert got.shape == io[name].shape, name
        assert _rel(got, io[name]) < 1e-4, name
    assert _rel(logits, io["logits"]) < 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (Triton scan)")
def test_golden_outputs_tiny_triton_gpu():
    io = np.load(need(FIX / "tiny_io.npz"))
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    m = _tiny_model("triton").cuda()
    with torch.no_grad():
        logits = m(torch.from_numpy(io["input"]).cuda()).cpu()
    assert _rel(logits, io["logits"]) < 1e-4


def test_forward_backward_cpu_all_parameters_get_gradients():
    torch.manual_seed(0)
    m = UltraScanNet(UltraScanNetConfig(**TINY)).train()
    x = torch.randn(2, 3, 96, 128)
    loss = torch.nn.functional.cross_entropy(m(x), torch.tensor([0, 2]))
    loss.backward()
    assert torch.isfinite(loss)
    unused = {"temb"}          # published parameter the published forward never reads
    for n, p in m.named_parameters():
        if n.split(".")[-1] in unused:
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
        if "A_log" in n or "dt_proj" in n or "x_proj" in n:
            assert p.grad.abs().sum() > 0, f"no gradient reaches {n} through the scan"


@pytest.mark.parametrize("hw", [(224, 224), (256, 320), (97, 161)])
def test_any_input_size(hw):
    m = UltraScanNet(UltraScanNetConfig(**TINY)).eval()
    with torch.no_grad():
        out = m(torch.randn(1, 3, *hw))
    assert out.shape == (1, 3) and torch.isfinite(out).all()


def test_scan_goes_through_the_runtime(monkeypatch):
    """The UltraScanUnit computes no scan itself: replacing the runtime's entry point changes the output."""
    import UltraScanClassifierLib.model as mm
    m = UltraScanNet(UltraScanNetConfig(**TINY)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = m(x)
    calls = []

    def fake(u, *a, **k):
        calls.append(u.shape)
        return torch.zeros_like(u)
    monkeypatch.setattr(mm, "selective_scan_fn", fake)
    with torch.no_grad():
        out = m(x)
    assert len(calls) == 6                     # 4 UltraScanUnits in stage 2, 2 in stage 3
    assert not torch.allclose(out, ref)


def test_baselines_match_torchvision_parameter_counts():
    from training.ultrascan.baselines import build_baseline
    assert count_parameters(build_baseline("resnet50", 1000)) == 25_557_032      # torchvision resnet50()
    assert count_parameters(build_baseline("convnext_tiny", 1000)) == 28_589_128  # torchvision convnext_tiny()
    for name in ("resnet50", "convnext_tiny"):
        m = build_baseline(name, 3).eval()
        with torch.no_grad():
            assert m(torch.randn(1, 3, 64, 64)).shape == (1, 3)
