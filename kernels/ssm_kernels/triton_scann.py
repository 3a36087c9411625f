"""Triton kernels for the plain selective scan with a wider state (d_state N >= 2: UltraScanNet's 8, the
benchmark's 16), forward and backward, one state at a time.

Why a third pair beside triton_scan.py and triton_scan1.py: the general kernels hold a (channels, N, steps)
tile and scan it along its last axis, so every tile tensor is N times the size of the data it is computed
from and the registers a thread holds grow with N (the backward at 255 with spills for N = 16, compiled for
sm_90a: docs/BENCHMARKS.md), which keeps the tiles short and the programs few per SM. Here a tile is
(BLOCK_D channels, BLOCK_L steps) at contiguous addresses, as in triton_scan1: u, delta (and z, dout) are
read and turned into the step once per tile, then a loop over the N states scans one
(channels, steps) recurrence per state from that state's row of B and C and adds its share to the output
(forward) or to the gradients of u and delta (backward). The state entering a tile is a (BLOCK_D, N)
tensor; each state's column is taken out and put back with a one-hot select, which costs BLOCK_D x N per
state and tile against the tile's BLOCK_D x BLOCK_L.

The backward takes the adjoint's decay one step on by the divide shift (triton_scan.py: scan a_t g_t on
the unshifted decays, then multiply by 1 / a_t, a_t clamped at 2^-60), recomputes each state's tile from
the state the forward saved at the tile's start, adds dB and dC (shared by the channels of a group) over
the block's channels, then across blocks with atomics, and stores dA, dD and dbias once per program.

Plain scan only (the four-direction SS2D scan of SRMA-Mamba is one-wide: triton_scan1) and serial along L:
one program a (batch, channel block) walks every tile of the sequence; the launcher's split into segments
is not used here (the N >= 2 shapes UltraScanNet runs have thousands of programs). STAGES software-pipelines
the tile loop as in triton_scan1, NSTAGES the loop over the states (the next states' B and C rows in flight
while one is scanned). That loop is not unrolled: unrolled (tl.static_range), the compiler hoisted every
state's loads to the top of the tile and spilled 148-7,700 bytes a thread at N = 16 (sm_90a).

Timed on an H100 (session 31, docs/BENCHMARKS.md): at N = 16, forward + backward 1.33-1.95x the general
kernels and 0.46-0.89x mamba_ssm's CUDA kernels.

Both run on CPU tensors under TRITON_INTERPRET=1 (the CI tests).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .triton_scan import DIVIDE_CLAMP, DIVIDE_UNCLAMP, _channel_params, _combine, _step, _step_grads


@triton.jit
def _col(x, offs_n, n):
    """Column n of a (BLOCK_D, BLOCK_N) tensor, as a (BLOCK_D,) vector."""
    return tl.sum(tl.where(offs_n[None, :] == n, x, 0.0), axis=1)


@triton.jit
def _setup(A_ptr, D_ptr, bias_ptr, dim, L, dpg, n_bc_groups, N: tl.constexpr, HAS_D: tl.constexpr,
           HAS_BIAS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    """The program's channels and their parameters (A as (BLOCK_D, BLOCK_N); D, bias: zeros where absent),
    the row offsets of u-shaped tensors and of the group's B / C (state n's row: + n L), and the offset of
    the channels' first state in per-state buffers ((batch, dim, N, ...) flattened: + n)."""
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < dim
    offs_n = tl.arange(0, BLOCK_N)
    mask_dn = mask_d[:, None] & (offs_n < N)[None, :]
    offs_l = tl.arange(0, BLOCK_L)
    A = tl.load(A_ptr + offs_d[:, None] * N + offs_n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
    Dv, bias = _channel_params(D_ptr, bias_ptr, offs_d, mask_d, HAS_D, HAS_BIAS, BLOCK_D)
    row = (pid_b.to(tl.int64) * dim + offs_d[:, None]) * L
    grp = (pid_d * BLOCK_D) // dpg
    bc = (pid_b.to(tl.int64) * n_bc_groups + grp) * N * L
    sv = (pid_b.to(tl.int64) * dim + offs_d) * N
    return offs_d, mask_d, offs_n, mask_dn, offs_l, A, Dv, bias, row, bc, sv


@triton.jit
def _scann_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, last_ptr, hsave_ptr,
    dim, L, dpg, n_chunks, n_bc_groups, n_saved,
    N: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    SAVE: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr, SUB: tl.constexpr,
    STAGES: tl.constexpr, NSTAGES: tl.constexpr,
):
    """out = sum over states n of C_n h_n (+ D u, gated by silu(z)); last = the state after step L - 1;
    SAVE: the state entering every backward tile of SUB steps, slot c (BLOCK_L // SUB) + j of n_saved."""
    offs_d, mask_d, offs_n, mask_dn, offs_l, A, Dv, bias, row, bc, sv = _setup(
        A_ptr, D_ptr, bias_ptr, dim, L, dpg, n_bc_groups, N, HAS_D, HAS_BIAS, BLOCK_D, BLOCK_N, BLOCK_L)
    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    last_l = (offs_l == BLOCK_L - 1)[None, :]
    for c in tl.range(0, n_chunks, num_stages=STAGES):
        t = c * BLOCK_L + offs_l
        mask_t = t < L
        m2 = mask_d[:, None] & mask_t[None, :]
        u = tl.load(u_ptr + row + t[None, :], mask=m2, other=0.0).to(tl.float32)
        _, dt = _step(tl.load(delta_ptr + row + t[None, :], mask=m2, other=0.0), bias, HAS_BIAS, SOFTPLUS)
        dtu = dt * u
        y = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
        h_next = h
        for n in tl.range(0, N, num_stages=NSTAGES):   # a loop, not unrolled (see the module's note)
            h_n = _col(h, offs_n, n)
            Bn = tl.load(B_ptr + bc + n * L + t, mask=mask_t, other=0.0).to(tl.float32)
            Cn = tl.load(C_ptr + bc + n * L + t, mask=mask_t, other=0.0).to(tl.float32)
            dA = tl.where(m2, tl.exp(dt * _col(A, offs_n, n)[:, None]), 1.0)
            aa, bb = tl.associative_scan((dA, tl.where(m2, dtu * Bn[None, :], 0.0)), 1, _combine)
            hs = aa * h_n[:, None] + bb
            y += hs * Cn[None, :]
            if SAVE:  # the state entering each backward tile of this tile
                for j in tl.static_range(0, BLOCK_L // SUB):
                    if j == 0:
                        hj = h_n
                    else:
                        hj = tl.sum(tl.where((offs_l == j * SUB - 1)[None, :], hs, 0.0), axis=1)
                    tl.store(hsave_ptr + (sv + n) * n_saved + c * (BLOCK_L // SUB) + j, hj, mask=mask_d)
            h_next = tl.where(offs_n[None, :] == n, tl.sum(tl.where(last_l, hs, 0.0), axis=1)[:, None], h_next)
        h = h_next
        if HAS_D:
            y += Dv[:, None] * u
        if HAS_Z:
            zz = tl.load(z_ptr + row + t[None, :], mask=m2, other=0.0).to(tl.float32)
            y = y * zz * tl.sigmoid(zz)
        tl.store(out_ptr + row + t[None, :], y.to(out_ptr.dtype.element_ty), mask=m2)
    tl.store(last_ptr + sv[:, None] + offs_n[None, :], h, mask=mask_dn)


@triton.jit
def _scann_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, hsave_ptr,
    du_ptr, ddelta_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dz_ptr, dbias_ptr,
    dim, L, dpg, n_chunks, n_bc_groups, n_saved,
    N: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr, STAGES: tl.constexpr,
    NSTAGES: tl.constexpr,
):
    """Tiles of BLOCK_L (the forward's SUB) from the end; the saved state slot of tile c is c. du, ddelta,
    dz stored in their buffers' dtypes; dA (batch, dim, N), dD and dbias (batch, dim) per program; dB, dC
    (batch, groups, N, L) float32, zeroed, added with atomics."""
    offs_d, mask_d, offs_n, mask_dn, offs_l, A, Dv, bias, row, bc, sv = _setup(
        A_ptr, D_ptr, bias_ptr, dim, L, dpg, n_bc_groups, N, HAS_D, HAS_BIAS, BLOCK_D, BLOCK_N, BLOCK_L)
    g = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dA_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    dbias_acc = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
    first_l = (offs_l == 0)[None, :]
    for i in tl.range(0, n_chunks, num_stages=STAGES):
        c = n_chunks - 1 - i
        t = c * BLOCK_L + offs_l
        mask_t = t < L
        m2 = mask_d[:, None] & mask_t[None, :]
        dt_raw, dt = _step(tl.load(delta_ptr + row + t[None, :], mask=m2, other=0.0), bias, HAS_BIAS, SOFTPLUS)
        u = tl.load(u_ptr + row + t[None, :], mask=m2, other=0.0).to(tl.float32)
        dout = tl.load(dout_ptr + row + t[None, :], mask=m2, other=0.0).to(tl.float32)
        if HAS_Z:
            zz = tl.load(z_ptr + row + t[None, :], mask=m2, other=0.0).to(tl.float32)
            sz = tl.sigmoid(zz)
            dy = dout * zz * sz
        else:
            dy = dout
        dtu = dt * u
        ddt = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
        dus = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)   # sum over states of g_t B_t
        y = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
        g_next = g
        for n in tl.range(0, N, num_stages=NSTAGES):   # a loop, not unrolled (see the module's note)
            a_n = _col(A, offs_n, n)[:, None]
            Bn = tl.load(B_ptr + bc + n * L + t, mask=mask_t, other=0.0).to(tl.float32)
            Cn = tl.load(C_ptr + bc + n * L + t, mask=mask_t, other=0.0).to(tl.float32)
            h0 = tl.load(hsave_ptr + (sv + n) * n_saved + c, mask=mask_d, other=0.0)
            dA = tl.where(m2, tl.exp(dt * a_n), 1.0)
            # the adjoint g_t = a_{t+1} g_{t+1} + C_t dy_t: y_t = a_t (C_t dy_t + y_{t+1}) backwards, g_t = y_t / a_t
            ac = tl.maximum(dA, DIVIDE_CLAMP)
            ga, gb = tl.associative_scan((ac, ac * (dy * Cn[None, :])), 1, _combine, reverse=True)
            ys = ga * _col(g, offs_n, n)[:, None] + gb
            g_next = tl.where(offs_n[None, :] == n, tl.sum(tl.where(first_l, ys, 0.0), axis=1)[:, None], g_next)
            gs = tl.where(m2, ys * tl.minimum(tl.exp(-dt * a_n), DIVIDE_UNCLAMP), 0.0)
            # this state's tile recomputed from the state saved at its start
            bx = dtu * Bn[None, :]
            aa, bb = tl.associative_scan((dA, bx), 1, _combine)
            hs = aa * h0[:, None] + bb
            if HAS_Z:
                y += hs * Cn[None, :]
            q = gs * (hs - bx)  # g_t a_t h_{t-1}
            gB = gs * Bn[None, :]
            ddt += gB * u + q * a_n
            dus += gB
            dA_acc = tl.where(offs_n[None, :] == n, dA_acc + tl.sum(q * dt, axis=1)[:, None], dA_acc)
            # B and C are shared by the channels of a group: this block's share, added in (zeroed) float32
            tl.atomic_add(dB_ptr + bc + n * L + t, tl.sum(gs * dtu, axis=0), mask=mask_t, sem="relaxed")
            tl.atomic_add(dC_ptr + bc + n * L + t, tl.sum(tl.where(m2, hs * dy, 0.0), axis=0), mask=mask_t,
                          sem="relaxed")
        g = g_next
        if HAS_Z:
            if HAS_D:
                y += Dv[:, None] * u
            dzv = dout * y * sz * (1.0 + zz * (1.0 - sz))
            tl.store(dz_ptr + row + t[None, :], dzv.to(dz_ptr.dtype.element_ty), mask=m2)
        ddt, duv, dD_acc, dbias_acc = _step_grads(ddt, dus * dt, dy, u, dt_raw, Dv, m2, dD_acc, dbias_acc, HAS_D,
                                                  SOFTPLUS)
        tl.store(ddelta_ptr + row + t[None, :], ddt.to(ddelta_ptr.dtype.element_ty), mask=m2)
        tl.store(du_ptr + row + t[None, :], duv.to(du_ptr.dtype.element_ty), mask=m2)
    tl.store(dA_ptr + sv[:, None] + offs_n[None, :], dA_acc, mask=mask_dn)
    pv = tl.program_id(0).to(tl.int64) * dim + offs_d
    if HAS_D:
        tl.store(dD_ptr + pv, tl.sum(dD_acc, axis=1), mask=mask_d)
    if HAS_BIAS:
        tl.store(dbias_ptr + pv, tl.sum(dbias_acc, axis=1), mask=mask_d)
