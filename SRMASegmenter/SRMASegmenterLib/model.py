"""SRMA-Mamba (Zeng et al., arXiv 2508.12410) for 3D liver segmentation, parameter-compatible with
the authors' published state dict (config `vmambav2_tiny_224`), written from the paper's description
and the published parameter names and shapes.

Layout: input (B, 1, H, W, D), H, W, D divisible by 16; four outputs (logits at 1/2, 1/4, 1/8, 1/16
resolution, each upsampled to the input size), `out_chans` channels each: 1 in the published binary
configuration (sigmoid), or one per class with background first (softmax), e.g. background, liver,
right kidney, left kidney, spleen. With `refine_channels` > 0 the first output is corrected on the input
grid by FullResRefine, a head the published model does not have. The selective scans run in ssm_kernels (fused
four-direction scan), so this file holds no scan of its own.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from slicer_ai_common.layers import DropPath, Mlp, Permute
from ssm_kernels import cross_selective_scan, dwconv3x3_silu, layer_norm


@dataclass
class SRMAConfig:
    """The published configuration (vmambav2_tiny_224) unless said otherwise."""
    in_chans: int = 1
    out_chans: int = 1            # 1: the published binary liver output (sigmoid); >1: softmax classes
    class_names: tuple = ("liver",)  # foreground names for out_chans == 1, else all classes, background first
    dims: int = 48                # EMBED_DIM; stages have dims * 2**i channels
    depths: tuple = (1, 1, 1, 1)  # SABMamba blocks per stage
    d_state: int = 1
    ssm_ratio: float = 2.0
    mlp_ratio: float = 4.0
    embed_channels: int = 16      # decoder width
    drop_path_rate: float = 0.2
    decoder_drop_path: float = 0.1
    scan_backend: str | None = None  # None: ssm_kernels picks (triton on CUDA, torch on CPU)
    refine_channels: int = 0      # 0: as published; >0: a full-resolution refinement head (FullResRefine)

    def to_dict(self):
        d = asdict(self)
        d["depths"] = list(self.depths)
        d["class_names"] = list(self.class_names)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SRMAConfig":
        """From a manifest's config; unknown keys ignored, lists back to tuples."""
        known = cls.__dataclass_fields__
        kw = {k: (tuple(v) if k in ("depths", "class_names") else v) for k, v in d.items() if k in known}
        cfg = cls(**kw)
        if cfg.out_chans > 1 and len(cfg.class_names) != cfg.out_chans:
            raise ValueError(f"SRMA config: {cfg.out_chans} output classes but class_names {list(cfg.class_names)}")
        return cfg


PAD_DT_RANK = None   # SS2D.projections pads the dt rank: None on the GPU only; True / False always / never
X_PROJ_BMM = True    # SS2D.projections multiplies x by bmm (its gradient channels-first); False: matmul, as before
_NEW_AUTOCAST_API = hasattr(torch, "get_autocast_dtype")   # torch >= 2.4; the project supports 2.1 on


def _autocast_on(x) -> bool:
    dev = x.device.type
    if dev not in ("cuda", "cpu"):     # (autocast knows no meta tensors)
        return False
    if _NEW_AUTOCAST_API:
        return torch.is_autocast_enabled(dev)
    return torch.is_autocast_enabled() if dev == "cuda" else torch.is_autocast_cpu_enabled()


def _layer_norm(norm, x, channels_first=False, out_channels_first=False, out_dtype=None):
    """`norm` (an nn.LayerNorm's parameters) over the channels of x by ssm_kernels.layer_norm (Triton on a
    GPU: one kernel for many short rows, reading and writing either layout without a copy; PyTorch's own
    elsewhere). out_dtype None gives what the nn.LayerNorm would: fp32 under autocast, else x's dtype."""
    if out_dtype is None:
        out_dtype = torch.float32 if _autocast_on(x) else x.dtype
    return layer_norm(x, norm.weight, norm.bias, norm.eps, channels_first=channels_first,
                      out_channels_first=out_channels_first, out_dtype=out_dtype)


def _dwconv_silu(conv, x):
    """SS2D's depthwise 3 x 3 convolution (`conv`, an nn.Conv2d's weight) and SiLU: channels-last x (b, h, w,
    c) in, channels-first (b, c, h, w) out, by ssm_kernels.dwconv3x3_silu (Triton on a GPU: one kernel each
    way, no layout copies; PyTorch's conv2d + SiLU elsewhere)."""
    return dwconv3x3_silu(x, conv.weight)


def _low_precision(x):
    """The dtype a Linear after a layer norm computes in: autocast's, where it is on (a layer norm that
    feeds only Linears can write it directly, the same numbers as its fp32 output cast there)."""
    if not _autocast_on(x):
        return None
    if _NEW_AUTOCAST_API:
        return torch.get_autocast_dtype(x.device.type)
    return torch.get_autocast_gpu_dtype() if x.device.type == "cuda" else torch.get_autocast_cpu_dtype()


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm (the same parameters and state dict) on channels-last input, computed by _layer_norm."""

    def forward(self, x):
        return _layer_norm(self, x)


class SS2D(nn.Module):
    """VMamba SS2D, forward type v05_noz, channels last: (B, H, W, C) -> (B, H, W, C).

    in_proj -> depthwise 3x3 -> SiLU -> four-direction selective scan (d_state N, grouped B/C per
    direction, softplus delta with bias) -> LayerNorm -> out_proj. The per-direction projections are
    applied in the map's own row-major order (a projection over channels commutes with the scan
    order), and the fused kernel reads each direction through an index transform.
    """
    K = 4

    def __init__(self, d_model, d_state=1, ssm_ratio=2.0, scan_backend=None):
        super().__init__()
        self.d_inner = di = int(ssm_ratio * d_model)
        self.d_state = d_state
        self.dt_rank = r = math.ceil(d_model / 16)
        self.scan_backend = scan_backend
        k = self.K
        self.in_proj = nn.Linear(d_model, di, bias=False)
        self.conv2d = nn.Conv2d(di, di, 3, padding=1, groups=di, bias=False)
        self.act = nn.SiLU()   # (applied inside _dwconv_silu; kept so the module reads as the authors')
        self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * d_state, di))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, di, r))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, di))
        self.A_logs = nn.Parameter(torch.empty(k * di, d_state))
        self.Ds = nn.Parameter(torch.empty(k * di))
        self.out_norm = nn.LayerNorm(di)
        self.out_proj = nn.Linear(di, d_model, bias=False)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min=1e-3, dt_max=0.1, dt_floor=1e-4):
        """Mamba's initialisation: S4D-real A, unit D, dt bias = softplus^-1 of log-uniform dt."""
        k, di, r, n = self.K, self.d_inner, self.dt_rank, self.d_state
        bound = (r ** -0.5)
        self.dt_projs_weight.uniform_(-bound, bound)
        dt = torch.exp(torch.rand(k, di) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_logs.copy_(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(k * di, 1))
        self.Ds.fill_(1.0)
        nn.init.trunc_normal_(self.x_proj_weight, std=di ** -0.5)
        self.A_logs._no_weight_decay = True
        self.Ds._no_weight_decay = True

    def projections(self, x):
        """x (b, di, h, w) -> delta before its bias (b, K, di, h, w), B and C (b, K, N, h, w): the per-direction
        projections, as matrix products over the channels-first map (b, c, h * w). The same sums as 1 x 1
        convolutions, without cuDNN's NCHW <-> NHWC conversions around each of them."""
        b, _, h, w = x.shape
        k, di, r, n = self.K, self.d_inner, self.dt_rank, self.d_state
        # bmm over the weight expanded along the batch, not matmul: matmul folds (M, di) @ (b, di, hw) into
        # (b hw, di) @ (di, M) and so hands x a channels-last gradient, which autograd then adds to the scan's
        # channels-first one elementwise through strides (6.7 ms of a 224 x 224 x 64 step on an H100,
        # session 28's profile); bmm's gradient of x is channels-first like the scan's
        wx = self.x_proj_weight.reshape(k * (r + 2 * n), di)
        xv = x.view(b, di, h * w)
        x_dbl = torch.bmm(wx.expand(b, -1, -1), xv) if X_PROJ_BMM else torch.matmul(wx, xv)
        dts, Bs, Cs = torch.split(x_dbl.view(b, k, r + 2 * n, h, w), [r, n, n], dim=2)
        wdt, dts = self.dt_projs_weight, dts.reshape(b, k, r, h * w)
        rp = -(-r // 8) * 8
        if (x.is_cuda if PAD_DT_RANK is None else PAD_DT_RANK) and rp != r:
            # the rank padded with zeros to a multiple of 8 (the same sums): with r = 3 the weight's rows and
            # its gradient are 6 bytes apart in bf16, and cuBLAS falls back to its unaligned (align1) kernels,
            # 25.6 ms for the three stage-0 weight gradients of a 224 x 224 x 64 step on an H100 (session 26's
            # profile, docs/BENCHMARKS.md)
            wdt, dts = F.pad(wdt, (0, rp - r)), F.pad(dts, (0, 0, 0, rp - r))
        dts = torch.matmul(wdt, dts)  # (k, di, r) @ (b, k, r, hw)
        return dts.view(b, k, di, h, w), Bs, Cs

    def forward(self, x):
        x = _dwconv_silu(self.conv2d, self.in_proj(x))                        # (b, di, h, w), self.act's SiLU
        dts, Bs, Cs = self.projections(x)
        y = cross_selective_scan(
            x, dts, -torch.exp(self.A_logs.float()), Bs.contiguous(), Cs.contiguous(),
            self.Ds.float(), self.dt_projs_bias.float().view(-1), delta_softplus=True, backend=self.scan_backend)
        y = _layer_norm(self.out_norm, y, channels_first=True, out_dtype=x.dtype)   # (b, h, w, di)
        return self.out_proj(y)


class ABSS(nn.Module):
    """Scans a volume (b, h, w, d, c) as three 2D images, h x (w d), w x (h d), d x (h w), and sums."""

    def __init__(self, d_model, **kw):
        super().__init__()
        self.sh = SS2D(d_model, **kw)
        self.sw = SS2D(d_model, **kw)
        self.sd = SS2D(d_model, **kw)

    def forward(self, x):
        b, h, w, d, c = x.shape
        xh = self.sh(x.reshape(b, h, w * d, c)).reshape(b, h, w, d, c)
        xw = self.sw(x.permute(0, 2, 1, 3, 4).reshape(b, w, h * d, c)).reshape(b, w, h, d, c).permute(0, 2, 1, 3, 4)
        xd = self.sd(x.permute(0, 3, 1, 2, 4).reshape(b, d, h * w, c)).reshape(b, d, h, w, c).permute(0, 2, 3, 1, 4)
        return xh + xw + xd


class SABMamba(nn.Module):
    """Pre-norm block on channels-last volumes: x + DP(ABSS(LN x)), then x + DP(MLP(LN x))."""

    def __init__(self, dim, drop_path=0.0, mlp_ratio=4.0, **ssm_kw):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.op = ABSS(dim, **ssm_kw)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        lp = _low_precision(x)   # both norms feed Linears only (ABSS's in_proj, the MLP's fc1)
        x = x + self.drop_path(self.op(_layer_norm(self.norm, x, out_dtype=lp)))
        return x + self.drop_path(self.mlp(_layer_norm(self.norm2, x, out_dtype=lp)))


class GSC(nn.Module):
    """Gated spatial convolution on channels-last volumes (computed channels-first)."""

    def __init__(self, c):
        super().__init__()
        self.proj = nn.Conv3d(c, c, 3, 1, 1)
        self.proj2 = nn.Conv3d(c, c, 3, 1, 1)
        self.proj3 = nn.Conv3d(c, c, 1)
        self.proj4 = nn.Conv3d(c, c, 1)

    @staticmethod
    def _nr(x):
        return F.relu(F.instance_norm(x, eps=1e-5))

    def forward(self, x):
        x = x.permute(0, 4, 1, 2, 3)
        x1 = self._nr(self.proj2(self._nr(self.proj(x))))
        x2 = self._nr(self.proj3(x))
        out = self._nr(self.proj4(x1 + x2)) + x
        return out.permute(0, 2, 3, 4, 1)


class SABMambaEncoder(nn.Module):
    def __init__(self, cfg: SRMAConfig):
        super().__init__()
        dims = [cfg.dims * 2 ** i for i in range(4)]
        self.dims = dims
        ssm_kw = dict(d_state=cfg.d_state, ssm_ratio=cfg.ssm_ratio, scan_backend=cfg.scan_backend)
        self.patch_embed = nn.Sequential(
            nn.Conv3d(cfg.in_chans, dims[0] // 2, 3, 2, 1), Permute(0, 2, 3, 4, 1), LayerNorm(dims[0] // 2),
            Permute(0, 4, 1, 2, 3), nn.GELU(), nn.Conv3d(dims[0] // 2, dims[0], 1), Permute(0, 2, 3, 4, 1),
            LayerNorm(dims[0]))
        dpr = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths)).tolist()
        self.layers = nn.ModuleList()
        for i in range(4):
            blocks = [GSC(dims[i])] + [
                SABMamba(dims[i], dpr[sum(cfg.depths[:i]) + j], cfg.mlp_ratio, **ssm_kw) for j in range(cfg.depths[i])]
            layer = nn.Module()
            layer.blocks = nn.Sequential(*blocks)
            layer.downsample = (nn.Sequential(Permute(0, 4, 1, 2, 3), nn.Conv3d(dims[i], dims[i + 1], 3, 2, 1),
                                              Permute(0, 2, 3, 4, 1), LayerNorm(dims[i + 1]))
                                if i < 3 else nn.Identity())
            self.layers.append(layer)
        for i in range(4):
            self.add_module(f"outnorm{i}", nn.LayerNorm(dims[i]))

    def forward(self, x):
        x = self.patch_embed(x)
        outs = []
        for i, layer in enumerate(self.layers):
            o = layer.blocks(x)
            x = layer.downsample(o)
            outs.append(_layer_norm(getattr(self, f"outnorm{i}"), o, out_channels_first=True))   # (b, c, h, w, d)
        return outs


class _Conv1x1(nn.Module):
    """1x1x1 convolution with bias, nested as `.conv.conv` like MONAI's UnetOutBlock."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Module()
        self.conv.conv = nn.Conv3d(cin, cout, 1)

    def forward(self, x):
        return self.conv.conv(x)


class BasicConv3d(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm3d(cout)

    def forward(self, x):
        return self.bn(self.conv(x))


def _upsample(x, size):
    """Trilinear upsampling (align_corners=False), as published. In training, where every size is a whole
    multiple of the input's (the model's grids halve per stage), the backward is `_TrilinearUp`'s."""
    size = tuple(int(n) for n in size)
    if x.requires_grad and torch.is_grad_enabled() and x.dim() == 5 and all(
            n % m == 0 for n, m in zip(size, x.shape[-3:])):
        return _TrilinearUp.apply(x, size)
    return F.interpolate(x, size=size, mode="trilinear", align_corners=False)


def _linear_up_weights(s: int, device=None, dtype=torch.float64) -> torch.Tensor:
    """(s, 3): how output k of each block of s (output i * s + k, upsampled by a whole factor s with
    align_corners=False) spreads over input i itself, input i + 1 and input i - 1. Its source coordinate is
    i + f with f = (k + 0.5) / s - 0.5: f >= 0 mixes i (1 - f) with i + 1 (f); f < 0 mixes i - 1 (-f)
    with i (1 + f). Built by device ops, no host copy: the backward runs inside the trainer's CUDA graph."""
    f = (torch.arange(s, device=device, dtype=dtype) + 0.5) / s - 0.5
    ahead = f >= 0
    zero = torch.zeros_like(f)
    return torch.stack([torch.where(ahead, 1.0 - f, 1.0 + f), torch.where(ahead, f, zero),
                        torch.where(ahead, zero, -f)], dim=1)


def _linear_up_adjoint(g: torch.Tensor, dim: int, n: int) -> torch.Tensor:
    """The adjoint of upsampling axis `dim` from n to g.shape[dim] = n * s: each input sums its block of
    s outputs and the halves of its neighbours' blocks that reach it, with the interpolation weights; at
    the ends, where PyTorch clamps the source coordinate, the weight that would fall outside stays on the
    end input."""
    s = g.shape[dim] // n
    if s == 1:
        return g
    pre, post = math.prod(g.shape[:dim]), math.prod(g.shape[dim + 1:])
    w = _linear_up_weights(s, g.device, g.dtype)
    if post == 1:                                   # last axis: one GEMM, (pre * n, s) @ (s, 3)
        r = (g.reshape(pre * n, s) @ w).reshape(pre, n, 3)
        same, nxt, prv = r[..., 0], r[..., 1], r[..., 2]
    else:                                           # (3, s) @ (pre * n, s, post), batched, no copy
        r = torch.matmul(w.t(), g.reshape(pre * n, s, post)).reshape(pre, n, 3, post)
        same, nxt, prv = r[:, :, 0], r[:, :, 1], r[:, :, 2]
    out = same.contiguous()
    out[:, 1:] += nxt[:, :-1]
    out[:, -1] += nxt[:, -1]
    out[:, :-1] += prv[:, 1:]
    out[:, 0] += prv[:, 0]
    return out.reshape(*g.shape[:dim], n, *g.shape[dim + 1:])


class _TrilinearUp(torch.autograd.Function):
    """F.interpolate(x, size, "trilinear", align_corners=False) for sizes that are whole multiples of x's.
    The forward is PyTorch's own. The backward is not: PyTorch's scatters every output gradient into its
    eight inputs with atomic adds, which queue on the same few addresses when one input feeds 16^3 outputs
    (SRMA-Mamba's deep-supervision heads): 7.4 ms of the liver training step's 93 ms of kernels on an H200
    (docs/BENCHMARKS.md). Trilinear weights are products of 1D ones, so the adjoint is three 1D adjoints,
    each a small matrix product that gathers a block of outputs per input; fp32, without autocast."""

    @staticmethod
    def forward(ctx, x, size):
        ctx.in_size, ctx.in_dtype = tuple(x.shape[-3:]), x.dtype
        return F.interpolate(x, size=size, mode="trilinear", align_corners=False)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        dev = grad.device.type
        with torch.autocast(dev, enabled=False) if dev in ("cuda", "cpu") else contextlib.nullcontext():
            g = grad.float() if grad.dtype in (torch.float16, torch.bfloat16) else grad
            for dim in (4, 3, 2):                   # the last axis first: a plain GEMM that shrinks it most
                g = _linear_up_adjoint(g, dim, ctx.in_size[dim - 2])
        return g.to(ctx.in_dtype), None


class FullResRefine(nn.Module):
    """Not in the published model (`refine_channels` > 0 only): a light head on the input grid. The finest
    decoder output lies on a grid twice as coarse as the input (the patch embedding has stride 2), so a
    class boundary can only move in steps of two input voxels. This head sees that output, upsampled, beside
    the image, and adds a correction from two 3 x 3 x 3 convolutions at the input's resolution. Its last
    convolution starts at zero: a new head begins as the identity, so weights trained without it continue
    unchanged (`training.srma.train --init`)."""

    def __init__(self, in_chans, out_chans, channels):
        super().__init__()
        self.conv1 = nn.Conv3d(in_chans + out_chans, channels, 3, padding=1)
        self.norm1 = nn.InstanceNorm3d(channels, affine=True)
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1)
        self.norm2 = nn.InstanceNorm3d(channels, affine=True)
        self.out = nn.Conv3d(channels, out_chans, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, image, logits):
        h = F.gelu(self.norm1(self.conv1(torch.cat([image.to(logits.dtype), logits], 1))))
        h = F.gelu(self.norm2(self.conv2(h)))
        return logits + self.out(h)


class SRMAttention(nn.Module):
    """Spatial reverse attention: refine this scale's features where the coarser map is not yet foreground.

    Binary (published): attention = 1 - sigmoid(coarse). With softmax classes the same idea reads
    attention = P(background) = 1 - P(any organ), from the coarse map's softmax.
    """

    def __init__(self, channel, drop_path, mlp_ratio, out_chans=1, **ssm_kw):
        super().__init__()
        self.st_block1 = nn.Sequential(Permute(0, 2, 3, 4, 1), SABMamba(channel, drop_path, mlp_ratio, **ssm_kw),
                                       Permute(0, 4, 1, 2, 3))
        self.st_block2 = nn.Sequential(Permute(0, 2, 3, 4, 1), SABMamba(channel, drop_path, mlp_ratio, **ssm_kw),
                                       Permute(0, 4, 1, 2, 3))
        self.ra_conv1 = _Conv1x1(channel, channel)
        self.ra_conv2 = _Conv1x1(channel, channel)
        self.ra_conv3 = _Conv1x1(channel, out_chans)

    def forward(self, x, coarse):
        coarse = _upsample(coarse, x.shape[-3:])
        if coarse.shape[1] == 1:
            attn = 1.0 - torch.sigmoid(coarse)
        else:
            attn = torch.softmax(coarse.float(), dim=1)[:, :1].to(coarse.dtype)
        identity = x
        x = self.st_block1(x) * attn
        x = self.ra_conv1(x)
        x = self.st_block2(x) + identity
        x = self.ra_conv3(self.ra_conv2(x))
        return x + coarse


class SRMAMamba(nn.Module):
    def __init__(self, cfg: SRMAConfig | None = None, **overrides):
        super().__init__()
        cfg = cfg or SRMAConfig()
        if overrides:
            cfg = SRMAConfig.from_dict({**cfg.to_dict(), **overrides})
        self.cfg = cfg
        e = cfg.embed_channels
        self.encoder = SABMambaEncoder(cfg)
        for i, d in enumerate(self.encoder.dims, start=1):
            setattr(self, f"translayer{i}_st", BasicConv3d(d, e))
        ssm_kw = dict(d_state=cfg.d_state, ssm_ratio=cfg.ssm_ratio, scan_backend=cfg.scan_backend)
        for i in (3, 2, 1):
            setattr(self, f"attention{i}", SRMAttention(e, cfg.decoder_drop_path, cfg.mlp_ratio, cfg.out_chans,
                                                        **ssm_kw))
        self.out_conv1 = _Conv1x1(e, cfg.out_chans)
        self.apply(self._init_weights)
        if cfg.refine_channels:            # after _init_weights: its zero start must stay
            self.refine = FullResRefine(cfg.in_chans, cfg.out_chans, cfg.refine_channels)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x):
        size = x.shape[-3:]
        if any(s % 16 for s in size):
            raise ValueError(f"SRMA-Mamba needs H, W, D divisible by 16, got {tuple(size)}")
        x1, x2, x3, x4 = self.encoder(x)
        a4 = self.out_conv1(self.translayer4_st(x4))
        a3 = self.attention3(self.translayer3_st(x3), a4)
        a2 = self.attention2(self.translayer2_st(x2), a3)
        a1 = self.attention1(self.translayer1_st(x1), a2)
        outs = [_upsample(a, size) for a in (a1, a2, a3, a4)]
        if self.cfg.refine_channels:
            outs[0] = self.refine(x, outs[0])
        return tuple(outs)
