"""Public entry points: argument checks, backend choice and autograd around the kernels."""
from __future__ import annotations

import os
from functools import lru_cache

import torch

from .reference import cross_merge_ref as cross_merge
from .reference import cross_scan_ref as cross_scan
from .reference import selective_scan_ref
from .torch_scan import cross_selective_scan_inference, selective_scan_torch

BACKENDS = ("triton", "torch", "ref")
ENV_BACKEND = "SSM_KERNELS_BACKEND"
_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        from . import triton_scan  # noqa: F401
        return True
    except Exception:  # pragma: no cover - depends on the machine
        return False


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """None -> $SSM_KERNELS_BACKEND, else triton on CUDA when installed, else torch."""
    if backend is None:
        backend = os.environ.get(ENV_BACKEND) or None
    if backend is None:
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"unknown selective-scan backend {backend!r}; choose one of {BACKENDS}")
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' asked for, but Triton is not installed (pip install triton)")
        if device.type != "cuda" and not _interpret():
            raise RuntimeError("backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors); "
                               f"got tensors on {device}")
    return backend


def _check(name, t, shape=None, ndim=None, contiguous=False, device=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOATS:
        raise TypeError(f"{name} must be float32, float16, bfloat16 or float64, got {t.dtype}")
    if ndim is not None and t.dim() not in ((ndim,) if isinstance(ndim, int) else ndim):
        raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(t.shape)}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device} but u is on {device}: all inputs must share one device")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous() first)")


def _validate(u, delta, A, B, C, D, z, delta_bias):
    _check("u", u, ndim=3, contiguous=True)
    batch, dim, L = u.shape
    dev = u.device
    _check("delta", delta, shape=(batch, dim, L), contiguous=True, device=dev)
    _check("A", A, ndim=2, device=dev)
    if A.shape[0] != dim:
        raise ValueError(f"A must be (dim={dim}, N), got {tuple(A.shape)}")
    if A.is_complex():
        raise TypeError("A must be real")
    N = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        _check(name, t, ndim=(3, 4), contiguous=True, device=dev)
        if t.dim() == 3 and tuple(t.shape) != (batch, N, L):
            raise ValueError(f"{name} must be (batch, N, L) = {(batch, N, L)} or (batch, G, N, L), got {tuple(t.shape)}")
        if t.dim() == 4:
            G = t.shape[1]
            if t.shape[0] != batch or t.shape[2:] != (N, L) or G < 1 or dim % G:
                raise ValueError(f"{name} grouped must be (batch, G, N, L) with G dividing dim={dim}; "
                                 f"got {tuple(t.shape)}")
    if B.dim() != C.dim() or (B.dim() == 4 and B.shape[1] != C.shape[1]):
        raise ValueError(f"B and C must be grouped alike, got {tuple(B.shape)} and {tuple(C.shape)}")
    if D is not None:
        _check("D", D, shape=(dim,), device=dev)
    if delta_bias is not None:
        _check("delta_bias", delta_bias, shape=(dim,), device=dev)
    if z is not None:
        _check("z", z, shape=(batch, dim, L), contiguous=True, device=dev)


def _needs_backward(*tensors) -> bool:
    """Whether autograd will call the backward: grad mode on and some input requiring a gradient. Read at
    the call, since an autograd.Function's forward runs with grad mode off and its needs_input_grad stays
    True under torch.no_grad (a model's parameters require gradients in inference too)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class _TritonScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus, want_last, output_fp32, hw, save):
        """save: a backward follows (_needs_backward at the call): keep the states it starts from, and
        take the training layout of the four-direction scan (triton_launch.cross_layout)."""
        from . import triton_launch as tlaunch
        out, last, hsave, meta = tlaunch.forward(u, delta, A, B, C, D, z, delta_bias, softplus, hw,
                                                 torch.float32 if output_fp32 else u.dtype, save=save)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, hsave)
        ctx.softplus, ctx.hw, ctx.meta = softplus, hw, meta
        if want_last:
            ctx.mark_non_differentiable(last)
            return out, last
        return out

    @staticmethod
    def backward(ctx, dout, *unused):
        from . import triton_launch as tlaunch
        u, delta, A, B, C, D, z, delta_bias, hsave = ctx.saved_tensors
        grads = tlaunch.backward(u, delta, A, B, C, D, z, delta_bias, hsave, dout.contiguous(), ctx.softplus,
                                 ctx.hw, ctx.meta)
        return (*grads, None, None, None, None, None)


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False, *, output_fp32=False, backend=None):
    """Selective scan with mamba_ssm's semantics (see ssm_kernels.reference.selective_scan_ref).

    u, delta: (batch, dim, L); A: (dim, N); B, C: (batch, N, L) or grouped (batch, G, N, L);
    D, delta_bias: (dim,); z: (batch, dim, L). State and accumulation in float32; output in u's
    dtype, or float32 with output_fp32=True. Returns out, or (out, last_state (batch, dim, N)).
    """
    _validate(u, delta, A, B, C, D, z, delta_bias)
    backend = resolve_backend(backend, u.device)
    if backend == "ref":
        res = selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
        dt = torch.float32 if output_fp32 else u.dtype
        return (res[0].to(dt), res[1].float()) if return_last_state else res.to(dt)
    if backend == "torch":
        return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
                                    output_fp32)
    return _TritonScan.apply(u, delta, A.contiguous(), B, C, None if D is None else D.contiguous(), z,
                             None if delta_bias is None else delta_bias.contiguous(), bool(delta_softplus),
                             bool(return_last_state), bool(output_fp32), None,
                             _needs_backward(u, delta, A, B, C, D, z, delta_bias))


def _fused_default() -> bool:
    return os.environ.get("SSM_KERNELS_FUSED_CROSS", "1") not in ("0", "")


def cross_selective_scan(x, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, *, backend=None,
                         fused=None):
    """VMamba's four-direction SS2D scan, fused: scan (row-major, column-major, both reversed), merge.

    x: (batch, dim, H, W); delta: (batch, 4, dim, H, W); B, C: (batch, 4, N, H, W), all in the map's
    row-major layout (direction k's sequence is read through an index transform, not copied);
    A: (4*dim, N); D, delta_bias: (4*dim,). Returns float32 (batch, dim, H, W), the sum over the four
    directions, each put back in row-major order. Equals cross_merge(scan(cross_scan(x), ...)).
    fused=False (or SSM_KERNELS_FUSED_CROSS=0) materialises the four sequences instead (for comparison).
    """
    _check("x", x, ndim=4, contiguous=True)
    b, d, h, w = x.shape
    L = h * w
    _check("delta", delta, shape=(b, 4, d, h, w), contiguous=True, device=x.device)
    _check("A", A, ndim=2, device=x.device)
    if A.shape[0] != 4 * d:
        raise ValueError(f"A must be (4*dim={4 * d}, N), got {tuple(A.shape)}")
    N = A.shape[1]
    _check("B", B, shape=(b, 4, N, h, w), contiguous=True, device=x.device)
    _check("C", C, shape=(b, 4, N, h, w), contiguous=True, device=x.device)
    if D is not None:
        _check("D", D, shape=(4 * d,), device=x.device)
    if delta_bias is not None:
        _check("delta_bias", delta_bias, shape=(4 * d,), device=x.device)
    backend = resolve_backend(backend, x.device)
    fused = _fused_default() if fused is None else fused
    if backend == "triton" and fused:
        y = _TritonScan.apply(x.view(b, d, L), delta.view(b, 4 * d, L), A.contiguous(), B.view(b, 4, N, L),
                              C.view(b, 4, N, L), None if D is None else D.contiguous(), None,
                              None if delta_bias is None else delta_bias.contiguous(), bool(delta_softplus),
                              False, True, (h, w), _needs_backward(x, delta, A, B, C, D, delta_bias))
        return y.view(b, d, h, w)
    if backend == "torch" and fused and not _needs_backward(x, delta, A, B, C, D, delta_bias):
        # no autograd: each direction gathered by index, no four-copy cross-scan / merge
        y = cross_selective_scan_inference(x, delta, A, B, C, D, delta_bias, delta_softplus)
        return y.float() if y.dtype != torch.float64 else y
    # torch with autograd / ref / unfused triton: materialise the four sequences, scan, merge
    xs = cross_scan(x).reshape(b, 4 * d, L)
    ds = torch.stack([_direction(delta[:, i], i) for i in range(4)], 1).reshape(b, 4 * d, L)
    Bs = torch.stack([_direction(B[:, i], i) for i in range(4)], 1)
    Cs = torch.stack([_direction(C[:, i], i) for i in range(4)], 1)
    ys = selective_scan_fn(xs, ds, A, Bs, Cs, D, None, delta_bias, delta_softplus, output_fp32=True,
                           backend=backend)
    return cross_merge(ys.view(b, 4, d, L), h, w).view(b, d, h, w)


def _direction(t, k):
    """Sequence of direction k of a (batch, c, H, W) map: (batch, c, H*W)."""
    seq = t.flatten(-2) if k % 2 == 0 else t.transpose(-1, -2).flatten(-2)
    return seq.flip(-1) if k >= 2 else seq
