"""Host side of the Triton kernels: block sizes, buffers, grid, and reduction of partial gradients."""
from __future__ import annotations

import os

import torch
import triton

from .triton_scan import _scan_bwd_kernel, _scan_fwd_kernel


def _empty(*shape, device, dtype):
    """Output buffers; filled with NaN when SSM_KERNELS_POISON=1 so a missed store cannot pass a test."""
    if os.environ.get("SSM_KERNELS_POISON", "0") not in ("", "0"):
        return torch.full(shape, float("nan"), device=device, dtype=dtype)
    return torch.empty(*shape, device=device, dtype=dtype)


def _pow2_divisor(n: int, cap: int) -> int:
    b = 1
    while b * 2 <= cap and n % (b * 2) == 0:
        b *= 2
    return b


def _blocks(dim, dpg, N, cross, L):
    """Block sizes: few channels per program (many programs in flight: the scan over L is serial within
    one), long tiles along L. Overridable through SSM_BLOCK_D / SSM_BLOCK_L / SSM_NUM_WARPS for tuning."""
    bn = triton.next_power_of_2(max(N, 1))
    cap = int(os.environ.get("SSM_BLOCK_D", 0)) or (2 if bn <= 2 else 1)  # from kernels/benchmarks/sweep_scan.py on an H100
    bd = min(cap, triton.next_power_of_2(dim)) if cross else _pow2_divisor(dpg, cap)
    bl = int(os.environ.get("SSM_BLOCK_L", 0)) or (1024 if bn <= 2 else (256 if bn <= 4 else 128))
    bl = max(16, min(bl, triton.next_power_of_2(max(L, 1))))
    nw = int(os.environ.get("SSM_NUM_WARPS", 0)) or 4
    return bd, bn, bl, nw


def forward(u, delta, A, B, C, D, z, delta_bias, softplus, hw, out_dtype, save):
    batch, dim, L = u.shape
    cross = hw is not None
    K = 4 if cross else 1
    N = A.shape[1]
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    G = B.shape[1]
    dpg = dim if cross else dim // G
    H, W = hw if cross else (1, L)
    bd, bn, bl, nw = _blocks(dim, dpg, N, cross, L)
    n_chunks = max(1, triton.cdiv(L, bl))
    out = (torch.zeros(batch, dim, L, device=u.device, dtype=torch.float32) if cross
           else _empty(batch, dim, L, device=u.device, dtype=out_dtype))
    last = _empty(batch, K * dim, N, device=u.device, dtype=torch.float32)
    hsave = (_empty(batch, K * dim, N, n_chunks, device=u.device, dtype=torch.float32) if save
             else torch.empty(0, device=u.device))
    grid = (batch, triton.cdiv(dim, bd), K)
    dummy = u
    _scan_fwd_kernel[grid](
        u, delta, A, B, C, D if D is not None else dummy, z if z is not None else dummy,
        delta_bias if delta_bias is not None else dummy, out, last, hsave,
        dim, L, H, W, N, dpg, n_chunks, G,
        K=K, CROSS=cross, HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=softplus, SAVE=save, STORE_LAST=True, BLOCK_D=bd, BLOCK_N=bn, BLOCK_L=bl, num_warps=nw,
    )
    if out.dtype != out_dtype:
        out = out.to(out_dtype)
    meta = dict(bd=bd, bn=bn, bl=bl, nw=nw, n_chunks=n_chunks, G=G, grouped_input=True)
    return out, last, hsave, meta


def backward(u, delta, A, B, C, D, z, delta_bias, hsave, dout, softplus, hw, meta):
    batch, dim, L = u.shape
    cross = hw is not None
    K = 4 if cross else 1
    N = A.shape[1]
    ungrouped = B.dim() == 3
    Bg, Cg = (B.unsqueeze(1), C.unsqueeze(1)) if ungrouped else (B, C)
    G = Bg.shape[1]
    dpg = dim if cross else dim // G
    H, W = hw if cross else (1, L)
    bd, bn, bl, nw, n_chunks = meta["bd"], meta["bn"], meta["bl"], meta["nw"], meta["n_chunks"]
    nblk = triton.cdiv(dim, bd)
    dev = u.device
    f32 = torch.float32
    du = torch.zeros(batch, dim, L, device=dev, dtype=f32) if cross else _empty(batch, dim, L, device=dev, dtype=f32)
    ddelta = _empty(batch, K * dim, L, device=dev, dtype=f32)
    dA = _empty(batch, K * dim, N, device=dev, dtype=f32)
    dB = torch.zeros(batch, G, N, L, device=dev, dtype=f32)  # summed over channel blocks with atomics
    dC = torch.zeros(batch, G, N, L, device=dev, dtype=f32)
    dD = _empty(batch, K * dim, device=dev, dtype=f32) if D is not None else None
    dz = _empty(batch, dim, L, device=dev, dtype=f32) if z is not None else None
    dbias = _empty(batch, K * dim, device=dev, dtype=f32) if delta_bias is not None else None
    dummy = du
    _scan_bwd_kernel[(batch, nblk, K)](
        u, delta, A, Bg, Cg, D if D is not None else dummy, z if z is not None else dummy,
        delta_bias if delta_bias is not None else dummy, dout, hsave,
        du, ddelta, dA, dB, dC, dD if dD is not None else dummy, dz if dz is not None else dummy,
        dbias if dbias is not None else dummy,
        dim, L, H, W, N, dpg, n_chunks, G,
        K=K, CROSS=cross, HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=softplus, BLOCK_D=bd, BLOCK_N=bn, BLOCK_L=bl, num_warps=nw,
    )
    if ungrouped:
        dB, dC = dB[:, 0], dC[:, 0]
    return (du.to(u.dtype), ddelta.to(delta.dtype), dA.sum(0).to(A.dtype), dB.to(B.dtype).view(B.shape),
            dC.to(C.dtype).view(C.shape), None if dD is None else dD.sum(0).to(D.dtype),
            None if dz is None else dz.to(z.dtype),
            None if dbias is None else dbias.sum(0).to(delta_bias.dtype))
