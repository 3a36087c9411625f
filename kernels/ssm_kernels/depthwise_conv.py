"""Depthwise 3 x 3 convolution + SiLU from a channels-last map to a channels-first one, in Triton (issue 13,
item 5): VMamba's SS2D step between its input projection and its scan.

Why our own: SS2D's projection writes (B, H, W, C) and the scan reads (B, C, H, W). PyTorch runs the
convolution between them either through cuDNN, with layout conversions around it and a copy after it,
or through its own depthwise kernels, whose weight gradient was the largest single convolution kernel of
the SRMA-Mamba training step (13.3 ms of 334 at 224 x 224 x 64, docs/BENCHMARKS.md, session 24), and SiLU
and its backward are two more passes over the map. Here the forward reads the channels-last map once per
tap from cache, applies the weights and SiLU in fp32 and writes the channels-first result in the input's
dtype; the backward recomputes the pre-activation from the saved input (nothing else is kept), writes
the pre-activation's gradient once (fp32), sums the weight gradient per program (then over programs by
torch), and gathers the input's gradient channels-last for the projection's backward.

    dwconv3x3_silu(x, weight)            # x (B, H, W, C), weight (C, 1, 3, 3) -> (B, C, H, W), x's dtype

Zero padding of one, stride one, no bias: nn.Conv2d(C, C, 3, padding=1, groups=C, bias=False). The
weight is used in x's dtype, as autocast feeds the convolution. Backends as the scan's
(ssm_kernels.resolve_backend): triton on CUDA (or CPU under TRITON_INTERPRET=1; kernels in
triton_depthwise_conv.py, imported at the first such call), else torch (F.conv2d on the permuted view,
F.silu, then a contiguous copy: what the model did before); dwconv3x3_silu_ref is the float64 definition.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .interface import resolve_backend


def _check(x, weight):
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"dwconv3x3_silu: x must be a (B, H, W, C) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    c = x.shape[-1]
    if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != (c, 1, 3, 3):
        raise ValueError(f"dwconv3x3_silu: weight must be of shape ({c}, 1, 3, 3) for {c} channels, got "
                         f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}")


def dwconv3x3_silu_torch(x, weight):
    """PyTorch's way: the channels-last map viewed channels-first, F.conv2d, F.silu, a contiguous copy."""
    y = F.conv2d(x.permute(0, 3, 1, 2), weight.to(x.dtype), padding=1, groups=x.shape[-1])
    return F.silu(y).contiguous()


def dwconv3x3_silu(x, weight, backend=None):
    """SiLU(depthwise 3 x 3 convolution of x) over the map's (H, W): x (B, H, W, C) channels-last, weight
    (C, 1, 3, 3); returns (B, C, H, W), contiguous, in x's dtype."""
    _check(x, weight)
    backend = resolve_backend(backend, x.device)
    if backend != "triton" or x.dtype == torch.float64:
        return dwconv3x3_silu_torch(x, weight)
    from .triton_depthwise_conv import TritonDepthwiseConvSiLU
    return TritonDepthwiseConvSiLU.apply(x, weight)


def dwconv3x3_silu_ref(x, weight):
    """The definition in float64: y[b, c, i, j] = silu(sum_{p, q} w[c, p, q] x[b, i + p - 1, j + q - 1, c]),
    x zero outside the map."""
    x = x.double().permute(0, 3, 1, 2)
    xp = F.pad(x, (1, 1, 1, 1))
    w = weight.double().reshape(-1, 3, 3)
    h, wd = x.shape[2], x.shape[3]
    y = sum(w[None, :, p, q, None, None] * xp[:, :, p:p + h, q:q + wd] for p in range(3) for q in range(3))
    return y * torch.sigmoid(y)
