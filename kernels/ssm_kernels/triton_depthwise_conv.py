"""Triton side of ssm_kernels.dwconv3x3_silu: forward and backward kernels and their autograd Function.
Imported only when the Triton backend runs (as triton_launch is for the scan).

Every kernel runs on the grid (batch x row blocks, column blocks, channel blocks); a program covers R rows
of BLOCK_W columns and BLOCK_C channels, one row at a time, as a [BLOCK_C, BLOCK_W] tile. The nine taps of
a row are nine shifted loads of the same few rows, served from cache. Taps are indexed t = 3 p + q for the
weight w[c, p, q], which multiplies x[i + p - 1, j + q - 1]; a tap's weights are loaded where they are used
(BLOCK_C values, from cache), and the backward keeps the weight gradient's nine partial sums as nine
[BLOCK_C] accumulators (as one [BLOCK_C, 16] tile, picked by masked sums, they spilled more: 948 against
796 bytes at 4 warps on sm_90a; at the chosen 8 warps these accumulators spill nothing, see _blocks and
test_depthwise_conv.py::test_kernels_compile_for_hopper_without_spills)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_launch import _empty, _env_int   # _empty: NaN-filled under SSM_KERNELS_POISON=1


@triton.jit
def _w(w_ptr, offs_c, mc, t: tl.constexpr):
    """The weights of tap t for a block of channels, fp32 [BLOCK_C]."""
    return tl.load(w_ptr + offs_c * 9 + t, mask=mc, other=0.0).to(tl.float32)


@triton.jit
def _x(xb, ii, jj, offs_c, mc, H, W, C):
    """x[ii, jj] of a channels-last map for a block of channels and columns, fp32 [BLOCK_C, BLOCK_W]; zero
    outside the map."""
    m = mc[:, None] & ((jj >= 0) & (jj < W) & (ii >= 0) & (ii < H))[None, :]
    return tl.load(xb + (ii * W + jj).to(tl.int64)[None, :] * C + offs_c[:, None], mask=m, other=0.0).to(tl.float32)


@triton.jit
def _pre(xb, w_ptr, i, offs_w, offs_c, mc, H, W, C):
    """The convolution at row i (fp32, [BLOCK_C, BLOCK_W]) from the channels-last map at xb."""
    acc = tl.zeros((offs_c.shape[0], offs_w.shape[0]), dtype=tl.float32)
    for p in tl.static_range(3):
        for q in tl.static_range(3):
            acc += _w(w_ptr, offs_c, mc, 3 * p + q)[:, None] * _x(xb, i + p - 1, offs_w + q - 1, offs_c, mc, H, W, C)
    return acc


@triton.jit
def _tile(n_hblk, C, R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr):
    """This program's batch, first row, columns, channels and channel mask."""
    pid0 = tl.program_id(0)
    offs_w = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    return pid0 // n_hblk, (pid0 % n_hblk) * R, offs_w, offs_c, offs_c < C


@triton.jit
def _dw_fwd_kernel(x_ptr, w_ptr, y_ptr, H, W, C, n_hblk,
                   R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr):
    b, i0, offs_w, offs_c, mc = _tile(n_hblk, C, R, BLOCK_C, BLOCK_W)
    xb = x_ptr + b.to(tl.int64) * H * W * C
    yb = y_ptr + b.to(tl.int64) * C * H * W + offs_c[:, None].to(tl.int64) * H * W
    for r in range(R):
        i = i0 + r
        acc = _pre(xb, w_ptr, i, offs_w, offs_c, mc, H, W, C)
        y = acc * tl.sigmoid(acc)
        mo = mc[:, None] & ((offs_w < W) & (i < H))[None, :]
        tl.store(yb + i * W + offs_w[None, :], y.to(y_ptr.dtype.element_ty), mask=mo)


@triton.jit
def _gw(xb, gp, i, offs_w, offs_c, mc, H, W, C, p: tl.constexpr, q: tl.constexpr):
    """Row i's share of the weight gradient at tap (p, q): sum over columns of gp * x[i + p - 1, j + q - 1]."""
    return tl.sum(gp * _x(xb, i + p - 1, offs_w + q - 1, offs_c, mc, H, W, C), axis=1)


@triton.jit
def _dw_bwd_pre_kernel(x_ptr, w_ptr, gy_ptr, gp_ptr, gwp_ptr, H, W, C, n_hblk,
                       R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr):
    """gp = gy * silu'(pre), channels-first fp32; this program's share of the weight gradient (its rows
    and columns), into row (pid0 * n_wblk + pid1) of (P, C, 9)."""
    b, i0, offs_w, offs_c, mc = _tile(n_hblk, C, R, BLOCK_C, BLOCK_W)
    xb = x_ptr + b.to(tl.int64) * H * W * C
    cf = b.to(tl.int64) * C * H * W + offs_c[:, None].to(tl.int64) * H * W   # channels-first rows
    g0 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    g1 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    g2 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    g3 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    g4 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    g5 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    g6 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    g7 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    g8 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for r in range(R):
        i = i0 + r
        acc = _pre(xb, w_ptr, i, offs_w, offs_c, mc, H, W, C)
        mo = mc[:, None] & ((offs_w < W) & (i < H))[None, :]
        gy = tl.load(gy_ptr + cf + i * W + offs_w[None, :], mask=mo, other=0.0).to(tl.float32)
        s = tl.sigmoid(acc)
        gp = tl.where(mo, gy * s * (1.0 + acc * (1.0 - s)), 0.0)
        tl.store(gp_ptr + cf + i * W + offs_w[None, :], gp, mask=mo)
        g0 += _gw(xb, gp, i, offs_w, offs_c, mc, H, W, C, 0, 0)
        g1 += _gw(xb, gp, i, offs_w, offs_c, mc, H, W, C, 0, 1)
        g2 += _gw(xb, gp, i, offs_w, offs_c, mc, H, W, C, 0, 2)
        g3 += _gw(xb, gp, i, offs_w, offs_c, mc, H, W, C, 1, 0)
        g4 += _gw(xb, gp, i, offs_w, offs_c, mc, H, W, C, 1, 1)
        g5 += _gw(xb, gp, i, offs_w, offs_c, mc, H, W, C, 1, 2)
        g6 += _gw(xb, gp, i, offs_w, offs_c, mc, H, W, C, 2, 0)
        g7 += _gw(xb, gp, i, offs_w, offs_c, mc, H, W, C, 2, 1)
        g8 += _gw(xb, gp, i, offs_w, offs_c, mc, H, W, C, 2, 2)
    prog = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
    out = gwp_ptr + (prog.to(tl.int64) * C + offs_c) * 9
    tl.store(out + 0, g0, mask=mc)
    tl.store(out + 1, g1, mask=mc)
    tl.store(out + 2, g2, mask=mc)
    tl.store(out + 3, g3, mask=mc)
    tl.store(out + 4, g4, mask=mc)
    tl.store(out + 5, g5, mask=mc)
    tl.store(out + 6, g6, mask=mc)
    tl.store(out + 7, g7, mask=mc)
    tl.store(out + 8, g8, mask=mc)


@triton.jit
def _dw_bwd_input_kernel(gp_ptr, w_ptr, gx_ptr, H, W, C, n_hblk,
                         R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr):
    """gx[i, j] = sum_{p, q} w[p, q] gp[i - p + 1, j - q + 1], written channels-last in gx's dtype."""
    pid0 = tl.program_id(0)   # (as _tile, written out: through _tile this kernel took 154 registers, not 128)
    b = pid0 // n_hblk
    i0 = (pid0 % n_hblk) * R
    offs_w = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    mc = offs_c < C
    cf = gp_ptr + b.to(tl.int64) * C * H * W + offs_c[:, None].to(tl.int64) * H * W
    gxb = gx_ptr + b.to(tl.int64) * H * W * C
    for r in range(R):
        i = i0 + r
        acc = tl.zeros((BLOCK_C, BLOCK_W), dtype=tl.float32)
        for p in tl.static_range(3):
            ii = i - p + 1
            row_ok = (ii >= 0) & (ii < H)
            for q in tl.static_range(3):
                jj = offs_w - q + 1
                m = mc[:, None] & ((jj >= 0) & (jj < W) & row_ok)[None, :]
                gv = tl.load(cf + ii * W + jj[None, :], mask=m, other=0.0)
                acc += _w(w_ptr, offs_c, mc, 3 * p + q)[:, None] * gv
        mo = mc[:, None] & ((offs_w < W) & (i < H))[None, :]
        tl.store(gxb + (i * W + offs_w).to(tl.int64)[None, :] * C + offs_c[:, None], acc.to(gx_ptr.dtype.element_ty),
                 mask=mo)


def _blocks(h: int, w: int, c: int):
    """(R, BLOCK_C, BLOCK_W, warps): 8 rows of up to 64 columns x 32 channels a program, 8 warps. Compiled for
    sm_90a (`kernels/benchmarks/ptxas_report.py --dwconv`), 4 warps left 16 values of a tile to a thread and
    the backward's first kernel spilled 800-900 bytes; at 8 warps the three use 126 / 255 / 128 registers
    with fp32 maps and 195 / 255 / 179 with the training step's bf16 ones (one program an SM), none spilled.
    Not yet swept on a GPU: SSM_DW_ROWS, SSM_DW_BLOCK_C, SSM_DW_BLOCK_W and SSM_DW_WARPS override them
    (benchmarks/bench_dwconv.py --tiles R,C,W,WARPS ...: the convolution alone on one step's maps)."""
    return (min(_env_int("SSM_DW_ROWS", 8), h), min(_env_int("SSM_DW_BLOCK_C", 32), triton.next_power_of_2(c)),
            min(_env_int("SSM_DW_BLOCK_W", 64), triton.next_power_of_2(w)), _env_int("SSM_DW_WARPS", 8))


class TritonDepthwiseConvSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight):
        x = x.contiguous()
        b, h, w, c = x.shape
        wt = weight.reshape(c, 9).to(x.dtype).contiguous()   # the weight in x's dtype, as autocast feeds conv2d
        y = _empty(b, c, h, w, device=x.device, dtype=x.dtype)
        r, bc, bw, nw = _blocks(h, w, c)
        n_hblk = triton.cdiv(h, r)
        grid = (b * n_hblk, triton.cdiv(w, bw), triton.cdiv(c, bc))
        if x.numel():
            _dw_fwd_kernel[grid](x, wt, y, h, w, c, n_hblk, R=r, BLOCK_C=bc, BLOCK_W=bw, num_warps=nw)
        ctx.save_for_backward(x, wt)
        ctx.weight_dtype = weight.dtype
        ctx.grid = (grid, n_hblk, r, bc, bw, nw)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, wt = ctx.saved_tensors
        b, h, w, c = x.shape
        grid, n_hblk, r, bc, bw, nw = ctx.grid
        if not x.numel():
            return torch.zeros_like(x), torch.zeros(c, 1, 3, 3, device=x.device, dtype=ctx.weight_dtype)
        gy = gy.contiguous()
        gp = _empty(b, c, h, w, device=x.device, dtype=torch.float32)
        gwp = _empty(grid[0] * grid[1], c, 9, device=x.device, dtype=torch.float32)
        _dw_bwd_pre_kernel[grid](x, wt, gy, gp, gwp, h, w, c, n_hblk, R=r, BLOCK_C=bc, BLOCK_W=bw, num_warps=nw)
        gx = _empty(b, h, w, c, device=x.device, dtype=x.dtype)
        _dw_bwd_input_kernel[grid](gp, wt, gx, h, w, c, n_hblk, R=r, BLOCK_C=bc, BLOCK_W=bw, num_warps=nw)
        return gx, gwp.sum(0).view(c, 1, 3, 3).to(ctx.weight_dtype)
