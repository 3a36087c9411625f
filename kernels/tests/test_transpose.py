"""The tiled transpose of the scan's transposed layout (ssm_kernels.triton_transpose) against PyTorch's
transpose: exact (values are moved, and the add is one rounding, as add_'s)."""
import pytest
import torch

from conftest import compile_for_hopper, device_for

triton_transpose = pytest.importorskip("ssm_kernels.triton_transpose")
transpose_last2 = triton_transpose.transpose_last2


def _rand(shape, dtype, dev, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype).to(dev)


# (..., A, B): one partial tile; tiles partial on both axes (70 x 130 at 64); SS2D's short and wide maps
# (8 x 300); one-row and one-column planes; three outer axes (the scan's (b, 2, d) views)
SHAPES = [(5, 7), (2, 70, 130), (3, 8, 300), (2, 1, 65), (2, 65, 1), (2, 2, 3, 9, 70)]


class _Counted:
    """The kernel, counting its launches: a test that PyTorch's fallback would also pass must see it run."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        self.launches += 1
        return self.kernel[grid]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_copy_and_accumulate_equal_pytorch(shape, dtype, monkeypatch):
    dev = device_for("triton")
    counted = _Counted(triton_transpose._transpose_kernel)
    monkeypatch.setattr(triton_transpose, "_transpose_kernel", counted)
    x = _rand(shape, dtype, dev, sum(shape))
    y = transpose_last2(x)
    assert counted.launches == 1
    assert y.shape == (*shape[:-2], shape[-1], shape[-2]) and y.is_contiguous() and y.dtype == dtype
    assert torch.equal(y, x.transpose(-1, -2))
    base = _rand(y.shape, dtype, dev, 7)
    out = base.clone()
    assert transpose_last2(x, out=out, accumulate=True) is out
    assert torch.equal(out, base + x.transpose(-1, -2))
    # the kernel adds into fp32 only; a bf16 add goes to PyTorch's add_
    assert counted.launches == (2 if dtype == torch.float32 else 1)


def test_strided_outer_axes_as_the_scan_uses_them(monkeypatch):
    """delta.view(b, 4, d, L)[:, 1::2] in, ddelta's same view out: only the odd directions are touched."""
    dev = device_for("triton")
    counted = _Counted(triton_transpose._transpose_kernel)
    monkeypatch.setattr(triton_transpose, "_transpose_kernel", counted)
    b, d, h, w = 2, 5, 9, 70
    delta = _rand((b, 4, d, h * w), torch.bfloat16, dev, 1)
    t = transpose_last2(delta[:, 1::2].unflatten(-1, (h, w))).flatten(-2)     # (b, 2, d, w * h)
    assert torch.equal(t, delta[:, 1::2].unflatten(-1, (h, w)).transpose(-1, -2).flatten(-2))
    ddelta = torch.full((b, 4, d, h * w), -3.0, dtype=torch.bfloat16, device=dev)
    transpose_last2(t.unflatten(-1, (w, h)), out=ddelta[:, 1::2].unflatten(-1, (h, w)))
    assert torch.equal(ddelta[:, 1::2], delta[:, 1::2])
    assert bool((ddelta[:, 0::2] == -3.0).all())
    assert counted.launches == 2


def test_inputs_it_does_not_tile_go_to_pytorch(monkeypatch):
    """A plane that is not row-major, or out of another dtype: PyTorch's copy, the same result."""
    dev = device_for("triton")
    counted = _Counted(triton_transpose._transpose_kernel)
    monkeypatch.setattr(triton_transpose, "_transpose_kernel", counted)
    x = _rand((3, 40, 20), torch.float32, dev, 2).transpose(-1, -2)       # planes column-major
    assert torch.equal(transpose_last2(x), x.transpose(-1, -2))
    out = torch.zeros(3, 20, 40, dtype=torch.float64, device=dev)
    transpose_last2(x.transpose(-1, -2).contiguous(), out=out)
    assert torch.equal(out, x.double())
    with pytest.raises(ValueError, match="accumulate needs an out"):
        transpose_last2(x, accumulate=True)
    with pytest.raises(ValueError, match="out of shape"):
        transpose_last2(x, out=torch.zeros(3, 21, 40, device=dev))
    assert counted.launches == 0
    monkeypatch.setenv("SSM_TRANSPOSE", "torch")   # the step's before / after switch
    y = _rand((2, 30, 50), torch.float32, dev, 4)
    assert torch.equal(transpose_last2(y), y.transpose(-1, -2)) and counted.launches == 0


def test_tile_setting_changes_the_tiling_not_the_result(monkeypatch):
    dev = device_for("triton")
    x = _rand((2, 37, 45), torch.float32, dev, 3)
    monkeypatch.setenv("SSM_TRANSPOSE_TILE", "16")
    monkeypatch.setenv("SSM_TRANSPOSE_WARPS", "2")
    assert triton_transpose._tile() == (16, 2)
    assert torch.equal(transpose_last2(x), x.transpose(-1, -2))


_COMPILE_CHECK = """
from ptxas_report import ptxas_info
from ssm_kernels.triton_transpose import _transpose_kernel
for acc in (False, True):
    print(*ptxas_info(_transpose_kernel, dict(ACC=acc, TILE=64), 4)[:3])
"""


def test_kernel_compiles_for_hopper_without_spills():
    """The kernel compiles for sm_90a (no GPU needed) and no thread spills registers."""
    out = compile_for_hopper(_COMPILE_CHECK)
    rows = [tuple(map(int, line.split())) for line in out.strip().splitlines()]
    assert len(rows) == 2, out
    for regs, st, ld in rows:
        assert 0 < regs <= 255 and st == 0 and ld == 0, out
