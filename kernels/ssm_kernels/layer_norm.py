"""Layer norm over channels for many short rows, forward and backward, in Triton (issue 13, item 5).

Why our own: PyTorch's CUDA layer norm gives each row its own thread block, which suits a transformer's
1-4k channels; SRMA-Mamba normalises 48-768 channels over millions of voxels, and there its 59 layer
norms took 38 of the 334 ms of kernels of a 224 x 224 x 64 training step (docs/BENCHMARKS.md, session 24),
plus the fp32 copies that feed them: autocast runs layer norm in fp32, so a channels-first map is first
copied channels-last in fp32 and the result cast to bf16 for the next Linear. Here one program normalises
a block of rows at once, reads its input through strides (a channels-first (B, C, *spatial) map without a
copy), writes channels-last (or channels-first) in the dtype its consumer wants (bf16 under autocast),
and keeps mean and 1/std for the backward, whose weight and bias gradients are summed per program over a
grid-stride loop, then over programs by torch.

    layer_norm(x, weight, bias, eps)                       # x (..., C) -> (..., C), like F.layer_norm
    layer_norm(x, weight, bias, eps, channels_first=True)  # x (B, C, *S) -> (B, *S, C)
    layer_norm(x, weight, bias, eps, out_channels_first=True)  # x (B, *S, C) -> (B, C, *S)
    layer_norm(..., out_dtype=torch.bfloat16)              # statistics in fp32, output cast once

Backends as the scan's (ssm_kernels.resolve_backend): triton on CUDA (or CPU under TRITON_INTERPRET=1),
else torch (F.layer_norm on the moved axis, then the cast); layer_norm_ref is the float64 definition.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .interface import resolve_backend, triton_available

if triton_available():
    import triton
    import triton.language as tl

    from .triton_launch import _empty   # NaN-filled under SSM_KERNELS_POISON=1, as the scan's buffers

    @triton.jit
    def _ln_fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr, M, C, R, sxb, sxr, sxc, syb, syr, syc, eps,
                       BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
        """Rows m = batch * R + r: element (batch, r, c) of x at batch * sxb + r * sxr + c * sxc, of y
        likewise through (syb, syr, syc)."""
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_C)
        mr = rows < M
        mc = cols < C
        m2 = mr[:, None] & mc[None, :]
        rows64 = rows.to(tl.int64)
        cols64 = cols.to(tl.int64)
        bi, ri = rows64 // R, rows64 % R
        x = tl.load(x_ptr + (bi * sxb + ri * sxr)[:, None] + cols64[None, :] * sxc, mask=m2, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=1) / C
        xc = tl.where(m2, x - mean[:, None], 0.0)
        var = tl.sum(xc * xc, axis=1) / C
        rstd = 1.0 / tl.sqrt(var + eps)
        w = tl.load(w_ptr + cols, mask=mc, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + cols, mask=mc, other=0.0).to(tl.float32)
        y = xc * rstd[:, None] * w[None, :] + b[None, :]
        tl.store(y_ptr + (bi * syb + ri * syr)[:, None] + cols64[None, :] * syc, y.to(y_ptr.dtype.element_ty), mask=m2)
        tl.store(mean_ptr + rows, mean, mask=mr)
        tl.store(rstd_ptr + rows, rstd, mask=mr)

    @triton.jit
    def _ln_bwd_kernel(x_ptr, w_ptr, dy_ptr, mean_ptr, rstd_ptr, dx_ptr, dw_ptr, db_ptr, M, C, R, sxb, sxr, sxc,
                       syb, syr, syc, n_blocks, n_progs, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
        """dx in x's layout, dy in y's; dw, db: this program's partial sums, row pid of (n_progs, C)."""
        pid = tl.program_id(0)
        cols = tl.arange(0, BLOCK_C)
        cols64 = cols.to(tl.int64)
        mc = cols < C
        w = tl.load(w_ptr + cols, mask=mc, other=0.0).to(tl.float32)
        dw = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)   # summed over rows once, after the loop
        db = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
        for blk in range(pid, n_blocks, n_progs):
            rows = blk * BLOCK_M + tl.arange(0, BLOCK_M)
            mr = rows < M
            m2 = mr[:, None] & mc[None, :]
            rows64 = rows.to(tl.int64)
            bi, ri = rows64 // R, rows64 % R
            xoff = (bi * sxb + ri * sxr)[:, None] + cols64[None, :] * sxc
            x = tl.load(x_ptr + xoff, mask=m2, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + (bi * syb + ri * syr)[:, None] + cols64[None, :] * syc, mask=m2,
                         other=0.0).to(tl.float32)
            mean = tl.load(mean_ptr + rows, mask=mr, other=0.0)
            rstd = tl.load(rstd_ptr + rows, mask=mr, other=0.0)
            xhat = tl.where(m2, (x - mean[:, None]) * rstd[:, None], 0.0)
            wdy = dy * w[None, :]
            c1 = tl.sum(xhat * wdy, axis=1) / C
            c2 = tl.sum(wdy, axis=1) / C
            dx = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
            tl.store(dx_ptr + xoff, dx.to(dx_ptr.dtype.element_ty), mask=m2)
            dw += dy * xhat
            db += dy
        tl.store(dw_ptr + pid * C + cols, tl.sum(dw, axis=0), mask=mc)
        tl.store(db_ptr + pid * C + cols, tl.sum(db, axis=0), mask=mc)


def _geometry(shape, channels_first: bool):
    """(M, C, R, strides): a contiguous tensor of `shape`, channels-first (B, C, *S) or channels-last
    (B, *S, C), as M = B * R rows of C channels (R = the size of S), element (batch, r, c) at batch * sb +
    r * sr + c * sc. Both layouts of one tensor share M, C and R, so one row index serves input and output."""
    if len(shape) == 1:
        return 1, shape[0], 1, (0, 0, 1)
    c = shape[1] if channels_first else shape[-1]
    r = 1
    for n in (shape[2:] if channels_first else shape[1:-1]):
        r *= n
    return shape[0] * r, c, max(r, 1), ((c * r, 1, r) if channels_first else (r * c, c, 1))


def _moved(shape, channels_first: bool, out_channels_first: bool):
    """The output's shape: the input's with its channel axis moved where the output keeps it."""
    if channels_first == out_channels_first:
        return tuple(shape)
    if channels_first:
        return (shape[0], *shape[2:], shape[1])
    return (shape[0], shape[-1], *shape[1:-1])


def _blocks(c: int):
    bc = triton.next_power_of_2(max(c, 1))
    bm = max(1, min(128, 4096 // bc))
    nw = 4 if bc * bm <= 4096 else 8
    return bm, bc, nw


class _TritonLayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps, channels_first, out_channels_first, out_dtype):
        x = x.contiguous()
        m, c, r, sx = _geometry(x.shape, channels_first)
        y_shape = _moved(x.shape, channels_first, out_channels_first)
        sy = _geometry(y_shape, out_channels_first)[3]
        y = _empty(*y_shape, device=x.device, dtype=out_dtype)
        mean = torch.empty(m, device=x.device, dtype=torch.float32)
        rstd = torch.empty(m, device=x.device, dtype=torch.float32)
        if m:
            bm, bc, nw = _blocks(c)
            _ln_fwd_kernel[(triton.cdiv(m, bm),)](x, weight, bias, y, mean, rstd, m, c, r, *sx, *sy, float(eps),
                                                 BLOCK_M=bm, BLOCK_C=bc, num_warps=nw)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.geom = (m, c, r, sx, sy)
        ctx.bias_dtype = bias.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, rstd = ctx.saved_tensors
        m, c, r, sx, sy = ctx.geom
        dy = dy.contiguous()
        dx = _empty(*x.shape, device=x.device, dtype=x.dtype)
        none = (None,) * 4
        if not m:
            return dx, torch.zeros_like(weight), torch.zeros(c, device=x.device, dtype=ctx.bias_dtype), *none
        bm, bc, nw = _blocks(c)
        n_blocks = triton.cdiv(m, bm)
        if x.device.type == "cuda":
            n_progs = min(n_blocks, 8 * torch.cuda.get_device_properties(x.device).multi_processor_count)
        else:
            n_progs = min(n_blocks, 4)
        dwp = torch.empty((n_progs, c), device=x.device, dtype=torch.float32)
        dbp = torch.empty((n_progs, c), device=x.device, dtype=torch.float32)
        _ln_bwd_kernel[(n_progs,)](x, weight, dy, mean, rstd, dx, dwp, dbp, m, c, r, *sx, *sy, n_blocks, n_progs,
                                   BLOCK_M=bm, BLOCK_C=bc, num_warps=nw)
        return dx, dwp.sum(0).to(weight.dtype), dbp.sum(0).to(ctx.bias_dtype), *none


def layer_norm_torch(x, weight, bias, eps=1e-5, *, channels_first=False, out_channels_first=False, out_dtype=None):
    """PyTorch's layer norm on the channel axis (moved last when channels_first), in fp32 for 16-bit x as
    autocast runs it, then cast to out_dtype (default x's) and laid out as asked."""
    out_dtype = x.dtype if out_dtype is None else out_dtype
    if channels_first:
        x = x.movedim(1, -1)
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    y = F.layer_norm(x, (x.shape[-1],), weight, bias, eps).to(out_dtype)
    return y.movedim(-1, 1).contiguous() if out_channels_first else y


def layer_norm(x, weight, bias, eps=1e-5, *, channels_first=False, out_channels_first=False, out_dtype=None,
               backend=None):
    """Layer norm over channels: x (..., C), or with channels_first x (B, C, *S); the result laid out
    channels-last ((B, *S, C)), or channels-first with out_channels_first, either way contiguous and
    without an intermediate copy. Statistics and arithmetic in fp32; the output in out_dtype (default x's).
    weight and bias: (C,)."""
    if x.dim() < (2 if channels_first or out_channels_first else 1):
        raise ValueError(f"layer_norm: x of shape {tuple(x.shape)} has no batch and channel axes")
    c = x.shape[1] if channels_first else x.shape[-1]
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None or tuple(t.shape) != (c,):
            raise ValueError(f"layer_norm: {name} must be a tensor of shape ({c},), got "
                             f"{None if t is None else tuple(t.shape)}")
    if out_dtype is None:
        out_dtype = x.dtype
    if not channels_first and x.dim() >= 3 and not x.is_contiguous() and x.movedim(-1, 1).is_contiguous():
        x, channels_first = x.movedim(-1, 1), True   # a channels-last view of a channels-first map: read in place
    backend = resolve_backend(backend, x.device)
    if backend != "triton" or x.dtype == torch.float64:
        return layer_norm_torch(x, weight, bias, eps, channels_first=channels_first,
                                out_channels_first=out_channels_first, out_dtype=out_dtype)
    return _TritonLayerNorm.apply(x, weight, bias, eps, bool(channels_first), bool(out_channels_first), out_dtype)


def layer_norm_ref(x, weight, bias, eps=1e-5, *, channels_first=False, out_channels_first=False):
    """The definition in float64: (x - mean) / sqrt(var + eps) * weight + bias over the channel axis."""
    x = x.double()
    if channels_first:
        x = x.movedim(1, -1)
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps) * weight.double() + bias.double()
    return y.movedim(-1, 1) if out_channels_first else y
