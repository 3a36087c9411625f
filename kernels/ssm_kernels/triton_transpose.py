"""A tiled transpose of the last two axes, in Triton: the copies of the four-direction scan's transposed
layout (triton_launch: directions 1 and 3 scan rows of a transposed copy of x, delta, B and C, and their
output and gradients are transposed back and added). Imported by triton_launch.

Why our own: PyTorch copies `t.transpose(-1, -2).contiguous()` (and `out.add_(t.transpose(-1, -2))`) with
its generic strided elementwise kernel, each thread one element: one side of the copy is coalesced, and
on the other neighbouring threads touch values a row apart. At 224 x 224 x 64 those copies were most of
the 27 ms of `elementwise_kernel<128, 4>` in the training step's profile (session 26, docs/BENCHMARKS.md,
an estimate from their bytes and launches). Here a
program loads a TILE x TILE tile along its rows, and Triton's layout conversion (through shared memory)
lets it store the transposed tile along the output's rows too: both sides coalesced.

    transpose_last2(x)                            # (..., A, B) -> new (..., B, A)
    transpose_last2(x, out=o)                     # o[..., b, a] = x[..., a, b]
    transpose_last2(x, out=o, accumulate=True)    # o[..., b, a] += x[..., a, b]

Each (A, B) plane of x and of out must be row-major with unit stride (strided outer axes are fine, up to
three of them: the scan's `delta[:, 1::2]` views); other inputs, mixed dtypes, more planes than a grid
axis holds, and adds into anything but fp32 (the scan adds only into its fp32 output and du; a 16-bit add
would round as add_ on the GPU but not under Triton's CPU interpreter, which truncates) go to PyTorch's
copy. The numbers are the same either way: a transpose moves values, and the fp32 add is one rounding.
SSM_TRANSPOSE=torch sends every call there (the step before / after in one run: bench_train_step.py
--compare kernels --kernel-env SSM_TRANSPOSE=torch).
"""
from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from .triton_launch import _empty, _env_int   # _empty: NaN-filled under SSM_KERNELS_POISON=1


@triton.jit
def _transpose_kernel(x_ptr, o_ptr, A, B, n_tb, O1, O2, xs0, xs1, xs2, os0, os1, os2,
                      ACC: tl.constexpr, TILE: tl.constexpr):
    pid = tl.program_id(0)
    plane = tl.program_id(1)
    i2 = plane % O2
    i1 = (plane // O2) % O1
    i0 = plane // (O2 * O1)
    xb = x_ptr + i0.to(tl.int64) * xs0 + i1.to(tl.int64) * xs1 + i2.to(tl.int64) * xs2
    ob = o_ptr + i0.to(tl.int64) * os0 + i1.to(tl.int64) * os1 + i2.to(tl.int64) * os2
    ra = (pid // n_tb) * TILE + tl.arange(0, TILE)
    rb = (pid % n_tb) * TILE + tl.arange(0, TILE)
    v = tl.load(xb + ra[:, None].to(tl.int64) * B + rb[None, :], mask=(ra < A)[:, None] & (rb < B)[None, :])
    vt = tl.trans(v)                                                   # [b, a]
    mt = (rb < B)[:, None] & (ra < A)[None, :]
    op = ob + rb[:, None].to(tl.int64) * A + ra[None, :]
    if ACC:   # fp32 only (transpose_last2)
        vt = tl.load(op, mask=mt) + vt
    tl.store(op, vt.to(o_ptr.dtype.element_ty), mask=mt)


def _tiled(t, a, b):
    """Can the kernel read / write t (..., a, b): row-major unit-stride planes, at most three outer axes."""
    return t.dim() <= 5 and (t.stride(-1) == 1 or b == 1) and (t.stride(-2) == b or a == 1)


def _tile():
    """(TILE, warps): 64 x 64 tiles, 4 warps; SSM_TRANSPOSE_TILE and SSM_TRANSPOSE_WARPS override (a sweep)."""
    return _env_int("SSM_TRANSPOSE_TILE", 64), _env_int("SSM_TRANSPOSE_WARPS", 4)


def transpose_last2(x: torch.Tensor, out: torch.Tensor | None = None, accumulate: bool = False) -> torch.Tensor:
    """out[..., b, a] = x[..., a, b] (or += with accumulate); out is a new contiguous tensor in x's dtype
    when not given. Returns out."""
    *outer, a, b = x.shape
    if out is None:
        if accumulate:
            raise ValueError("transpose_last2: accumulate needs an out tensor")
        out = _empty(*outer, b, a, device=x.device, dtype=x.dtype)
    if tuple(out.shape) != (*outer, b, a):
        raise ValueError(f"transpose_last2: out of shape {tuple(out.shape)} for x of shape {tuple(x.shape)}")
    planes = math.prod(outer)
    if (os.environ.get("SSM_TRANSPOSE", "") == "torch" or not x.numel() or planes > 65535 or x.dtype != out.dtype
            or (accumulate and x.dtype != torch.float32) or not _tiled(x, a, b) or not _tiled(out, b, a)):
        t = x.transpose(-1, -2)
        return out.add_(t) if accumulate else out.copy_(t)
    pad = 3 - len(outer)
    shape = [1] * pad + list(outer)
    xs = [0] * pad + list(x.stride()[:-2])
    os_ = [0] * pad + list(out.stride()[:-2])
    tile, warps = _tile()
    n_tb = triton.cdiv(b, tile)
    grid = (triton.cdiv(a, tile) * n_tb, planes)
    _transpose_kernel[grid](x, out, a, b, n_tb, shape[1], shape[2], *xs, *os_, ACC=accumulate, TILE=tile,
                            num_warps=warps)
    return out
