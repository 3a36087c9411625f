"""Layer norm over channels for many short rows, forward and backward, in Triton (issue 13, item 5).

Why our own: PyTorch's CUDA layer norm gives each row its own thread block, which suits a transformer's
1-4k channels; SRMA-Mamba normalises 48-768 channels over millions of voxels, and there its 59 layer
norms took 38 of the 334 ms of kernels of a 224 x 224 x 64 training step (docs/BENCHMARKS.md, session 24),
plus the fp32 copies that feed them: autocast runs layer norm in fp32, so a channels-first map is first
copied channels-last in fp32 and the result cast to bf16 for the next Linear. Here one program normalises
a block of rows at once, reads its input through strides (a channels-first (B, C, *spatial) map without a
copy), writes channels-last (or channels-first) in the dtype its consumer wants (bf16 under autocast),
and keeps mean and 1/std for the backward, whose weight and bias gradients are summed per program over a
grid-stride loop, then over programs by torch.

    layer_norm(x, weight, bias, eps)                       # x (..., C) -> (..., C), like F.layer_norm
    layer_norm(x, weight, bias, eps, channels_first=True)  # x (B, C, *S) -> (B, *S, C)
    layer_norm(x, weight, bias, eps, out_channels_first=True)  # x (B, *S, C) -> (B, C, *S)
    layer_norm(..., out_dtype=torch.bfloat16)              # statistics in fp32, output cast once

Backends as the scan's (ssm_kernels.resolve_backend): triton on CUDA (or CPU under TRITON_INTERPRET=1;
the kernels are in triton_layer_norm.py, imported at the first such call), else torch (F.layer_norm on the
moved axis, then the cast); layer_norm_ref is the float64 definition.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .interface import resolve_backend


def layer_norm_torch(x, weight, bias, eps=1e-5, *, channels_first=False, out_channels_first=False, out_dtype=None):
    """PyTorch's layer norm on the channel axis (moved last when channels_first), in fp32 for 16-bit x as
    autocast runs it, then cast to out_dtype (default x's) and laid out as asked."""
    out_dtype = x.dtype if out_dtype is None else out_dtype
    if channels_first:
        x = x.movedim(1, -1)
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    y = F.layer_norm(x, (x.shape[-1],), weight, bias, eps).to(out_dtype)
    return y.movedim(-1, 1).contiguous() if out_channels_first else y


def layer_norm(x, weight, bias, eps=1e-5, *, channels_first=False, out_channels_first=False, out_dtype=None,
               backend=None):
    """Layer norm over channels: x (..., C), or with channels_first x (B, C, *S); the result laid out
    channels-last ((B, *S, C)), or channels-first with out_channels_first, either way contiguous and
    without an intermediate copy. Statistics and arithmetic in fp32; the output in out_dtype (default x's).
    weight and bias: (C,)."""
    if x.dim() < (2 if channels_first or out_channels_first else 1):
        raise ValueError(f"layer_norm: x of shape {tuple(x.shape)} has no batch and channel axes")
    c = x.shape[1] if channels_first else x.shape[-1]
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None or tuple(t.shape) != (c,):
            raise ValueError(f"layer_norm: {name} must be a tensor of shape ({c},), got "
                             f"{None if t is None else tuple(t.shape)}")
    if out_dtype is None:
        out_dtype = x.dtype
    if not channels_first and x.dim() >= 3 and not x.is_contiguous() and x.movedim(-1, 1).is_contiguous():
        x, channels_first = x.movedim(-1, 1), True   # a channels-last view of a channels-first map: read in place
    backend = resolve_backend(backend, x.device)
    if backend != "triton" or x.dtype == torch.float64:
        return layer_norm_torch(x, weight, bias, eps, channels_first=channels_first,
                                out_channels_first=out_channels_first, out_dtype=out_dtype)
    from .triton_layer_norm import TritonLayerNorm
    return TritonLayerNorm.apply(x, weight, bias, eps, bool(channels_first), bool(out_channels_first), out_dtype)


def layer_norm_ref(x, weight, bias, eps=1e-5, *, channels_first=False, out_channels_first=False):
    """The definition in float64: (x - mean) / sqrt(var + eps) * weight + bias over the channel axis."""
    x = x.double()
    if channels_first:
        x = x.movedim(1, -1)
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps) * weight.double() + bias.double()
    return y.movedim(-1, 1) if out_channels_first else y
