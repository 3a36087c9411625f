"""The channel layer norm (ssm_kernels.layer_norm) against its float64 definition, both backends, both layouts."""
import pytest
import torch

from conftest import device_for, rel_err
from ssm_kernels.layer_norm import layer_norm, layer_norm_ref, layer_norm_torch

TOL = {torch.float32: 2e-6, torch.bfloat16: 8e-3}


def _inputs(shape, channels_first, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    c = shape[1] if channels_first else shape[-1]
    x = (torch.randn(shape, generator=g) * 2 + 0.7).to(dtype).to(device)
    w = (1 + 0.3 * torch.randn(c, generator=g)).to(device)
    b = (0.2 * torch.randn(c, generator=g)).to(device)
    return x, w, b


# (shape, channels_first, out_channels_first): SRMA-Mamba's widths (48-768 channels; 96 = a padded 128-wide
# block, 20 odd), a row count that leaves the last block partial, channels-first maps in (SS2D's scan output)
# and out (the encoder's outputs for the decoder), and both
CASES = [((2, 5, 7, 48), False, False), ((3, 37, 96), False, False), ((1, 11, 20), False, False),
         ((130, 768), False, False), ((2, 96, 6, 9), True, False), ((3, 20, 5, 7, 2), True, False),
         ((1, 384, 3, 5), True, False), ((2, 3, 5, 4, 48), False, True), ((2, 7, 20), False, True),
         ((2, 96, 6, 9), True, True)]


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("shape,channels_first,out_channels_first", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_backward_match_float64(backend, shape, channels_first, out_channels_first, dtype):
    dev = device_for(backend)
    x, w, b = _inputs(shape, channels_first, dtype, dev, seed=hash((shape, channels_first)) % 1000)
    x.requires_grad_(True)
    w.requires_grad_(True)
    b.requires_grad_(True)
    kw = dict(channels_first=channels_first, out_channels_first=out_channels_first)
    y = layer_norm(x, w, b, 1e-5, out_dtype=torch.float32, backend=backend, **kw)
    ref = layer_norm_ref(x.detach(), w.detach(), b.detach(), 1e-5, **kw)
    assert y.shape == ref.shape and y.dtype == torch.float32
    assert y.is_contiguous()
    assert rel_err(y, ref) < TOL[torch.float32] * (1 if dtype == torch.float32 else 2)
    dy = torch.randn(ref.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64).contiguous()
    (y * dy.to(dev).float()).sum().backward()
    xd, wd, bd = (t.detach().double().cpu().requires_grad_(True) for t in (x, w, b))
    (layer_norm_ref(xd, wd, bd, 1e-5, **kw) * dy).sum().backward()
    assert x.grad.dtype == dtype and x.grad.shape == x.shape
    assert rel_err(x.grad, xd.grad) < TOL[dtype] * 5
    assert rel_err(w.grad, wd.grad) < 1e-5
    assert rel_err(b.grad, bd.grad) < 1e-5


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
def test_out_dtype_is_one_rounding_of_the_fp32_result(out_dtype):
    """The bf16 output equals the fp32 output cast once (what autocast's Linear would do next)."""
    dev = device_for("triton")
    x, w, b = _inputs((2, 48, 4, 6), True, torch.float32, dev, seed=3)
    y32 = layer_norm(x, w, b, channels_first=True, out_dtype=torch.float32, backend="triton")
    y = layer_norm(x, w, b, channels_first=True, out_dtype=out_dtype, backend="triton")
    assert y.dtype == out_dtype
    # the cast is the only step after the fp32 result: on the GPU it rounds to nearest (as torch's .to), bit
    # for bit; Triton's CPU interpreter truncates instead, so there within one bf16 unit of the last place
    if y.is_cuda or out_dtype == torch.float32:
        assert torch.equal(y, y32.to(out_dtype))
    else:
        assert ((y.float() - y32).abs() <= y32.abs() * 2 ** -7 + 1e-30).all()
    yt = layer_norm_torch(x, w, b, channels_first=True, out_dtype=torch.float32)
    assert rel_err(y32, yt) < 2e-6


def test_channels_first_reads_without_a_copy_and_matches_a_permute():
    dev = device_for("triton")
    x, w, b = _inputs((2, 96, 5, 3), True, torch.float32, dev, seed=4)
    y = layer_norm(x, w, b, channels_first=True, backend="triton")
    y_last = layer_norm(x.permute(0, 2, 3, 1).contiguous(), w, b, backend="triton")
    assert y.shape == (2, 5, 3, 96)
    assert torch.allclose(y, y_last, rtol=0, atol=1e-6)


def test_non_contiguous_channels_last_input():
    dev = device_for("triton")
    x, w, b = _inputs((4, 6, 48), False, torch.float32, dev, seed=6)
    xt = x.transpose(0, 1)                       # (6, 4, 48), rows not in memory order
    y = layer_norm(xt, w, b, backend="triton")
    assert rel_err(y, layer_norm_ref(xt, w, b)) < 2e-6


def test_channels_last_view_of_a_channels_first_map():
    """A permuted view (a convolution's output seen channels-last) is read in place, values as if copied."""
    dev = device_for("triton")
    x, w, b = _inputs((2, 48, 3, 4, 5), True, torch.float32, dev, seed=7)
    view = x.permute(0, 2, 3, 4, 1)
    y = layer_norm(view, w, b, backend="triton")
    assert y.shape == view.shape and y.is_contiguous()
    assert rel_err(y, layer_norm_ref(view, w, b)) < 2e-6


def test_bad_weight_shape_is_refused():
    x = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match="weight must be a tensor of shape \\(8,\\)"):
        layer_norm(x, torch.ones(4), torch.zeros(8))
