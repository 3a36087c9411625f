"""SRMA-Mamba as published: key-for-key state dict, golden outputs, gradients."""
import json

import numpy as np
import pytest
import torch

from conftest import SRMA_FIX, need
from SRMASegmenterLib.model import SRMAMamba


def test_official_config_matches_published_state_dict():
    shapes = json.loads(need(SRMA_FIX / "state_dict_shapes_dims48.json").read_text())
    sd = SRMAMamba().state_dict()
    assert list(sd) == list(shapes) or set(sd) == set(shapes)
    assert {k: list(v.shape) for k, v in sd.items()} == shapes
    assert sum(p.numel() for p in SRMAMamba().parameters()) == 18_300_244


def test_golden_outputs_tiny():
    from safetensors.torch import load_file
    model = SRMAMamba(dims=8).eval()
    model.load_state_dict(load_file(str(need(SRMA_FIX / "tiny_weights.safetensors"))), strict=True)
    io = np.load(SRMA_FIX / "tiny_io.npz")
    with torch.no_grad():
        outs = model(torch.from_numpy(io["input"]))
    assert len(outs) == 4
    for i, o in enumerate(outs, 1):
        ref = torch.from_numpy(io[f"out{i}"])
        assert o.shape == ref.shape
        err = float((o - ref).norm() / ref.norm())
        assert err < 1e-4, f"out{i}: relative error {err:.2e}"


def test_forward_backward_cpu():
    torch.manual_seed(0)
    model = SRMAMamba(dims=8).train()
    x = torch.randn(1, 1, 32, 32, 16)
    outs = model(x)
    loss = sum(o.square().mean() for o in outs)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.encoder.layers[0].blocks[1].op.sh.A_logs.grad.abs().sum() > 0  # the scan is differentiated


def test_rejects_sizes_not_divisible_by_16():
    with pytest.raises(ValueError, match="divisible by 16"):
        SRMAMamba(dims=8)(torch.randn(1, 1, 32, 30, 16))
