"""Host side of the Triton kernels: block sizes, buffers, grid, and reduction of partial gradients."""
from __future__ import annotations

import os
from functools import lru_cache

import torch
import triton

from .triton_scan import SHIFTS, _scan_bwd_kernel, _scan_fwd_kernel


def _empty(*shape, device, dtype):
    """Output buffers; filled with NaN when SSM_KERNELS_POISON=1 so a missed store cannot pass a test."""
    if os.environ.get("SSM_KERNELS_POISON", "0") not in ("", "0"):
        return torch.full(shape, float("nan"), device=device, dtype=dtype)
    return torch.empty(*shape, device=device, dtype=dtype)


def _env_int(name: str, default: int) -> int:
    """An integer tuning setting from the environment (SSM_*), `default` where it is unset or empty."""
    return int(os.environ.get(name, "") or default)


def _env_switch(name: str, default: str) -> bool:
    """An on / off setting from the environment ("1" or "0"; `default` where unset or empty); any other
    value is refused."""
    flag = os.environ.get(name, "") or default
    if flag not in ("0", "1"):
        raise ValueError(f"{name}={flag!r}: choose 0 or 1")
    return flag == "1"


def _pow2_divisor(n: int, cap: int) -> int:
    b = 1
    while b * 2 <= cap and n % (b * 2) == 0:
        b *= 2
    return b


def _blocks(dim, dpg, N, cross, L, scan1=False, scann=False):
    """Block sizes: few channels per program (many programs in flight: the scan over L is serial within
    one), long tiles along L. Overridable through SSM_BLOCK_D / SSM_BLOCK_L / SSM_NUM_WARPS for tuning.
    The one-wide-state kernels (scan1) take one channel a program (session 29's sweep: at every large SS2D
    map of the 224 x 224 x 64 step the fastest of 1, 2 and 4); the state-at-a-time ones (scann) SCANN_BLOCK."""
    bn = triton.next_power_of_2(max(N, 1))
    cap = int(os.environ.get("SSM_BLOCK_D", 0)) or (1 if scan1 else 2 if bn <= 2 else 1)  # general: sweep_scan.py, H100
    bd = min(cap, triton.next_power_of_2(dim)) if cross else _pow2_divisor(dpg, cap)
    if scann:
        cap = int(os.environ.get("SSM_BLOCK_D", 0)) or SCANN_BLOCK[0]
        bd = _pow2_divisor(dpg, cap)
    bl = int(os.environ.get("SSM_BLOCK_L", 0)) or (SCANN_BLOCK[1] if scann else 1024 if bn <= 2 else
                                                   (256 if bn <= 4 else 128))
    bl = max(16, min(bl, triton.next_power_of_2(max(L, 1))))
    nw = int(os.environ.get("SSM_NUM_WARPS", 0)) or 4
    return bd, bn, bl, nw


def _bwd_blocks(dim, dpg, layout, meta):
    """The backward's channel block and warps (its tile length: _bwd_tile). A wider channel block than the
    forward's sums dB and dC over more channels in registers before its atomics. SSM_BWD_BLOCK_D / SSM_BWD_NUM_WARPS override (default: the forward's), and
    SSM_BWD_SHIFT picks how the adjoint gets its decay one step on (reload | divide)."""
    cap = int(os.environ.get("SSM_BWD_BLOCK_D", 0))
    cross = layout != "plain"
    bd = meta["bd"] if not cap else (min(cap, triton.next_power_of_2(dim)) if cross else _pow2_divisor(dpg, cap))
    nw = int(os.environ.get("SSM_BWD_NUM_WARPS", 0)) or meta["nw"]
    name = os.environ.get("SSM_BWD_SHIFT", "") or bwd_defaults(meta["bn"], layout)[0]
    if name not in SHIFTS:
        raise ValueError(f"SSM_BWD_SHIFT={name!r}: choose one of {sorted(SHIFTS)}")
    return bd, nw, SHIFTS[name]


def _bwd_tile(bl, bn, layout):
    """The backward's tile length: a power-of-2 divisor of the forward's tile bl (>= 16), from SSM_BWD_BLOCK_L
    or bwd_defaults. Chosen at the forward, which saves the state at the start of every backward tile."""
    want = int(os.environ.get("SSM_BWD_BLOCK_L", 0)) or bwd_defaults(bn, layout)[1] or bl
    return max(16, min(bl, triton.next_power_of_2(want)))


def bwd_defaults(bn, layout):
    """(shift, tile length; 0 = the forward's) of the backward for a state of bn (padded) and the layout
    ("plain", or the four-direction scan's "transpose" / "strided": cross_layout).
    From the H200 sweep of session 15 (kernels/benchmarks/sweep_backward.py, docs/BENCHMARKS.md): where the
    state is 1-2 wide (the forward's tile is 1024: SRMA-Mamba's SS2D and the plain N = 1 shapes), the
    divide shift with a quarter-length backward tile for the strided four-direction scan (fwd+bwd
    1.02-1.28x on the six SS2D shapes, geometric mean 1.17x; the SRMA-Mamba training step 105.7 -> 100.9
    ms) and a half tile for the plain scan (1.00-1.68x on its four shapes). The transposed four-direction
    layout reads like the plain scan and takes its half tile (timed with it on an H100 in session 18:
    fwd+bwd 1.3-2.7x the strided layout; the tile itself not swept). Wider states in the general kernels
    (the four-direction scan at d_state >= 2, or SSM_SCANN=0) were not timed on a GPU: there the backward stays
    as it was (reload, the forward's tile). The plain scan's wider states run triton_scann, always divide."""
    if bn <= 2:
        return "divide", (256 if layout == "strided" else 512)
    return "reload", 0


# Segments (the chunked scan). The H200 sweep (kernels/benchmarks/sweep_segments.py, docs/BENCHMARKS.md)
# found splitting worth it only when the grid has fewer programs than the GPU has SMs: (2, 128, 401408)
# (128 programs on 132 SMs) ran 1.4-1.5x faster split to ~16 programs per SM; at 384 programs and more
# every split was as fast or slower (down to 0.6x: the local pass re-reads u, delta and B). So: split
# below SEG_BELOW_PER_SM programs per SM, then aim at SEG_PER_SM, keeping SEG_MIN_TILES tiles a segment.
# Overridable for tuning: SSM_SEGMENTS (a fixed count; 1 = serial), SSM_SEG_BELOW_PER_SM (inf: split at
# any grid size, as the sweep measures), SSM_SEG_PER_SM, SSM_SEG_MIN_TILES. The backward plans its own
# split (its grid and tiles differ from the forward's; the forward saves a state at every backward tile, so
# any split of either pass works with any of the other): SSM_BWD_SEGMENTS, SSM_BWD_SEG_BELOW_PER_SM,
# SSM_BWD_SEG_PER_SM, SSM_BWD_SEG_MIN_TILES override the four above for the backward only. Why: the same
# sweep saw the split backward alone at 4 programs per SM run stage 0's forward + backward 1.08x where
# the split forward lost 0.77-0.83x (384 programs), a lead not yet timed on its own.
SEG_BELOW_PER_SM = 1
SEG_PER_SM = 16
SEG_MIN_TILES = 2
# The one-wide-state kernels (SSM_SCAN1) split every grid: ~16 programs per SM below one per SM, ~4 above.
# From the H100 sweep of session 29 (kernels/benchmarks/sweep_backward.py --tune1, docs/BENCHMARKS.md) at one
# channel a program: stage 0 of the 224 x 224 x 64 step (192 programs a launch) 15.6 -> 10.1 ms forward +
# backward split in 3; (2, 192, 56, 896) (384) 2.83 -> 2.51 in 2; (2, 32, 32, 12544) (64) 3.11 ms in 33
# segments, 3.57 in 9.
SCAN1_SEG_PER_SM = 16
SCAN1_SEG_PER_SM_FULL = 4
SCAN1_SEG_BELOW_PER_SM = float("inf")


def plan_segments(programs: int, n_chunks: int, sms: int, per_sm: int = SEG_PER_SM,
                  min_tiles: int = SEG_MIN_TILES, below_per_sm: float = SEG_BELOW_PER_SM) -> int:
    """How many segments to split each sequence of n_chunks tiles into, for a grid of `programs`."""
    if programs >= below_per_sm * sms:
        return 1
    return max(1, min(triton.cdiv(per_sm * sms, programs), n_chunks // min_tiles))


@lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _segments(programs: int, n_chunks: int, device, backward: bool = False,
              scan1: bool = False) -> tuple[int, int]:
    """(n_seg, tiles per segment) for a grid of `programs` (batch x channel blocks x directions); the
    backward reads SSM_BWD_<name> before SSM_<name>. scan1: the one-wide-state kernels' policy
    (SCAN1_SEG_*)."""
    def env(name, default=0):
        v = os.environ.get(f"SSM_BWD_{name}", "") if backward else ""
        return v or os.environ.get(f"SSM_{name}", "") or default
    fixed = int(env("SEGMENTS"))
    if fixed:
        n = fixed
    elif device.type != "cuda":
        n = 1
    else:
        sms = _sm_count(device.index or 0)
        if scan1:
            per_sm = SCAN1_SEG_PER_SM if programs < sms else SCAN1_SEG_PER_SM_FULL
            below = SCAN1_SEG_BELOW_PER_SM
        else:
            per_sm, below = SEG_PER_SM, SEG_BELOW_PER_SM
        n = plan_segments(programs, n_chunks, sms, per_sm=int(env("SEG_PER_SM")) or per_sm,
                          min_tiles=int(env("SEG_MIN_TILES")) or SEG_MIN_TILES,
                          below_per_sm=float(env("SEG_BELOW_PER_SM")) or below)
    n = max(1, min(n, n_chunks))
    tps = triton.cdiv(n_chunks, n)
    return triton.cdiv(n_chunks, tps), tps


def cross_layout(save: bool = False) -> str:
    """How the four-direction scan reads the column-major directions: "strided" (read in place through a
    strided index; no copies, scattered loads) or "transpose" (directions 1 and 3 run as rows of a
    transposed copy of x, delta, B and C, their output and gradients transposed back). Default: "transpose",
    in training (save: a backward follows) and in inference alike; SSM_CROSS_LAYOUT overrides it.
    Why (H100, docs/BENCHMARKS.md): training since session 19 (forward + backward 1.3-2.7x on every SS2D
    shape; the step 1.03x, then the one-wide-state kernels of session 29 read this layout only). Inference
    since session 31: SRMA-Mamba's forward per 224 x 224 x 64 patch replayed from a CUDA graph, as Segment
    Liver runs a window, took 24.5 ms in bf16 and 35.4 ms in fp32 against the strided layout's 40.3 and
    50.4. Launched eagerly from Python the transposed layout is the slower one (58.1 / 54.7 against 42.6 /
    51.8 ms: twice the launches), which only the inference's fallback for a failed capture runs."""
    name = os.environ.get("SSM_CROSS_LAYOUT", "") or "transpose"
    if name not in ("transpose", "strided"):
        raise ValueError(f"SSM_CROSS_LAYOUT={name!r}: choose transpose or strided")
    return name


def _t(x, h, w):
    """(..., h*w) in row-major (h, w) -> (..., w*h) row-major in (w, h): the column-major sequence (a new
    contiguous tensor; triton_transpose's tiled kernel)."""
    from .triton_transpose import transpose_last2
    return transpose_last2(x.unflatten(-1, (h, w))).flatten(-2)


def _t_back(t, out, h, w, accumulate):
    """out (..., h * w) row-major in (h, w) gets (or, with accumulate, adds) t (..., w * h), row-major in
    (w, h), transposed back."""
    from .triton_transpose import transpose_last2
    transpose_last2(t.unflatten(-1, (w, h)), out=out.unflatten(-1, (h, w)), accumulate=accumulate)


def _passes(cross, layout):
    """The launches of one scan: (KD, n_dirs, k_step, k_off, cols, transposed?) each."""
    if not cross:
        return [(1, 1, 1, 0, False, False)]
    if layout == "strided":
        return [(4, 4, 1, 0, True, False)]
    return [(4, 2, 2, 0, False, False), (2, 2, 2, 1, False, True)]


# The one-wide-state kernels (triton_scan1.py) for d_state = 1 read in memory order (the plain scan and the
# transposed four-direction layout); SSM_SCAN1=0 keeps the general kernels there too, for an A/B. The default
# since session 29 (H100, CUDA-graphed trainer step, docs/BENCHMARKS.md): 224 x 224 x 64 215.6 -> 163.0 ms,
# the trainer's 128 x 128 x 48 68.0 -> 55.7 ms; the gradients as near the fp32 step's as before.
SCAN1_DEFAULT = "1"


def use_scan1(N: int, layout: str) -> bool:
    """Whether a scan with state width N in this layout runs the one-wide-state kernels."""
    return _env_switch("SSM_SCAN1", SCAN1_DEFAULT) and N == 1 and layout in ("plain", "transpose")


# The state-at-a-time kernels for d_state >= 2 (triton_scann.py) in the plain scan, one channel x 512 steps a
# program at 4 warps (session 31, H100, bf16, sweep_backward --scann [--fine] against the general kernels:
# forward + backward 1.33-1.95x on the three N = 16 shapes of the benchmark table, 1.06x / 0.96x on
# UltraScanNet's two; (1, 256) at 2 warps 1.42x over all five against 1.36x, but a slower forward).
SCANN_DEFAULT = "1"
SCANN_BLOCK = (1, 512)


def use_scann(N: int, layout: str) -> bool:
    """Whether a scan with state width N in this layout runs the state-at-a-time kernels (SSM_SCANN)."""
    return _env_switch("SSM_SCANN", SCANN_DEFAULT) and N >= 2 and layout == "plain"


# The one-wide-state backward's tile loop in 3 stages in the four-direction scan (session 31, H100, the training
# step as a CUDA graph: 163.2 -> 156.7 ms at 224 x 224 x 64, 53.2 -> 51.9 at 128 x 128 x 48; 4 stages 157.2;
# both passes in 3 stages 158.6, the forward alone being 0.85-0.98x pipelined in sweep_backward --stages). The
# forward, and the plain scan's backward (not timed pipelined), stay at 1.
SCAN1_BWD_STAGES = 3


def _scan1_stages(backward: bool = False, cross: bool = True) -> int:
    """Software-pipelining depth of the one-wide-state kernels' tile loop (tl.range num_stages: the next
    tiles' loads issued as cp.async into shared memory while this one is scanned); 1 = no pipelining.
    SSM_SCAN1_STAGES sets both passes, SSM_SCAN1_BWD_STAGES the backward's alone (default: 1, but
    SCAN1_BWD_STAGES for the four-direction scan's backward)."""
    both = _env_int("SSM_SCAN1_STAGES", 0)
    if backward:
        return _env_int("SSM_SCAN1_BWD_STAGES", both or (SCAN1_BWD_STAGES if cross else 1))
    return both or 1


def _passes1(cross):
    """The launches of the one-wide-state kernels: (direction k, its slice kd of delta / B / C, REV, ACC,
    on the transposed copy?) each. Directions 0 and 2 on the map, 1 and 3 on its transposed copy; the
    second launch on each output adds to the first's."""
    if not cross:
        return [(0, 0, False, False, False)]
    return [(0, 0, False, False, False), (2, 2, True, True, False), (1, 0, False, False, True),
            (3, 1, True, True, True)]


def _transposed_inputs(u, delta, B, C, H, W):
    """Directions 1 and 3 read rows of the transposed map: x, their two slices of delta, B and C."""
    batch, dim, L = u.shape
    dT = _t(delta.view(batch, 4, dim, L)[:, 1::2], H, W).view(batch, 2 * dim, L)
    return _t(u, H, W), dT, _t(B[:, 1::2], H, W), _t(C[:, 1::2], H, W)


def forward(u, delta, A, B, C, D, z, delta_bias, softplus, hw, out_dtype, save):
    batch, dim, L = u.shape
    cross = hw is not None
    KP = 4 if cross else 1
    N = A.shape[1]
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    G = B.shape[1]
    dpg = dim if cross else dim // G
    H, W = hw if cross else (1, L)
    layout = cross_layout(save) if cross else "plain"
    scan1 = use_scan1(N, layout)
    scann = not scan1 and use_scann(N, layout)
    bd, bn, bl, nw = _blocks(dim, dpg, N, cross, L, scan1, scann)
    n_chunks = max(1, triton.cdiv(L, bl))
    sub = _bwd_tile(bl, bn, layout) if save else bl  # the backward's tile: the forward saves the state at each one's start
    if scan1:
        return _forward1(u, delta, A, B, C, D, z, delta_bias, softplus, hw, out_dtype, save, layout,
                         dpg, bd, bl, nw, sub)
    if scann:
        return _forwardN(u, delta, A, B, C, D, z, delta_bias, softplus, out_dtype, save, dpg, bd, bn, bl, nw, sub)
    n_saved = n_chunks * (bl // sub)
    dev = u.device
    out = (torch.zeros(batch, dim, L, device=dev, dtype=torch.float32) if cross
           else _empty(batch, dim, L, device=dev, dtype=out_dtype))
    last = _empty(batch, KP * dim, N, device=dev, dtype=torch.float32)
    hsave = (_empty(batch, KP * dim, N, n_saved, device=dev, dtype=torch.float32) if save
             else torch.empty(0, device=dev))
    nblk = triton.cdiv(dim, bd)
    passes = _passes(cross, layout)
    n_seg, tps = _segments(batch * nblk * passes[0][1], n_chunks, dev)
    hseg = pseg = u
    if n_seg > 1:  # each segment's end state from zero and its product of decays
        hseg = _empty(batch, KP * dim, N, n_seg, device=dev, dtype=torch.float32)
        pseg = _empty(batch, KP * dim, N, n_seg, device=dev, dtype=torch.float32)
    for KD, n_dirs, k_step, k_off, cols, trans in passes:
        uu, dd, BB, CC, oo, hh, ww = u, delta, B, C, out, H, W
        if trans:  # directions 1 and 3: rows of the transposed map
            uu, dd, BB, CC = _transposed_inputs(u, delta, B, C, H, W)
            oo = torch.zeros_like(out)
            hh, ww = W, H
        args = (uu, dd, A, BB, CC, D if D is not None else u, z if z is not None else u,
                delta_bias if delta_bias is not None else u, oo, last, hsave, hseg, pseg,
                dim, L, hh, ww, N, dpg, n_chunks, BB.shape[1], k_step, k_off, n_seg, tps)
        flags = dict(KP=KP, KD=KD, CROSS=cross, COLS=cols, HAS_D=D is not None, HAS_Z=z is not None,
                     HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus, SEGMENTED=n_seg > 1, BLOCK_D=bd,
                     BLOCK_N=bn, BLOCK_L=bl, SUB=sub, num_warps=nw)
        if n_seg > 1:
            _scan_fwd_kernel[(batch, nblk, n_dirs * (n_seg - 1))](*args, n_seg - 1, n_saved, SAVE=False,
                                                                  STORE_LAST=False, LOCAL=True, **flags)
        _scan_fwd_kernel[(batch, nblk, n_dirs * n_seg)](*args, n_seg, n_saved, SAVE=save, STORE_LAST=True,
                                                        LOCAL=False, **flags)
        if trans:
            _t_back(oo, out, H, W, accumulate=True)
    if out.dtype != out_dtype:
        out = out.to(out_dtype)
    meta = dict(bd=bd, bn=bn, bl=bl, nw=nw, n_chunks=n_chunks, n_seg=n_seg, G=G, grouped_input=True,
                sub=sub, n_saved=n_saved, layout=layout)
    return out, last, hsave, meta


def _forward1(u, delta, A, B, C, D, z, delta_bias, softplus, hw, out_dtype, save, layout, dpg, bd, bl, nw, sub):
    """forward() through the one-wide-state kernels (B and C grouped: (batch, G, 1, L))."""
    from .triton_scan1 import _scan1_fwd_kernel
    batch, dim, L = u.shape
    cross = hw is not None
    KP = 4 if cross else 1
    H, W = hw if cross else (1, L)
    n_chunks = max(1, triton.cdiv(L, bl))
    n_saved = n_chunks * (bl // sub)
    dev = u.device
    f32 = torch.float32
    out = _empty(batch, dim, L, device=dev, dtype=f32 if cross else out_dtype)
    last = _empty(batch, KP * dim, 1, device=dev, dtype=f32)
    hsave = _empty(batch, KP * dim, 1, n_saved, device=dev, dtype=f32) if save else torch.empty(0, device=dev)
    nblk = triton.cdiv(dim, bd)
    n_seg, tps = _segments(batch * nblk, n_chunks, dev, scan1=True)
    hseg = pseg = u
    if n_seg > 1:
        hseg = _empty(batch, KP * dim, 1, n_seg, device=dev, dtype=f32)
        pseg = _empty(batch, KP * dim, 1, n_seg, device=dev, dtype=f32)
    if cross:
        uT, dT, BT, CT = _transposed_inputs(u, delta, B, C, H, W)
        outT = _empty(batch, dim, L, device=dev, dtype=f32)
    for k, kd, rev, acc, trans in _passes1(cross):
        uu, dd, BB, CC, oo = (uT, dT, BT, CT, outT) if trans else (u, delta, B, C, out)
        args = (uu, dd, A, BB, CC, D if D is not None else u, z if z is not None else u,
                delta_bias if delta_bias is not None else u, oo, last, hsave, hseg, pseg,
                dim, L, dpg, n_chunks, BB.shape[1], dd.shape[1] // dim, k, kd, n_seg, tps)
        flags = dict(KP=KP, CROSS=cross, REV=rev, ACC=acc, HAS_D=D is not None, HAS_Z=z is not None,
                     HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus, SAVE=save, STORE_LAST=True,
                     SEGMENTED=n_seg > 1, BLOCK_D=bd, BLOCK_L=bl, SUB=sub, STAGES=_scan1_stages(),
                     num_warps=nw)
        if n_seg > 1:  # the segments whose end states later ones start from: all but the direction's last
            _scan1_fwd_kernel[(batch, nblk, n_seg - 1)](*args, 1 if rev else 0, n_saved, LOCAL=True, **flags)
        _scan1_fwd_kernel[(batch, nblk, n_seg)](*args, 0, n_saved, LOCAL=False, **flags)
    if cross:
        _t_back(outT, out, H, W, accumulate=True)
    if out.dtype != out_dtype:
        out = out.to(out_dtype)
    meta = dict(bd=bd, bn=1, bl=bl, nw=nw, n_chunks=n_chunks, n_seg=n_seg, G=B.shape[1], grouped_input=True,
                sub=sub, n_saved=n_saved, layout=layout, scan1=True)
    return out, last, hsave, meta


def _scann_stages() -> int:
    """Software-pipelining depth of the state-at-a-time kernels' tile loop (SSM_SCANN_STAGES; 1 = none)."""
    return _env_int("SSM_SCANN_STAGES", 1)


def _scann_state_stages() -> int:
    """Software-pipelining depth of their loop over the states (SSM_SCANN_STATE_STAGES; 1 = none): the next
    states' rows of B and C fetched (cp.async) while one state is scanned. Compiled for sm_90a without spills
    at 2 and 3 (4.2 / 8.3 KB of shared memory a program at 512 steps); 1 until timed on a GPU."""
    return _env_int("SSM_SCANN_STATE_STAGES", 1)


def _forwardN(u, delta, A, B, C, D, z, delta_bias, softplus, out_dtype, save, dpg, bd, bn, bl, nw, sub):
    """forward() of the plain scan through the state-at-a-time kernels (B and C grouped: (batch, G, N, L));
    serial along L (one launch, no segments)."""
    from .triton_scann import _scann_fwd_kernel
    batch, dim, L = u.shape
    N = A.shape[1]
    n_chunks = max(1, triton.cdiv(L, bl))
    n_saved = n_chunks * (bl // sub)
    dev = u.device
    out = _empty(batch, dim, L, device=dev, dtype=out_dtype)
    last = _empty(batch, dim, N, device=dev, dtype=torch.float32)
    hsave = (_empty(batch, dim, N, n_saved, device=dev, dtype=torch.float32) if save
             else torch.empty(0, device=dev))
    _scann_fwd_kernel[(batch, triton.cdiv(dim, bd))](
        u, delta, A, B, C, D if D is not None else u, z if z is not None else u,
        delta_bias if delta_bias is not None else u, out, last, hsave, dim, L, dpg, n_chunks, B.shape[1], n_saved,
        N=N, HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
        SAVE=save, BLOCK_D=bd, BLOCK_N=bn, BLOCK_L=bl, SUB=sub, STAGES=_scann_stages(),
        NSTAGES=_scann_state_stages(), num_warps=nw)
    meta = dict(bd=bd, bn=bn, bl=bl, nw=nw, n_chunks=n_chunks, n_seg=1, G=B.shape[1], grouped_input=True,
                sub=sub, n_saved=n_saved, layout="plain", scann=True)
    return out, last, hsave, meta


def _backwardN(u, delta, A, Bg, Cg, D, z, delta_bias, hsave, dout, softplus, meta, dpg):
    """backward() through the state-at-a-time kernels: (du, ddelta, dA (batch, dim, N, 1), dB, dC (grouped,
    float32), dD and dbias (batch, dim, 1), dz)."""
    from .triton_scann import _scann_bwd_kernel
    batch, dim, L = u.shape
    N = A.shape[1]
    bl, n_saved = meta["sub"], meta["n_saved"]
    n_chunks = max(1, triton.cdiv(L, bl))
    bd, nw, _ = _bwd_blocks(dim, dpg, "plain", meta)
    dev = u.device
    f32 = torch.float32
    du = _empty(batch, dim, L, device=dev, dtype=u.dtype)
    ddelta = _empty(batch, dim, L, device=dev, dtype=delta.dtype)
    dA = _empty(batch, dim, N, 1, device=dev, dtype=f32)
    dB = torch.zeros(Bg.shape, device=dev, dtype=f32)  # summed over channel blocks with atomics
    dC = torch.zeros(Cg.shape, device=dev, dtype=f32)
    dD = _empty(batch, dim, 1, device=dev, dtype=f32) if D is not None else None
    dz = _empty(batch, dim, L, device=dev, dtype=z.dtype) if z is not None else None
    dbias = _empty(batch, dim, 1, device=dev, dtype=f32) if delta_bias is not None else None
    _scann_bwd_kernel[(batch, triton.cdiv(dim, bd))](
        u, delta, A, Bg, Cg, D if D is not None else du, z if z is not None else du,
        delta_bias if delta_bias is not None else du, dout, hsave, du, ddelta, dA, dB, dC,
        dD if dD is not None else du, dz if dz is not None else du, dbias if dbias is not None else du,
        dim, L, dpg, n_chunks, Bg.shape[1], n_saved, N=N, HAS_D=D is not None, HAS_Z=z is not None,
        HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus, BLOCK_D=bd, BLOCK_N=meta["bn"], BLOCK_L=bl,
        STAGES=_scann_stages(), NSTAGES=_scann_state_stages(), num_warps=nw)
    return du, ddelta, dA, dB, dC, dD, dz, dbias


def _backward1(u, delta, A, Bg, Cg, D, z, delta_bias, hsave, dout, softplus, hw, meta, dpg):
    """backward() through the one-wide-state kernels: (du, ddelta, dA (batch, KP dim, 1, segments), dB, dC
    (grouped, float32), dD and dbias per segment, dz)."""
    from .triton_scan1 import _scan1_bwd_kernel
    batch, dim, L = u.shape
    cross = hw is not None
    KP = 4 if cross else 1
    H, W = hw if cross else (1, L)
    bl, n_saved = meta["sub"], meta["n_saved"]
    n_chunks = max(1, triton.cdiv(L, bl))
    bd, nw, _ = _bwd_blocks(dim, dpg, meta["layout"], meta)
    nblk = triton.cdiv(dim, bd)
    dev = u.device
    f32 = torch.float32
    n_seg, tps = _segments(batch * nblk, n_chunks, dev, backward=True, scan1=True)
    du = _empty(batch, dim, L, device=dev, dtype=f32 if cross else u.dtype)
    ddelta = _empty(batch, KP * dim, L, device=dev, dtype=delta.dtype)
    dA = _empty(batch, KP * dim, 1, n_seg, device=dev, dtype=f32)
    dB = torch.zeros(Bg.shape, device=dev, dtype=f32)  # summed over channel blocks with atomics
    dC = torch.zeros(Cg.shape, device=dev, dtype=f32)
    dD = _empty(batch, KP * dim, n_seg, device=dev, dtype=f32) if D is not None else None
    dz = _empty(batch, dim, L, device=dev, dtype=z.dtype) if z is not None else None
    dbias = _empty(batch, KP * dim, n_seg, device=dev, dtype=f32) if delta_bias is not None else None
    gseg = pseg = du
    if n_seg > 1:
        gseg = _empty(batch, KP * dim, 1, n_seg, device=dev, dtype=f32)
        pseg = _empty(batch, KP * dim, 1, n_seg, device=dev, dtype=f32)
    if cross:
        uT, dT, BT, CT = _transposed_inputs(u, delta, Bg, Cg, H, W)
        doutT = _t(dout, H, W)
        duT = _empty(batch, dim, L, device=dev, dtype=f32)
        gdT = _empty(batch, 2 * dim, L, device=dev, dtype=delta.dtype)
        gBT, gCT = torch.zeros_like(BT, dtype=f32), torch.zeros_like(CT, dtype=f32)
    for k, kd, rev, acc, trans in _passes1(cross):
        if trans:
            uu, dd, BB, CC, go, gu, gd, gB, gC = uT, dT, BT, CT, doutT, duT, gdT, gBT, gCT
        else:
            uu, dd, BB, CC, go, gu, gd, gB, gC = u, delta, Bg, Cg, dout, du, ddelta, dB, dC
        args = (uu, dd, A, BB, CC, D if D is not None else du, z if z is not None else du,
                delta_bias if delta_bias is not None else du, go, hsave,
                gu, gd, dA, gB, gC, dD if dD is not None else du, dz if dz is not None else du,
                dbias if dbias is not None else du, gseg, pseg,
                dim, L, dpg, n_chunks, BB.shape[1], dd.shape[1] // dim, k, kd, n_seg, tps)
        flags = dict(KP=KP, CROSS=cross, REV=rev, ACC=acc, HAS_D=D is not None, HAS_Z=z is not None,
                     HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus, SEGMENTED=n_seg > 1, BLOCK_D=bd,
                     BLOCK_L=bl, STAGES=_scan1_stages(backward=True, cross=cross), num_warps=nw)
        if n_seg > 1:  # the segments whose start adjoints earlier ones need: all but the direction's first
            _scan1_bwd_kernel[(batch, nblk, n_seg - 1)](*args, 0 if rev else 1, n_saved, LOCAL=True, **flags)
        _scan1_bwd_kernel[(batch, nblk, n_seg)](*args, 0, n_saved, LOCAL=False, **flags)
    if cross:   # (W, H) rows -> (H, W)
        _t_back(duT, du, H, W, accumulate=True)
        _t_back(gdT.view(batch, 2, dim, L), ddelta.view(batch, 4, dim, L)[:, 1::2], H, W, accumulate=False)
        _t_back(gBT, dB[:, 1::2], H, W, accumulate=False)
        _t_back(gCT, dC[:, 1::2], H, W, accumulate=False)
    return du, ddelta, dA, dB, dC, dD, dz, dbias


def backward(u, delta, A, B, C, D, z, delta_bias, hsave, dout, softplus, hw, meta):
    batch, dim, L = u.shape
    cross = hw is not None
    KP = 4 if cross else 1
    N = A.shape[1]
    ungrouped = B.dim() == 3
    Bg, Cg = (B.unsqueeze(1), C.unsqueeze(1)) if ungrouped else (B, C)
    G = Bg.shape[1]
    dpg = dim if cross else dim // G
    H, W = hw if cross else (1, L)
    layout = meta["layout"]
    if meta.get("scan1"):
        du, ddelta, dA, dB, dC, dD, dz, dbias = _backward1(u, delta, A, Bg, Cg, D, z, delta_bias, hsave, dout,
                                                           softplus, hw, meta, dpg)
        return _reduced(u, delta, A, B, C, D, z, delta_bias, du, ddelta, dA, dB, dC, dD, dz, dbias, ungrouped)
    if meta.get("scann"):
        du, ddelta, dA, dB, dC, dD, dz, dbias = _backwardN(u, delta, A, Bg, Cg, D, z, delta_bias, hsave, dout,
                                                           softplus, meta, dpg)
        return _reduced(u, delta, A, B, C, D, z, delta_bias, du, ddelta, dA, dB, dC, dD, dz, dbias, ungrouped)
    bn, bl, n_saved = meta["bn"], meta["sub"], meta["n_saved"]  # the backward's tiles: the saved states'
    n_chunks = max(1, triton.cdiv(L, bl))
    bd, nw, shift = _bwd_blocks(dim, dpg, layout, meta)
    nblk = triton.cdiv(dim, bd)
    dev = u.device
    f32 = torch.float32
    passes = _passes(cross, layout)
    n_seg, tps = _segments(batch * nblk * passes[0][1], n_chunks, dev, backward=True)
    # du, ddelta and dz are stored by the kernel in their inputs' dtype (rounded from float32 as .to() would,
    # without a float32 copy to cast afterwards), except du of the four-direction scan, whose directions add
    # into it with float32 atomics
    du = torch.zeros(batch, dim, L, device=dev, dtype=f32) if cross else _empty(batch, dim, L, device=dev, dtype=u.dtype)
    ddelta = _empty(batch, KP * dim, L, device=dev, dtype=delta.dtype)
    dA = _empty(batch, KP * dim, N, n_seg, device=dev, dtype=f32)  # per batch and segment, summed below
    dB = torch.zeros(batch, G, N, L, device=dev, dtype=f32)  # summed over channel blocks with atomics
    dC = torch.zeros(batch, G, N, L, device=dev, dtype=f32)
    dD = _empty(batch, KP * dim, n_seg, device=dev, dtype=f32) if D is not None else None
    dz = _empty(batch, dim, L, device=dev, dtype=z.dtype) if z is not None else None
    dbias = _empty(batch, KP * dim, n_seg, device=dev, dtype=f32) if delta_bias is not None else None
    gseg = pseg = du
    if n_seg > 1:  # each segment's start adjoint from a zero end and its product of the adjoint's decays
        gseg = _empty(batch, KP * dim, N, n_seg, device=dev, dtype=f32)
        pseg = _empty(batch, KP * dim, N, n_seg, device=dev, dtype=f32)
    for KD, n_dirs, k_step, k_off, cols, trans in passes:
        uu, dd, BB, CC, go, gu, gd, gB, gC, hh, ww = u, delta, Bg, Cg, dout, du, ddelta, dB, dC, H, W
        if trans:  # directions 1 and 3 as rows of the transposed map; their gradients transposed back below
            uu, dd, BB, CC = _transposed_inputs(u, delta, Bg, Cg, H, W)
            go = _t(dout, H, W)
            gu = torch.zeros_like(du)
            gd = _empty(batch, 2 * dim, L, device=dev, dtype=delta.dtype)
            gB, gC = torch.zeros_like(BB, dtype=f32), torch.zeros_like(CC, dtype=f32)
            hh, ww = W, H
        args = (uu, dd, A, BB, CC, D if D is not None else du, z if z is not None else du,
                delta_bias if delta_bias is not None else du, go, hsave,
                gu, gd, dA, gB, gC, dD if dD is not None else du, dz if dz is not None else du,
                dbias if dbias is not None else du, gseg, pseg,
                dim, L, hh, ww, N, dpg, n_chunks, BB.shape[1], k_step, k_off, n_seg, tps)
        flags = dict(KP=KP, KD=KD, CROSS=cross, COLS=cols, HAS_D=D is not None, HAS_Z=z is not None,
                     HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus, SEGMENTED=n_seg > 1, SHIFT=shift,
                     BLOCK_D=bd, BLOCK_N=bn, BLOCK_L=bl, num_warps=nw)
        if n_seg > 1:  # segments 1 .. n_seg - 1 (the first one's start adjoint is never needed)
            _scan_bwd_kernel[(batch, nblk, n_dirs * (n_seg - 1))](*args, n_seg - 1, 1, n_saved, LOCAL=True, **flags)
        _scan_bwd_kernel[(batch, nblk, n_dirs * n_seg)](*args, n_seg, 0, n_saved, LOCAL=False, **flags)
        if trans:   # (W, H) rows -> (H, W)
            _t_back(gu, du, H, W, accumulate=True)
            _t_back(gd.view(batch, 2, dim, L), ddelta.view(batch, 4, dim, L)[:, 1::2], H, W, accumulate=False)
            _t_back(gB, dB[:, 1::2], H, W, accumulate=False)
            _t_back(gC, dC[:, 1::2], H, W, accumulate=False)
    return _reduced(u, delta, A, B, C, D, z, delta_bias, du, ddelta, dA, dB, dC, dD, dz, dbias, ungrouped)


def _reduced(u, delta, A, B, C, D, z, delta_bias, du, ddelta, dA, dB, dC, dD, dz, dbias, ungrouped):
    """The gradients in their inputs' dtypes and shapes: per-segment partials of dA, dD, dbias summed."""
    if ungrouped:
        dB, dC = dB[:, 0], dC[:, 0]
    return (du.to(u.dtype), ddelta.to(delta.dtype), dA.sum((0, 3)).to(A.dtype), dB.to(B.dtype).view(B.shape),
            dC.to(C.dtype).view(C.shape), None if dD is None else dD.sum((0, 2)).to(D.dtype),
            None if dz is None else dz.to(z.dtype),
            None if dbias is None else dbias.sum((0, 2)).to(delta_bias.dtype))
