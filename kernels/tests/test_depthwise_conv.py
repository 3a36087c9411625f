"""The depthwise 3 x 3 convolution + SiLU (ssm_kernels.dwconv3x3_silu) against its float64 definition and
against PyTorch's convolution, both backends."""
import pytest
import torch
import torch.nn.functional as F

from conftest import compile_for_hopper, device_for, rel_err
from ssm_kernels.depthwise_conv import dwconv3x3_silu, dwconv3x3_silu_ref, dwconv3x3_silu_torch


def _inputs(shape, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(dtype).to(device)
    w = (0.4 * torch.randn(shape[-1], 1, 3, 3, generator=g)).to(device)
    return x, w


# (B, H, W, C): a map smaller than one block; rows that leave the last 8-row block partial (9, 17), so the
# rolling row window starts and ends mid-map; columns that leave the last 32-wide block partial (70) and
# channels the last 16-wide one (40; 96 is SRMA-Mamba's stage-0 width); one-row and one-column maps, whose
# taps all but the middle fall in the padding
SHAPES = [(2, 5, 7, 6), (1, 9, 70, 40), (2, 17, 12, 96), (1, 1, 9, 8), (2, 6, 1, 5)]


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_forward_backward_match_float64(backend, shape, dtype):
    dev = device_for(backend)
    x, w = _inputs(shape, dtype, dev, seed=sum(shape))
    x.requires_grad_(True)
    w.requires_grad_(True)
    y = dwconv3x3_silu(x, w, backend=backend)
    b, h, wd, c = shape
    assert y.shape == (b, c, h, wd) and y.dtype == dtype and y.is_contiguous()
    # the definition, fed what the op computes with: the weight in x's dtype (as autocast feeds conv2d)
    xd = x.detach().double().cpu().requires_grad_(True)
    wd_ = w.detach().to(dtype).double().cpu().requires_grad_(True)
    ref = dwconv3x3_silu_ref(xd, wd_)
    tol = 2e-6 if dtype == torch.float32 else 8e-3
    assert rel_err(y, ref) < tol
    dy = torch.randn(ref.shape, generator=torch.Generator().manual_seed(5)).to(dtype).double()
    (y.double() * dy.to(dev)).sum().backward()
    (ref * dy).sum().backward()
    assert x.grad.dtype == dtype and x.grad.shape == x.shape
    assert w.grad.dtype == w.dtype and w.grad.shape == w.shape
    # the Triton backward keeps the pre-activation's gradient in fp32 and rounds only the input's gradient;
    # PyTorch's rounds each step's result to bf16 (SiLU's backward, then the convolution's)
    gtol = 1e-5 if dtype == torch.float32 else (8e-3 if backend == "triton" else 3e-2)
    assert rel_err(x.grad, xd.grad) < gtol
    assert rel_err(w.grad, wd_.grad) < (1e-5 if dtype == torch.float32 or backend == "triton" else 3e-2)


def test_block_settings_change_the_tiling_not_the_result(monkeypatch):
    """SSM_DW_* (for a GPU sweep) pick other tiles; the outputs and gradients stay the float64 definition's."""
    from ssm_kernels.triton_depthwise_conv import _blocks
    dev = device_for("triton")
    assert _blocks(112, 3584, 96) == (8, 16, 32, 4)
    monkeypatch.setenv("SSM_DW_ROWS", "3")
    monkeypatch.setenv("SSM_DW_BLOCK_C", "8")
    monkeypatch.setenv("SSM_DW_BLOCK_W", "16")
    monkeypatch.setenv("SSM_DW_WARPS", "2")
    assert _blocks(112, 3584, 96) == (3, 8, 16, 2)
    x, w = _inputs((2, 7, 20, 40), torch.float32, dev, seed=4)
    x.requires_grad_(True)
    w.requires_grad_(True)
    y = dwconv3x3_silu(x, w, backend="triton")
    xd, wd = (t.detach().double().cpu().requires_grad_(True) for t in (x, w))
    ref = dwconv3x3_silu_ref(xd, wd)
    assert rel_err(y, ref) < 2e-6
    dy = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (y.double() * dy.to(dev)).sum().backward()
    (ref * dy).sum().backward()
    assert rel_err(x.grad, xd.grad) < 1e-5 and rel_err(w.grad, wd.grad) < 1e-5


def test_triton_equals_pytorchs_convolution():
    """The same numbers as the model's path before: conv2d on the permuted view, SiLU, contiguous."""
    dev = device_for("triton")
    x, w = _inputs((2, 11, 23, 48), torch.float32, dev, seed=1)
    xt, wt = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    xp, wp = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    yt = dwconv3x3_silu(xt, wt, backend="triton")
    yp = F.silu(F.conv2d(xp.permute(0, 3, 1, 2), wp, padding=1, groups=48)).contiguous()
    assert rel_err(yt, yp) < 2e-6
    g = torch.randn(yp.shape, generator=torch.Generator().manual_seed(2)).to(dev)
    (yt * g).sum().backward()
    (yp * g).sum().backward()
    assert rel_err(xt.grad, xp.grad) < 1e-5 and rel_err(wt.grad, wp.grad) < 1e-5


def test_torch_backend_is_the_models_old_path():
    x, w = _inputs((1, 4, 5, 6), torch.float32, torch.device("cpu"), seed=2)
    y = dwconv3x3_silu(x, w, backend="torch")
    assert torch.equal(y, F.silu(F.conv2d(x.permute(0, 3, 1, 2), w, padding=1, groups=6)).contiguous())
    assert torch.equal(y, dwconv3x3_silu_torch(x, w))


@pytest.mark.parametrize("args,match", [
    ((torch.zeros(2, 3, 4), torch.zeros(4, 1, 3, 3)), "x must be a"),
    ((torch.zeros(1, 3, 4, 5), torch.zeros(4, 1, 3, 3)), r"weight must be of shape \(5, 1, 3, 3\)"),
    ((torch.zeros(1, 3, 4, 5), torch.zeros(5, 1, 5, 5)), "weight must be of shape"),
])
def test_bad_inputs(args, match):
    with pytest.raises(ValueError, match=match):
        dwconv3x3_silu(*args, backend="torch")


_COMPILE_CHECK = r"""
from ptxas_report import DW_BF16, ptxas_info
from ssm_kernels.triton_depthwise_conv import _blocks, _dw_bwd_input_kernel, _dw_bwd_pre_kernel, _dw_fwd_kernel
r, bc, bw, nw = _blocks(112, 3584, 96)   # SRMA-Mamba's stage-0 map at a 224 x 224 x 64 patch
for fn in (_dw_fwd_kernel, _dw_bwd_pre_kernel, _dw_bwd_input_kernel):
    for types in (None, DW_BF16):        # fp32 maps, and the training step's bf16 ones
        print(ptxas_info(fn, dict(R=r, BLOCK_C=bc, BLOCK_W=bw), nw, types))
"""


def test_kernels_compile_for_hopper_without_spills():
    """The three kernels at their default blocks compiled for sm_90a (Triton's own ptxas, no GPU needed),
    for fp32 and bf16 maps: they compile, and no thread spills registers to local memory."""
    import re
    out = compile_for_hopper(_COMPILE_CHECK)
    info = [tuple(int(v) for v in m) for m in re.findall(r"\((\d+), (\d+), (\d+), \d+\)", out)]
    assert len(info) == 6, out
    for regs, spill_st, spill_ld in info:
        assert 0 < regs <= 255 and spill_st == 0 and spill_ld == 0, out
