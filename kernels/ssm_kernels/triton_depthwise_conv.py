"""Triton side of ssm_kernels.dwconv3x3_silu: forward and backward kernels and their autograd Function.
Imported only when the Triton backend runs (as triton_launch is for the scan).

Every kernel runs on the grid (batch x row blocks, column blocks, channel blocks); a program covers R rows
of BLOCK_W columns and BLOCK_C channels, one row at a time, as a [BLOCK_C, BLOCK_W] tile. Taps are indexed
t = 3 p + q for the weight w[c, p, q], which multiplies x[i + p - 1, j + q - 1]. Each kernel keeps a
rolling window of three input rows (above, this, below), each row as its three column-shifted tiles, so a
row is loaded once per program and not once per tap: moving down a row loads only the new row below
(`_row`). The nine weights are loaded once per program. The backward's first kernel takes the weight
gradient's nine row sums from the same window tiles that give the pre-activation, as nine [BLOCK_C]
accumulators. (Session 26's kernels loaded the nine shifted tiles of every row for every tap; on the
H100 the window made the convolution's forward + backward over one 224 x 224 x 64 step's largest maps
1.8x faster, `benchmarks/bench_dwconv.py`, docs/BENCHMARKS.md.)"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_launch import _empty, _env_int   # _empty: NaN-filled under SSM_KERNELS_POISON=1


@triton.jit
def _w(w_ptr, offs_c, mc, t: tl.constexpr):
    """The weights of tap t for a block of channels, fp32 [BLOCK_C, 1]."""
    return tl.load(w_ptr + offs_c * 9 + t, mask=mc, other=0.0).to(tl.float32)[:, None]


@triton.jit
def _row(base, ii, offs_w, offs_c, mc, H, W, C, CHANNELS_LAST: tl.constexpr):
    """Row ii of a map at columns j - 1, j, j + 1 for a block of channels and columns: three fp32
    [BLOCK_C, BLOCK_W] tiles, zero outside the map. Channels-last (the batch's map at base is (H, W, C)) or
    channels-first ((C, H, W))."""
    row_ok = (ii >= 0) & (ii < H)
    jl = offs_w - 1
    jr = offs_w + 1
    ml = mc[:, None] & ((jl >= 0) & (jl < W) & row_ok)[None, :]
    mm = mc[:, None] & ((offs_w < W) & row_ok)[None, :]
    mr = mc[:, None] & ((jr < W) & row_ok)[None, :]
    if CHANNELS_LAST:
        p = base + (ii * W + offs_w).to(tl.int64)[None, :] * C + offs_c[:, None]
        return (tl.load(p - C, mask=ml, other=0.0).to(tl.float32), tl.load(p, mask=mm, other=0.0).to(tl.float32),
                tl.load(p + C, mask=mr, other=0.0).to(tl.float32))
    p = base + offs_c[:, None].to(tl.int64) * H * W + ii * W + offs_w[None, :]
    return (tl.load(p - 1, mask=ml, other=0.0).to(tl.float32), tl.load(p, mask=mm, other=0.0).to(tl.float32),
            tl.load(p + 1, mask=mr, other=0.0).to(tl.float32))


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
    w0, w1, w2 = _w(w_ptr, offs_c, mc, 0), _w(w_ptr, offs_c, mc, 1), _w(w_ptr, offs_c, mc, 2)
    w3, w4, w5 = _w(w_ptr, offs_c, mc, 3), _w(w_ptr, offs_c, mc, 4), _w(w_ptr, offs_c, mc, 5)
    w6, w7, w8 = _w(w_ptr, offs_c, mc, 6), _w(w_ptr, offs_c, mc, 7), _w(w_ptr, offs_c, mc, 8)
    a0, a1, a2 = _row(xb, i0 - 1, offs_w, offs_c, mc, H, W, C, True)   # the row above
    m0, m1, m2 = _row(xb, i0, offs_w, offs_c, mc, H, W, C, True)       # this row
    for r in range(R):
        i = i0 + r
        d0, d1, d2 = _row(xb, i + 1, offs_w, offs_c, mc, H, W, C, True)   # the row below
        acc = w0 * a0 + w1 * a1 + w2 * a2 + w3 * m0 + w4 * m1 + w5 * m2 + w6 * d0 + w7 * d1 + w8 * d2
        y = acc * tl.sigmoid(acc)
        mo = mc[:, None] & ((offs_w < W) & (i < H))[None, :]
        tl.store(yb + i * W + offs_w[None, :], y.to(y_ptr.dtype.element_ty), mask=mo)
        a0, a1, a2 = m0, m1, m2
        m0, m1, m2 = d0, d1, d2


@triton.jit
def _dw_bwd_pre_kernel(x_ptr, w_ptr, gy_ptr, gp_ptr, gwp_ptr, H, W, C, n_hblk,
                       R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr):
    """gp = gy * silu'(pre), channels-first fp32; this program's share of the weight gradient (its rows
    and columns), into row (pid0 * n_wblk + pid1) of (P, C, 9). The nine shifted input tiles that give
    the pre-activation also give the weight gradient's nine row sums."""
    b, i0, offs_w, offs_c, mc = _tile(n_hblk, C, R, BLOCK_C, BLOCK_W)
    xb = x_ptr + b.to(tl.int64) * H * W * C
    cf = b.to(tl.int64) * C * H * W + offs_c[:, None].to(tl.int64) * H * W   # channels-first rows
    w0, w1, w2 = _w(w_ptr, offs_c, mc, 0), _w(w_ptr, offs_c, mc, 1), _w(w_ptr, offs_c, mc, 2)
    w3, w4, w5 = _w(w_ptr, offs_c, mc, 3), _w(w_ptr, offs_c, mc, 4), _w(w_ptr, offs_c, mc, 5)
    w6, w7, w8 = _w(w_ptr, offs_c, mc, 6), _w(w_ptr, offs_c, mc, 7), _w(w_ptr, offs_c, mc, 8)
    g0 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    g1 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    g2 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    g3 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    g4 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    g5 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    g6 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    g7 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    g8 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    a0, a1, a2 = _row(xb, i0 - 1, offs_w, offs_c, mc, H, W, C, True)
    m0, m1, m2 = _row(xb, i0, offs_w, offs_c, mc, H, W, C, True)
    for r in range(R):
        i = i0 + r
        d0, d1, d2 = _row(xb, i + 1, offs_w, offs_c, mc, H, W, C, True)
        acc = w0 * a0 + w1 * a1 + w2 * a2 + w3 * m0 + w4 * m1 + w5 * m2 + w6 * d0 + w7 * d1 + w8 * d2
        mo = mc[:, None] & ((offs_w < W) & (i < H))[None, :]
        gy = tl.load(gy_ptr + cf + i * W + offs_w[None, :], mask=mo, other=0.0).to(tl.float32)
        s = tl.sigmoid(acc)
        gp = tl.where(mo, gy * s * (1.0 + acc * (1.0 - s)), 0.0)
        tl.store(gp_ptr + cf + i * W + offs_w[None, :], gp, mask=mo)
        # tap (p, q) multiplies x[i + p - 1, j + q - 1]: rows above / this / below, columns left / here / right
        g0 += tl.sum(gp * a0, axis=1)
        g1 += tl.sum(gp * a1, axis=1)
        g2 += tl.sum(gp * a2, axis=1)
        g3 += tl.sum(gp * m0, axis=1)
        g4 += tl.sum(gp * m1, axis=1)
        g5 += tl.sum(gp * m2, axis=1)
        g6 += tl.sum(gp * d0, axis=1)
        g7 += tl.sum(gp * d1, axis=1)
        g8 += tl.sum(gp * d2, axis=1)
        a0, a1, a2 = m0, m1, m2
        m0, m1, m2 = d0, d1, d2
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
    b, i0, offs_w, offs_c, mc = _tile(n_hblk, C, R, BLOCK_C, BLOCK_W)
    gpb = gp_ptr + b.to(tl.int64) * C * H * W
    gxb = gx_ptr + b.to(tl.int64) * H * W * C
    w0, w1, w2 = _w(w_ptr, offs_c, mc, 0), _w(w_ptr, offs_c, mc, 1), _w(w_ptr, offs_c, mc, 2)
    w3, w4, w5 = _w(w_ptr, offs_c, mc, 3), _w(w_ptr, offs_c, mc, 4), _w(w_ptr, offs_c, mc, 5)
    w6, w7, w8 = _w(w_ptr, offs_c, mc, 6), _w(w_ptr, offs_c, mc, 7), _w(w_ptr, offs_c, mc, 8)
    a0, a1, a2 = _row(gpb, i0 - 1, offs_w, offs_c, mc, H, W, C, False)
    m0, m1, m2 = _row(gpb, i0, offs_w, offs_c, mc, H, W, C, False)
    for r in range(R):
        i = i0 + r
        d0, d1, d2 = _row(gpb, i + 1, offs_w, offs_c, mc, H, W, C, False)
        # row i - p + 1 is below / this / above for p = 0 / 1 / 2; column j - q + 1 right / here / left
        acc = w0 * d2 + w1 * d1 + w2 * d0 + w3 * m2 + w4 * m1 + w5 * m0 + w6 * a2 + w7 * a1 + w8 * a0
        mo = mc[:, None] & ((offs_w < W) & (i < H))[None, :]
        tl.store(gxb + (i * W + offs_w).to(tl.int64)[None, :] * C + offs_c[:, None], acc.to(gx_ptr.dtype.element_ty),
                 mask=mo)
        a0, a1, a2 = m0, m1, m2
        m0, m1, m2 = d0, d1, d2


def _blocks(h: int, w: int, c: int):
    """(R, BLOCK_C, BLOCK_W, warps): 8 rows of up to 32 columns x 16 channels a program, 4 warps, the best of
    the tiles timed on an H100 over one 224 x 224 x 64 step's maps (session 28, docs/BENCHMARKS.md; the
    window kernels at session 26's 8 x 32 x 64, 8 warps, were 1.14x slower, and that tile left the
    backward's first kernel at 255 registers). SSM_DW_ROWS, SSM_DW_BLOCK_C, SSM_DW_BLOCK_W and SSM_DW_WARPS
    override them (benchmarks/bench_dwconv.py --tiles R,C,W,WARPS: the convolution alone on one step's
    maps); kernels/benchmarks/ptxas_report.py --dwconv gives each tile's registers on sm_90a."""
    return (min(_env_int("SSM_DW_ROWS", 8), h), min(_env_int("SSM_DW_BLOCK_C", 16), triton.next_power_of_2(c)),
            min(_env_int("SSM_DW_BLOCK_W", 32), triton.next_power_of_2(w)), _env_int("SSM_DW_WARPS", 4))


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
