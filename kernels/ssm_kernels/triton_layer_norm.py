"""Triton side of ssm_kernels.layer_norm: the forward and backward kernels and their autograd Function.
Imported only when the Triton backend runs (as triton_launch is for the scan), so that importing
ssm_kernels does no Triton work."""
from __future__ import annotations

import torch
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


class TritonLayerNorm(torch.autograd.Function):
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
