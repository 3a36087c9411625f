"""Triton kernels for the selective scan with a one-wide state (d_state = 1: SRMA-Mamba's SS2D), forward
and backward, on sequences read in memory order.

Why a second pair beside triton_scan.py: there every tile is a (channels, N, L) tensor and the sequence
position of direction k is computed at run time (`_seq_pos`: reversed for k >= 2), so Triton cannot see
that a tile's addresses are contiguous. It then lays the tile out one element per thread along L, strided
by the block's thread count: loads are not vectorised, and every scan and every carry taken out of a tile
runs once per such stride across all threads (shuffles, shared memory, barriers). Compiled for sm_90a
the backward holds 255 registers and runs about 300 instructions per element; Nsight Compute on an H100
saw it issue one instruction every 3.8 cycles per scheduler at 1.5 active warps (docs/BENCHMARKS.md).

Here a tile is (BLOCK_D channels, BLOCK_L steps) read at contiguous, aligned addresses, so each thread
holds a run of consecutive steps (16 bytes of a bf16 row) and scans it serially before the cross-thread
part. The direction is a compile-time constant instead: REV=True runs the recurrence from the end of
memory to its start (VMamba's directions 2 and 3) by walking the tiles backwards and scanning each in
reverse, so a launch runs one direction. The four-direction scan becomes four launches (directions 0 and
2 on the map, 1 and 3 on its transposed copy; triton_launch), and the second launch on a buffer adds to
what the first stored (ACC) instead of adding with atomics.

Tiles are indexed by memory position: tile c holds steps [c BLOCK_L, (c + 1) BLOCK_L); the state saved
for the backward at slot j (one per backward tile of SUB steps) is the state entering backward tile j in
the direction's order: before position j SUB ascending, after position (j + 1) SUB - 1 when REV.
Segments (the chunked scan) split the tiles of a sequence into runs of `tps`, as in triton_scan.py; the
carries between them are composed in the direction's order.

The backward takes the adjoint's decay one step on by the divide shift of triton_scan.py (scan
a_t g_t on the unshifted decays, then multiply by 1 / a_t), with 1 / a_t as exp(-delta A) clamped at 2^60
(a_t clamped at 2^-60). dA, dD and dbias are summed element-wise across the tiles and reduced once at the
end; dB and dC (shared by all channels of a group) are summed over the block's channels, then added
across blocks with atomics.

STAGES software-pipelines the tile loop (tl.range num_stages: the next tiles' loads issued as cp.async into
shared memory while one is scanned); 1, no pipelining, until timed on a GPU (triton_launch._scan1_stages).

Both run on CPU tensors under TRITON_INTERPRET=1 (the CI tests).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .triton_scan import DIVIDE_CLAMP, DIVIDE_UNCLAMP, _channel_params, _combine, _step, _step_grads


@triton.jit
def _setup(A_ptr, D_ptr, bias_ptr, dim, L, dpg, n_bc_groups, n_dsl, k, kd, seg_off, KP: tl.constexpr,
           CROSS: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_D: tl.constexpr,
           BLOCK_L: tl.constexpr):
    """What both kernels take from the program's place in the grid: its segment, channels, their parameters
    (A, D, bias: zeros where absent) and the row offsets of u-shaped tensors, of delta's slice kd, of B and C
    (the direction's group when CROSS, else the channel block's), and of the per-channel state buffers."""
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    seg = tl.program_id(2) + seg_off
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < dim
    offs_l = tl.arange(0, BLOCK_L)
    vch = k * dim + offs_d
    if CROSS:
        grp = kd
    else:
        grp = (pid_d * BLOCK_D) // dpg
    A = tl.load(A_ptr + vch, mask=mask_d, other=0.0).to(tl.float32)
    Dv, bias = _channel_params(D_ptr, bias_ptr, vch, mask_d, HAS_D, HAS_BIAS, BLOCK_D)
    row = (pid_b.to(tl.int64) * dim + offs_d[:, None]) * L
    drow = (pid_b.to(tl.int64) * n_dsl * dim + kd * dim + offs_d[:, None]) * L
    bc = (pid_b.to(tl.int64) * n_bc_groups + grp) * L
    sv = pid_b.to(tl.int64) * KP * dim + vch
    return seg, offs_d, mask_d, offs_l, A, Dv, bias, row, drow, bc, sv


@triton.jit
def _scan1_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
    out_ptr, last_ptr, hsave_ptr, hseg_ptr, pseg_ptr,
    dim, L, dpg, n_chunks, n_bc_groups, n_dsl, k, kd, n_seg, tps, seg_off, n_saved,
    KP: tl.constexpr, CROSS: tl.constexpr, REV: tl.constexpr, ACC: tl.constexpr, HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, SAVE: tl.constexpr,
    STORE_LAST: tl.constexpr, LOCAL: tl.constexpr, SEGMENTED: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, SUB: tl.constexpr, STAGES: tl.constexpr,
):
    """Direction k (its parameters A, D, bias and state slots), reading slice kd of delta's n_dsl and group
    kd of B and C (CROSS), else the channel block's group. LOCAL: segment seg_off + program stores its end
    state from a zero start and the product of its decays; else segment program(2) does the full work."""
    seg, offs_d, mask_d, offs_l, A, Dv, bias, row, drow, bc, sv = _setup(
        A_ptr, D_ptr, bias_ptr, dim, L, dpg, n_bc_groups, n_dsl, k, kd, seg_off, KP, CROSS, HAS_D, HAS_BIAS,
        BLOCK_D, BLOCK_L)
    c_lo = seg * tps
    c_hi = tl.minimum(c_lo + tps, n_chunks)
    h = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if SEGMENTED and not LOCAL:  # the true start state: the segments before this one, in the direction's order
        if REV:
            for i in range(0, n_seg - 1 - seg):
                s = n_seg - 1 - i
                h = tl.load(pseg_ptr + sv * n_seg + s, mask=mask_d, other=0.0) * h + \
                    tl.load(hseg_ptr + sv * n_seg + s, mask=mask_d, other=0.0)
        else:
            for s in range(0, seg):
                h = tl.load(pseg_ptr + sv * n_seg + s, mask=mask_d, other=0.0) * h + \
                    tl.load(hseg_ptr + sv * n_seg + s, mask=mask_d, other=0.0)
    prod = tl.full((BLOCK_D,), 1.0, dtype=tl.float32)
    if REV:
        end = offs_l == 0   # where a tile's scan ends, in the direction's order
    else:
        end = offs_l == BLOCK_L - 1
    for i in tl.range(c_lo, c_hi, num_stages=STAGES):
        if REV:
            c = c_hi - 1 - (i - c_lo)
        else:
            c = i
        t = c * BLOCK_L + offs_l
        mask_t = t < L
        m2 = mask_d[:, None] & mask_t[None, :]
        u = tl.load(u_ptr + row + t[None, :], mask=m2, other=0.0).to(tl.float32)
        _, dt = _step(tl.load(delta_ptr + drow + t[None, :], mask=m2, other=0.0), bias, HAS_BIAS, SOFTPLUS)
        Bv = tl.load(B_ptr + bc + t, mask=mask_t, other=0.0).to(tl.float32)
        dA = tl.where(m2, tl.exp(dt * A[:, None]), 1.0)
        bx = tl.where(m2, dt * u * Bv[None, :], 0.0)
        aa, bb = tl.associative_scan((dA, bx), 1, _combine, reverse=REV)
        hs = aa * h[:, None] + bb
        if SAVE and not LOCAL:  # the state entering each backward tile of this tile
            for j in tl.static_range(0, BLOCK_L // SUB):
                if REV:
                    if j == BLOCK_L // SUB - 1:
                        hj = h
                    else:
                        hj = tl.sum(tl.where((offs_l == (j + 1) * SUB)[None, :], hs, 0.0), axis=1)
                else:
                    if j == 0:
                        hj = h
                    else:
                        hj = tl.sum(tl.where((offs_l == j * SUB - 1)[None, :], hs, 0.0), axis=1)
                tl.store(hsave_ptr + sv * n_saved + c * (BLOCK_L // SUB) + j, hj, mask=mask_d)
        if LOCAL:
            prod = prod * tl.sum(tl.where(end[None, :], aa, 0.0), axis=1)
        else:
            Cv = tl.load(C_ptr + bc + t, mask=mask_t, other=0.0).to(tl.float32)
            y = hs * Cv[None, :]
            if HAS_D:
                y += Dv[:, None] * u
            if HAS_Z:
                zz = tl.load(z_ptr + row + t[None, :], mask=m2, other=0.0).to(tl.float32)
                y = y * zz * tl.sigmoid(zz)
            if ACC:  # a direction before this one stored its share (this launch follows that one)
                y += tl.load(out_ptr + row + t[None, :], mask=m2, other=0.0).to(tl.float32)
            tl.store(out_ptr + row + t[None, :], y.to(out_ptr.dtype.element_ty), mask=m2)
        h = tl.sum(tl.where(end[None, :], hs, 0.0), axis=1)
    if LOCAL:
        tl.store(hseg_ptr + sv * n_seg + seg, h, mask=mask_d)
        tl.store(pseg_ptr + sv * n_seg + seg, prod, mask=mask_d)
    elif STORE_LAST:  # the segment that ends the sequence in the direction's order
        if REV:
            last_seg = 0
        else:
            last_seg = n_seg - 1
        tl.store(last_ptr + sv, h, mask=mask_d & (seg == last_seg))


@triton.jit
def _scan1_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, hsave_ptr,
    du_ptr, ddelta_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dz_ptr, dbias_ptr, gseg_ptr, pseg_ptr,
    dim, L, dpg, n_chunks, n_bc_groups, n_dsl, k, kd, n_seg, tps, seg_off, n_saved,
    KP: tl.constexpr, CROSS: tl.constexpr, REV: tl.constexpr, ACC: tl.constexpr, HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, LOCAL: tl.constexpr,
    SEGMENTED: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, STAGES: tl.constexpr,
):
    """The adjoint runs against the direction: from the end of memory to its start unless REV. dA, dD and
    dbias are stored per (batch, channel, segment) and summed on the host; du (ACC: added to what the
    launch of another direction stored) and ddelta in the slices of this launch. LOCAL: segment
    seg_off + program stores its start adjoint from a zero end and the product of the adjoint's decays,
    reading only delta, C, dout (and z). BLOCK_L is the forward's SUB: the saved state slot of tile c is c."""
    seg, offs_d, mask_d, offs_l, A, Dv, bias, row, drow, bc, sv = _setup(
        A_ptr, D_ptr, bias_ptr, dim, L, dpg, n_bc_groups, n_dsl, k, kd, seg_off, KP, CROSS, HAS_D, HAS_BIAS,
        BLOCK_D, BLOCK_L)
    c_lo = seg * tps
    c_hi = tl.minimum(c_lo + tps, n_chunks)
    g = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if SEGMENTED and not LOCAL:  # the true adjoint entering this segment: the segments after it in the direction
        if REV:
            for s in range(0, seg):
                g = tl.load(pseg_ptr + sv * n_seg + s, mask=mask_d, other=0.0) * g + \
                    tl.load(gseg_ptr + sv * n_seg + s, mask=mask_d, other=0.0)
        else:
            for i in range(0, n_seg - 1 - seg):
                s = n_seg - 1 - i
                g = tl.load(pseg_ptr + sv * n_seg + s, mask=mask_d, other=0.0) * g + \
                    tl.load(gseg_ptr + sv * n_seg + s, mask=mask_d, other=0.0)
    if REV:
        gend = offs_l == BLOCK_L - 1   # where the adjoint's scan of a tile ends
    else:
        gend = offs_l == 0
    prod = tl.full((BLOCK_D,), 1.0, dtype=tl.float32)
    dA_acc = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    dbias_acc = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    for i in tl.range(c_lo, c_hi, num_stages=STAGES):
        if REV:
            c = i
        else:
            c = c_hi - 1 - (i - c_lo)
        t = c * BLOCK_L + offs_l
        mask_t = t < L
        m2 = mask_d[:, None] & mask_t[None, :]
        dt_raw, dt = _step(tl.load(delta_ptr + drow + t[None, :], mask=m2, other=0.0), bias, HAS_BIAS, SOFTPLUS)
        dA = tl.where(m2, tl.exp(dt * A[:, None]), 1.0)
        Cv = tl.load(C_ptr + bc + t, mask=mask_t, other=0.0).to(tl.float32)
        dout = tl.load(dout_ptr + row + t[None, :], mask=m2, other=0.0).to(tl.float32)
        if HAS_Z:
            zz = tl.load(z_ptr + row + t[None, :], mask=m2, other=0.0).to(tl.float32)
            sz = tl.sigmoid(zz)
            dy = dout * zz * sz
        else:
            dy = dout
        # y_t = a_t (C_t dy_t + y_next) against the direction, then g_t = y_t / a_t
        ac = tl.maximum(dA, DIVIDE_CLAMP)
        ga, gb = tl.associative_scan((ac, ac * (dy * Cv[None, :])), 1, _combine, reverse=not REV)
        ys = ga * g[:, None] + gb
        g = tl.sum(tl.where(gend[None, :], ys, 0.0), axis=1)
        if LOCAL:
            prod = prod * tl.sum(tl.where(gend[None, :], ga, 0.0), axis=1)
        else:
            gs = tl.where(m2, ys * tl.minimum(tl.exp(-dt * A[:, None]), DIVIDE_UNCLAMP), 0.0)
            u = tl.load(u_ptr + row + t[None, :], mask=m2, other=0.0).to(tl.float32)
            Bv = tl.load(B_ptr + bc + t, mask=mask_t, other=0.0).to(tl.float32)
            h0 = tl.load(hsave_ptr + sv * n_saved + c, mask=mask_d, other=0.0)
            dtu = dt * u
            bx = dtu * Bv[None, :]
            aa, bb = tl.associative_scan((dA, bx), 1, _combine, reverse=REV)
            hs = aa * h0[:, None] + bb
            if HAS_Z:
                y = hs * Cv[None, :]
                if HAS_D:
                    y += Dv[:, None] * u
                dzv = dout * y * sz * (1.0 + zz * (1.0 - sz))
                tl.store(dz_ptr + row + t[None, :], dzv.to(dz_ptr.dtype.element_ty), mask=m2)
            q = gs * (hs - bx)  # g_t * a_t * h_{t-1}
            ddt = gs * Bv[None, :] * u + q * A[:, None]
            dA_acc += q * dt
            ddt, duv, dD_acc, dbias_acc = _step_grads(ddt, gs * Bv[None, :] * dt, dy, u, dt_raw, Dv, m2, dD_acc,
                                                      dbias_acc, HAS_D, SOFTPLUS)
            tl.store(ddelta_ptr + drow + t[None, :], ddt.to(ddelta_ptr.dtype.element_ty), mask=m2)
            if ACC:
                duv += tl.load(du_ptr + row + t[None, :], mask=m2, other=0.0).to(tl.float32)
            tl.store(du_ptr + row + t[None, :], duv.to(du_ptr.dtype.element_ty), mask=m2)
            # B and C are shared by the channels of a group: this block's share, added in (zeroed) float32
            tl.atomic_add(dB_ptr + bc + t, tl.sum(gs * dtu, axis=0), mask=mask_t, sem="relaxed")
            tl.atomic_add(dC_ptr + bc + t, tl.sum(tl.where(m2, hs * dy, 0.0), axis=0), mask=mask_t, sem="relaxed")
    if LOCAL:
        tl.store(gseg_ptr + sv * n_seg + seg, g, mask=mask_d)
        tl.store(pseg_ptr + sv * n_seg + seg, prod, mask=mask_d)
    else:
        tl.store(dA_ptr + sv * n_seg + seg, tl.sum(dA_acc, axis=1), mask=mask_d)
        if HAS_D:
            tl.store(dD_ptr + sv * n_seg + seg, tl.sum(dD_acc, axis=1), mask=mask_d)
        if HAS_BIAS:
            tl.store(dbias_ptr + sv * n_seg + seg, tl.sum(dbias_acc, axis=1), mask=mask_d)
