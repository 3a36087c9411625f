"""Plain definitions of the selective scan and the 2D cross-scan, used as the reference in tests.

Everything here runs in float64 on whatever device the inputs are on, with a Python loop over the
sequence: slow on purpose, so that it reads like the equations.

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t = <C_t, h_t> + D * u_t ;   out = y * silu(z)   (when z is given)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _expand_groups(x: torch.Tensor, dim: int) -> torch.Tensor:
    """(batch, N, L) or (batch, G, N, L) -> (batch, dim, N, L), channel d reading group d // (dim // G)."""
    if x.dim() == 3:
        return x[:, None].expand(x.shape[0], dim, *x.shape[1:])
    g = x.shape[1]
    return x.repeat_interleave(dim // g, dim=1)


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """mamba_ssm semantics, computed in float64. Returns float64 tensors.

    u, delta: (batch, dim, L); A: (dim, N); B, C: (batch, N, L) or (batch, G, N, L);
    D: (dim,); z: (batch, dim, L); delta_bias: (dim,). last_state: (batch, dim, N).
    """
    f = torch.float64
    u, delta, A, B, C = (t.to(f) for t in (u, delta, A, B, C))
    batch, dim, L = u.shape
    if delta_bias is not None:
        delta = delta + delta_bias.to(f)[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    Bx = _expand_groups(B, dim)  # (b, d, n, l)
    Cx = _expand_groups(C, dim)
    dA = torch.exp(delta[:, :, None, :] * A[None, :, :, None])  # (b, d, n, l)
    dBu = delta[:, :, None, :] * Bx * u[:, :, None, :]
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(L):
        h = dA[..., t] * h + dBu[..., t]
        ys.append((h * Cx[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1) if L else u.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + D.to(f)[None, :, None] * u
    if z is not None:
        y = y * F.silu(z.to(f))
    return (y, h) if return_last_state else y


def cross_scan_ref(x: torch.Tensor) -> torch.Tensor:
    """(batch, dim, H, W) -> (batch, 4, dim, H*W): row-major, column-major, and both reversed."""
    b, d, h, w = x.shape
    row = x.reshape(b, d, h * w)
    col = x.transpose(2, 3).reshape(b, d, h * w)
    xs = torch.stack([row, col], dim=1)
    return torch.cat([xs, xs.flip(-1)], dim=1)


def cross_merge_ref(ys: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(batch, 4, dim, H*W) -> (batch, dim, H*W): each direction put back in row-major order, summed."""
    b, k, d, L = ys.shape
    assert k == 4 and L == h * w
    y = ys[:, 0:2] + ys[:, 2:4].flip(-1)
    col = y[:, 1].reshape(b, d, w, h).transpose(2, 3).reshape(b, d, L)
    return y[:, 0] + col


def cross_selective_scan_ref(x, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True):
    """The four-direction SS2D scan, spelled out: cross-scan, scan every direction, cross-merge.

    x: (batch, dim, H, W); delta: (batch, 4, dim, H, W); B, C: (batch, 4, N, H, W), all in the
    feature map's own row-major layout (the direction is applied here, as the fused kernel does);
    A: (4*dim, N); D, delta_bias: (4*dim,). Returns (batch, dim, H, W) float64.
    """
    b, d, h, w = x.shape
    k = 4
    L = h * w
    xs = cross_scan_ref(x)  # (b, 4, d, L)
    ds = torch.stack([cross_scan_ref(delta[:, i])[:, i] for i in range(k)], dim=1)
    Bs = torch.stack([cross_scan_ref(B[:, i])[:, i] for i in range(k)], dim=1)
    Cs = torch.stack([cross_scan_ref(C[:, i])[:, i] for i in range(k)], dim=1)
    ys = selective_scan_ref(xs.reshape(b, k * d, L), ds.reshape(b, k * d, L), A, Bs, Cs, D,
                            delta_bias=delta_bias, delta_softplus=delta_softplus)
    return cross_merge_ref(ys.view(b, k, d, L), h, w).view(b, d, h, w)
