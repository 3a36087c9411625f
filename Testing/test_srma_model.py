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


@pytest.mark.parametrize("in_size, factor", [((1, 1, 1), (2, 2, 2)), ((2, 3, 5), (3, 2, 4)), ((4, 4, 2), (16, 16, 16)),
                                             ((3, 1, 2), (2, 5, 1)), ((2, 2, 3), (8, 4, 16))])
def test_trilinear_upsample_backward_is_pytorchs_adjoint(in_size, factor):
    """The gathering backward of `_TrilinearUp` against PyTorch's own (scattering) one, float64, whole factors
    odd and even, inputs of one voxel (both ends clamp) and more; the forward is PyTorch's, bit for bit."""
    import torch.nn.functional as F
    from SRMASegmenterLib.model import _upsample
    torch.manual_seed(0)
    size = tuple(a * b for a, b in zip(in_size, factor))
    x = torch.randn(2, 3, *in_size, dtype=torch.float64, requires_grad=True)
    y = _upsample(x, size)
    assert type(y.grad_fn).__name__ == "_TrilinearUpBackward"
    ref_x = x.detach().clone().requires_grad_()
    ref = F.interpolate(ref_x, size=size, mode="trilinear", align_corners=False)
    assert torch.equal(y, ref)
    g = torch.randn_like(ref)
    (gx,), (gref,) = torch.autograd.grad(y, x, g), torch.autograd.grad(ref, ref_x, g)
    assert torch.allclose(gx, gref, rtol=0, atol=1e-12 * float(gref.abs().max()))


def test_trilinear_upsample_falls_back_where_the_factor_is_not_whole():
    from SRMASegmenterLib.model import _upsample
    x = torch.randn(1, 2, 3, 4, 5, requires_grad=True)
    assert type(_upsample(x, (6, 8, 10)).grad_fn).__name__ == "_TrilinearUpBackward"
    assert type(_upsample(x, (7, 8, 10)).grad_fn).__name__ != "_TrilinearUpBackward"
    with torch.no_grad():
        assert _upsample(x, (6, 8, 10)).grad_fn is None


def test_trilinear_upsample_backward_in_bf16_returns_bf16_closer_to_float64():
    """A bf16 input gets a bf16 gradient, accumulated in fp32: at least as close to the float64 adjoint as
    PyTorch's own bf16 backward."""
    import torch.nn.functional as F
    from SRMASegmenterLib.model import _upsample
    torch.manual_seed(1)
    x64 = torch.randn(1, 5, 4, 4, 3, dtype=torch.float64)
    size = (64, 64, 48)
    g64 = torch.randn(1, 5, *size, dtype=torch.float64)
    x = x64.bfloat16().requires_grad_()
    (gx,) = torch.autograd.grad(_upsample(x, size), x, g64.bfloat16())
    assert gx.dtype == torch.bfloat16
    xr = x64.requires_grad_()
    (gref,) = torch.autograd.grad(F.interpolate(xr, size=size, mode="trilinear", align_corners=False), xr,
                                  g64.bfloat16().double())
    xb = x64.detach().bfloat16().requires_grad_()
    (gtorch,) = torch.autograd.grad(F.interpolate(xb, size=size, mode="trilinear", align_corners=False), xb,
                                    g64.bfloat16())
    err = float((gx.double() - gref).norm() / gref.norm())
    assert err < 1e-2 and err <= float((gtorch.double() - gref).norm() / gref.norm()) + 1e-6


def test_model_gradients_unchanged_by_the_upsampling_backward(monkeypatch):
    """The whole tiny model (float32: its scan computes in float32): every parameter's gradient with
    `_TrilinearUp` equals the one through PyTorch's own interpolate backward, to float32 rounding."""
    import torch.nn.functional as F
    from SRMASegmenterLib import model as m
    torch.manual_seed(0)
    net = SRMAMamba(dims=8, out_chans=3, class_names=("background", "liver", "spleen"), drop_path_rate=0.0, decoder_drop_path=0.0).train()
    x = torch.randn(1, 1, 32, 32, 16)

    def grads():
        net.zero_grad()
        sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum() for o in net(x)).backward()
        return [p.grad.clone() for p in net.parameters()]

    mine = grads()
    monkeypatch.setattr(m, "_upsample", lambda t, size: F.interpolate(t, size=tuple(size), mode="trilinear",
                                                                       align_corners=False))
    ref = grads()
    flat_mine, flat_ref = torch.cat([g.flatten() for g in mine]), torch.cat([g.flatten() for g in ref])
    assert float((flat_mine - flat_ref).norm()) <= 1e-4 * float(flat_ref.norm())   # seen: 4e-6
    scale = float(flat_ref.abs().max())   # per tensor against the largest gradient: some biases ahead of a
    for a, b in zip(mine, ref):           # layer norm have near-zero gradients, pure rounding either way
        assert float((a - b).abs().max()) <= 1e-4 * scale


def test_trilinear_upsample_backward_stays_on_the_gradients_device():
    """The trainer captures forward + backward as one CUDA graph, where a host-to-device copy is not allowed:
    every tensor the backward touches lives on the gradient's device (here 'meta', which no host tensor
    can sneak past: a CPU tensor anywhere in the backward fails the test)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten
    from SRMASegmenterLib.model import _TrilinearUp

    class NoHostTensors(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten((args, kwargs, out))[0]:
                if isinstance(t, torch.Tensor) and t.device.type != "meta":
                    raise AssertionError(f"{func} touched a tensor on {t.device}")
            return out

    x = torch.empty(2, 5, 4, 4, 3, device="meta", requires_grad=True)
    y = _TrilinearUp.apply(x, (64, 64, 48))
    with NoHostTensors():
        (gx,) = torch.autograd.grad(y, x, torch.empty(2, 5, 64, 64, 48, device="meta"))
    assert gx.shape == x.shape and gx.device.type == "meta"


def _interpreted(script, backend, out, *args, timeout=900):
    """Run `script` in a fresh interpreter with Triton's CPU interpreter on and ssm_kernels' backend set
    (TRITON_INTERPRET is read when a kernel module is imported, so it cannot be switched on in this
    process); the script saves its results to `out`, which is loaded and returned."""
    import os
    import subprocess
    import sys
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(sys.path), "SSM_KERNELS_BACKEND": backend}
    r = subprocess.run([sys.executable, "-c", script, *args, str(out)], capture_output=True, text=True,
                       timeout=timeout, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return torch.load(out)


_LN_SCRIPT = r"""
import json, sys
import torch
from SRMASegmenterLib import model as m
from SRMASegmenterLib.model import SRMAMamba
from ssm_kernels import dwconv3x3_silu

m._dwconv_silu = lambda conv, x: dwconv3x3_silu(x, conv.weight, backend="torch")
torch.manual_seed(0)
net = SRMAMamba(dims=8, out_chans=3, class_names=("background", "liver", "spleen"), drop_path_rate=0.0,
                decoder_drop_path=0.0, scan_backend="torch").train()
x = torch.randn(1, 1, 64, 64, 16)
with torch.autocast("cpu", dtype=torch.bfloat16, enabled=sys.argv[1] == "bf16"):
    outs = net(x)
loss = sum((o.float() * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs)
loss.backward()
torch.save({"outs": [o.detach().float() for o in outs], "grads": [p.grad for p in net.parameters()]}, sys.argv[2])
"""


def test_model_with_the_triton_layer_norm_matches_pytorchs(tmp_path):
    """The tiny model's outputs and gradients with every layer norm run by the Triton kernel (CPU interpreter;
    the scan and SS2D's convolution stay torch: interpreted, the convolution would take minutes here; it is
    checked in a module below) against PyTorch's layer norm: to float32 rounding in fp32; under bf16
    autocast, where the norms before Linears write bf16 directly, closer to PyTorch's bf16 run than that is
    to fp32 (the interpreter rounds to bf16 by truncation, a GPU to nearest, so on the GPU it is closer
    still)."""
    res = {}
    for precision in ("fp32", "bf16"):
        for backend in ("torch", "triton"):
            res[precision, backend] = _interpreted(_LN_SCRIPT, backend, tmp_path / f"{precision}_{backend}.pt",
                                                   precision)

    def grads(key):
        return torch.cat([g.flatten() for g in res[key]["grads"]])

    def rel(a, b):
        return float((a - b).norm() / b.norm())

    for a, b in zip(res["fp32", "triton"]["outs"], res["fp32", "torch"]["outs"]):
        assert rel(a, b) < 1e-5
    assert rel(grads(("fp32", "triton")), grads(("fp32", "torch"))) < 1e-4
    g16, g16t, g32 = (grads(k) for k in (("bf16", "triton"), ("bf16", "torch"), ("fp32", "torch")))
    assert torch.isfinite(g16).all()
    assert rel(g16, g16t) < rel(g16t, g32)
    for a, b, c in zip(res["bf16", "triton"]["outs"], res["bf16", "torch"]["outs"], res["fp32", "torch"]["outs"]):
        assert rel(a, b) < rel(b, c)


def test_padded_dt_rank_gives_the_same_sums(monkeypatch):
    """SS2D.projections with the dt rank (3 here) padded with zeros to 8 (what the GPU runs, for cuBLAS's
    aligned kernels) against the unpadded product: the same delta, B and C, and the same gradients, to
    float32 rounding; the parameters keep their published shapes."""
    from SRMASegmenterLib import model as m
    torch.manual_seed(0)
    mod = m.SS2D(48)
    assert mod.dt_rank == 3 and tuple(mod.dt_projs_weight.shape) == (4, 96, 3)
    x = torch.randn(2, 96, 5, 7)
    res = {}
    for pad in (False, True):
        monkeypatch.setattr(m, "PAD_DT_RANK", pad)
        mod.zero_grad()
        xi = x.clone().requires_grad_(True)
        outs = mod.projections(xi)
        sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs).backward()
        res[pad] = ([o.detach() for o in outs], xi.grad, mod.dt_projs_weight.grad.clone(), mod.x_proj_weight.grad.clone())
    (o1, gx1, gd1, gp1), (o0, gx0, gd0, gp0) = res[True], res[False]
    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    assert [o.shape for o in o1] == [o.shape for o in o0]
    assert all(rel(a, b) < 1e-6 for a, b in zip(o1, o0))
    assert rel(gx1, gx0) < 1e-6 and rel(gd1, gd0) < 1e-6 and rel(gp1, gp0) < 1e-6
    assert gd1.shape == (4, 96, 3)


def test_projections_hand_x_a_channels_first_gradient():
    """SS2D's x feeds the projections and the scan; autograd adds their two gradients of x. The scan's is
    channels-first (x's layout), so the projections' must be too: a channels-last one (matmul's folded
    GEMM gave one) makes that add an elementwise pass through strides. Values against float64."""
    from SRMASegmenterLib import model as m

    seen = []

    class Seen(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t.view_as(t)

        @staticmethod
        def backward(ctx, g):
            seen.append(g)
            return g

    torch.manual_seed(0)
    mod = m.SS2D(48)
    x = torch.randn(2, 96, 5, 7, requires_grad=True)
    outs = mod.projections(Seen.apply(x))
    ws = [torch.linspace(-1, 1, o.numel()).view_as(o) for o in outs]
    sum((o * w).sum() for o, w in zip(outs, ws)).backward()
    (g,) = seen
    assert g.shape == x.shape and g.is_contiguous()
    xd = x.detach().double().requires_grad_(True)
    k, di, r, n = mod.K, mod.d_inner, mod.dt_rank, mod.d_state
    x_dbl = torch.einsum("md,bdl->bml", mod.x_proj_weight.detach().double().reshape(k * (r + 2 * n), di), xd.view(2, di, 35))
    dts, Bs, Cs = torch.split(x_dbl.view(2, k, r + 2 * n, 5, 7), [r, n, n], dim=2)
    dts = torch.einsum("kdr,bkrl->bkdl", mod.dt_projs_weight.detach().double(), dts.reshape(2, k, r, 35))
    ref = (dts.view(2, k, di, 5, 7), Bs, Cs)
    rel = lambda a, b: float((a.double() - b).norm() / b.norm())  # noqa: E731
    assert all(rel(o, q) < 1e-6 for o, q in zip(outs, ref))
    sum((q * w.double()).sum() for q, w in zip(ref, ws)).backward()
    assert rel(g, xd.grad) < 1e-6


_SS2D_SCRIPT = r"""
import sys
import torch
from SRMASegmenterLib.model import SS2D

torch.manual_seed(0)
mod = SS2D(8, scan_backend="torch")
x = torch.randn(2, 6, 10, 8, requires_grad=True)
y = mod(x)
(y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
torch.save({"y": y.detach(), "gx": x.grad, "grads": {n: p.grad for n, p in mod.named_parameters()},
            "triton_conv_ran": "ssm_kernels.triton_depthwise_conv" in sys.modules}, sys.argv[1])
"""


def test_ss2d_with_the_triton_convolution_matches_pytorchs(tmp_path):
    """One SS2D module (channels-last in and out) with its depthwise convolution + SiLU run by the Triton
    kernel (CPU interpreter; the scan stays torch) against PyTorch's conv2d + SiLU: outputs, the input's
    and every parameter's gradient to float32 rounding."""
    res = {b: _interpreted(_SS2D_SCRIPT, b, tmp_path / f"{b}.pt", timeout=600) for b in ("torch", "triton")}
    t, p = res["triton"], res["torch"]
    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    assert t["triton_conv_ran"] and not p["triton_conv_ran"]
    assert t["y"].shape == (2, 6, 10, 8)
    assert rel(t["y"], p["y"]) < 1e-5 and rel(t["gx"], p["gx"]) < 1e-5
    assert t["grads"].keys() == p["grads"].keys() and "conv2d.weight" in t["grads"]
    for n in t["grads"]:
        assert rel(t["grads"][n], p["grads"][n]) < 1e-4, n


@pytest.mark.parametrize("new_api", [True, False])
def test_layer_norm_dtype_follows_autocast_on_either_torch_api(monkeypatch, new_api):
    """The layer norms' output dtype follows autocast through torch >= 2.4's API and through the one
    torch 2.1-2.3 has (the project supports torch >= 2.1): fp32 under autocast, bf16 before a Linear,
    the input's dtype without autocast."""
    from SRMASegmenterLib import model as m
    if new_api and not hasattr(torch, "get_autocast_dtype"):
        pytest.skip("this torch predates torch.get_autocast_dtype")
    monkeypatch.setattr(m, "_NEW_AUTOCAST_API", new_api)
    norm = torch.nn.LayerNorm(8)
    x = torch.randn(2, 3, 8)
    assert m._low_precision(x) is None and m._layer_norm(norm, x).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert m._autocast_on(x)
        assert m._low_precision(x) == torch.bfloat16
        assert m._layer_norm(norm, x.bfloat16()).dtype == torch.float32
        assert m._layer_norm(norm, x, out_dtype=m._low_precision(x)).dtype == torch.bfloat16
    assert not m._autocast_on(torch.empty(2, 8, device="meta"))
