"""UltraScanNet (Laicu-Hausberger and Popa, Electronics 14(18):3633, 2025) for breast-ultrasound
classification, parameter-compatible with the authors' published state dict (368 tensors,
37,200,451 parameters for 3 classes), written from the paper's description and the published
parameter names and shapes.

Layout (channels for the published dim 80):
  stem      2 x (conv3x3 s2, BN, ReLU) -> 80 ch at 1/4, + positional embedding
  stage 0   + positional embedding, ConvBlock, downsample -> 160 ch
  stage 1   ConvBlock, ConvBlock, MobileViT-style global block, downsample -> 320 ch
  stage 2   11 windowed token blocks (4 UltraScanUnit, 1 ConvAttnMixer, 6 MHSA), downsample -> 640 ch
  stage 3   4 windowed token blocks (2 UltraScanUnit, 2 MHSA)
  head      BatchNorm2d, global average pool, Linear

The selective scan runs in ssm_kernels (Triton on CUDA, vectorised torch on the CPU); this file holds
no scan of its own. Any input size works: positional embeddings are resized to the feature map and
token stages pad to their window size.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from slicer_ai_common.layers import DropPath, Mlp
from ssm_kernels import selective_scan_fn

CLASSES = ("benign", "malignant", "normal")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class UltraScanNetConfig:
    """The published configuration unless said otherwise."""
    num_classes: int = 3
    in_chans: int = 3
    dim: int = 80                       # stage i has dim * 2**i channels
    in_dim: int = 32                    # stem's first conv width
    depths: tuple = (1, 3, 11, 4)
    num_heads: tuple = (2, 4, 8, 16)    # used by stages 2 and 3
    window_size: tuple = (8, 8, 14, 7)  # used by stages 2 and 3
    mlp_ratio: float = 4.0
    img_size: int = 224                 # size the positional embeddings are made for
    drop_path_rate: float = 0.2
    d_state: int = 8                    # UltraScanUnit
    d_conv: int = 3
    global_block_heads: int = 4         # stage 1 MobileViT-style block
    global_block_layers: int = 2
    scan_backend: str | None = None     # None: ssm_kernels picks

    def to_dict(self):
        d = asdict(self)
        for k in ("depths", "num_heads", "window_size"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d):
        d = dict(d)
        for k in ("depths", "num_heads", "window_size"):
            if k in d:
                d[k] = tuple(d[k])
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def _resize_pos(pos: torch.Tensor, hw) -> torch.Tensor:
    if tuple(pos.shape[-2:]) == tuple(hw):
        return pos
    return F.interpolate(pos, size=tuple(hw), mode="bicubic", align_corners=False)


class Stem(nn.Module):
    """Two stride-2 conv/BN/ReLU layers and a learned positional embedding (keys `patch_embed.*`)."""

    def __init__(self, in_chans, in_dim, dim, grid):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, dim, grid, grid))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.conv_down = nn.Sequential(
            nn.Conv2d(in_chans, in_dim, 3, 2, 1, bias=False), nn.BatchNorm2d(in_dim, eps=1e-4), nn.ReLU(),
            nn.Conv2d(in_dim, dim, 3, 2, 1, bias=False), nn.BatchNorm2d(dim, eps=1e-4), nn.ReLU())

    def forward(self, x):
        x = self.conv_down(x)
        return x + _resize_pos(self.pos_embed, x.shape[-2:])


class ConvBlock(nn.Module):
    """x + DP(BN(conv(GELU_tanh(BN(conv(x))))))."""

    def __init__(self, dim, drop_path=0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, 1, 1)
        self.norm1 = nn.BatchNorm2d(dim, eps=1e-5)
        self.act1 = nn.GELU(approximate="tanh")
        self.conv2 = nn.Conv2d(dim, dim, 3, 1, 1)
        self.norm2 = nn.BatchNorm2d(dim, eps=1e-5)
        self.drop_path = DropPath(drop_path)

    def forward(self, x):
        return x + self.drop_path(self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x))))))


class Downsample(nn.Module):
    """Conv3x3 stride 2 doubling the channels, no bias, no norm (keys `downsample.reduction.0`)."""

    def __init__(self, dim):
        super().__init__()
        self.reduction = nn.Sequential(nn.Conv2d(dim, 2 * dim, 3, 2, 1, bias=False))

    def forward(self, x):
        return self.reduction(x)


class GlobalBlock(nn.Module):
    """Stage 1's MobileViT-style block: a local ConvBlock, then every position attends to every other
    (post-norm TransformerEncoder), a sigmoid spatial gate and a 1x1 fuse, added to the block input."""

    def __init__(self, dim, heads, layers, drop_path=0.0):
        super().__init__()
        self.local_rep = ConvBlock(dim, drop_path)
        self.proj = nn.Conv2d(dim, dim, 1)
        self.norm = nn.LayerNorm(dim)
        layer = nn.TransformerEncoderLayer(d_model=dim, nhead=heads, dim_feedforward=2 * dim, batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)
        self.sgu_gate = nn.Conv2d(dim, dim, 1)
        self.fuse = nn.Conv2d(dim, dim, 1)
        self.drop_path = DropPath(drop_path)

    def forward(self, x):
        b, c, h, w = x.shape
        t = self.proj(self.local_rep(x)).flatten(2).transpose(1, 2)
        t = self.transformer(self.norm(t))
        t = t.transpose(1, 2).reshape(b, c, h, w)
        t = t * torch.sigmoid(self.sgu_gate(t))
        return x + self.drop_path(self.fuse(t))


class Stage0(nn.Module):
    def __init__(self, dim, depth, grid, drop_path):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, dim, grid, grid))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.Sequential(*[ConvBlock(dim, drop_path[0]) for _ in range(depth)])
        self.downsample = Downsample(dim)

    def forward(self, x):
        x = x + _resize_pos(self.pos_embed, x.shape[-2:])
        return self.downsample(self.blocks(x))


class Stage1(nn.Module):
    """Two ConvBlocks and the global block (the published 'hybrid' second stage; depth is always 3)."""

    def __init__(self, dim, drop_path, heads, layers):
        super().__init__()
        dp = list(drop_path) + [0.0] * (3 - len(drop_path))
        self.blocks = nn.ModuleList([ConvBlock(dim, dp[0]), ConvBlock(dim, dp[1]),
                                     GlobalBlock(dim, heads, layers, dp[2])])
        self.downsample = Downsample(dim)

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x)


class UltraScanUnit(nn.Module):
    """The selective-scan token mixer (d_state 8, conv 3, expand 1).

    in_proj splits into x and z (C/2 each); both pass a depthwise conv1d and SiLU; x is scanned in
    token order with input-dependent dt, B, C (dt_proj's bias is applied again as the scan's delta
    bias, with softplus: kept for weight compatibility); z gates itself; a low-rank 1x1 branch of
    [x, z] is added; out_proj mixes back to C. `temb` exists in the published weights but is unused.
    """

    def __init__(self, d_model, d_state=8, d_conv=3, scan_backend=None):
        super().__init__()
        self.d_inner = d_model            # expand 1
        half = self.d_inner // 2
        self.half, self.d_state = half, d_state
        self.dt_rank = math.ceil(d_model / 16)
        self.scan_backend = scan_backend
        self.in_proj = nn.Linear(d_model, self.d_inner, bias=False)
        self.x_proj = nn.Linear(half, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, half, bias=True)
        self.conv1d_x = nn.Conv1d(half, half, d_conv, groups=half, padding="same", bias=False)
        self.conv1d_z = nn.Conv1d(half, half, d_conv, groups=half, padding="same", bias=False)
        self.z_gate = nn.Conv1d(half, half, 1)
        self.residual_proj = nn.Sequential(nn.Conv1d(self.d_inner, self.d_inner // 4, 1), nn.GELU(),
                                           nn.Conv1d(self.d_inner // 4, self.d_inner, 1))
        self.temb = nn.Parameter(torch.zeros(1, half, 1))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(half, 1))
        self.D = nn.Parameter(torch.ones(half))
        self._init_dt()

    def _init_dt(self, dt_min=1e-3, dt_max=0.1, floor=1e-4):
        std = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(self.half) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))   # inverse softplus
        self.dt_proj.bias._no_reinit = True

    def forward(self, tokens):                    # (B, L, C)
        b, L, _ = tokens.shape
        xz = self.in_proj(tokens).transpose(1, 2)  # (B, C, L)
        x, z = xz.split(self.half, dim=1)
        x = F.silu(self.conv1d_x(x))
        z = F.silu(self.conv1d_z(z))
        dbc = self.x_proj(x.transpose(1, 2))       # (B, L, R + 2N)
        dt, Bm, Cm = dbc.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = self.dt_proj(dt).transpose(1, 2).contiguous()
        y = selective_scan_fn(
            x.contiguous(), delta, -torch.exp(self.A_log.float()),
            Bm.transpose(1, 2).contiguous(), Cm.transpose(1, 2).contiguous(), self.D.float(),
            delta_bias=self.dt_proj.bias.float(), delta_softplus=True, backend=self.scan_backend)
        y = torch.cat([y.to(z.dtype), torch.sigmoid(self.z_gate(z)) * z], dim=1)
        y = y + self.residual_proj(torch.cat([x, z], dim=1))
        return self.out_proj(y.transpose(1, 2))


class ConvAttnMixer(nn.Module):
    """Depthwise 7x7 conv over the window, LayerNorm, 4x MLP (no attention, despite the name)."""

    def __init__(self, dim, kernel_size=7):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pwff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, tokens):
        b, n, c = tokens.shape
        s = math.isqrt(n)
        x = self.dwconv(tokens.transpose(1, 2).reshape(b, c, s, s)).flatten(2).transpose(1, 2)
        return self.pwff(self.norm(x))


class Attention(nn.Module):
    """Multi-head self-attention with qkv bias over the tokens of one window."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens):
        b, n, c = tokens.shape
        q, k, v = self.qkv(tokens).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


def mixer_kind(i: int, depth: int) -> str:
    """Published rule: the first third scan, then ConvAttnMixer up to 2/3 minus two, then attention."""
    if i <= depth // 3:
        return "scan"
    if i < 2 * depth // 3 - 2:
        return "conv"
    return "attention"


class TokenBlock(nn.Module):
    """Pre-norm block: x + DP(mixer(LN x)), x + DP(MLP(LN x))."""

    def __init__(self, dim, kind, heads, mlp_ratio, drop_path, cfg: UltraScanNetConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        if kind == "scan":
            self.mixer = UltraScanUnit(dim, cfg.d_state, cfg.d_conv, cfg.scan_backend)
        elif kind == "conv":
            self.mixer = ConvAttnMixer(dim)
        else:
            self.mixer = Attention(dim, heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.drop_path(self.mixer(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def window_partition(x, ws):
    """(B, C, H, W) with H, W multiples of ws -> (B * windows, ws * ws, C), tokens row-major in a window."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // ws, ws, w // ws, ws).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(-1, ws * ws, c)


def window_reverse(t, ws, h, w):
    b = t.shape[0] // ((h // ws) * (w // ws))
    x = t.reshape(b, h // ws, w // ws, ws, ws, -1).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, -1, h, w)


class TokenStage(nn.Module):
    def __init__(self, dim, depth, heads, window, drop_path, downsample, cfg):
        super().__init__()
        self.window = window
        self.blocks = nn.ModuleList([TokenBlock(dim, mixer_kind(i, depth), heads, cfg.mlp_ratio, drop_path[i], cfg)
                                     for i in range(depth)])
        self.downsample = Downsample(dim) if downsample else None

    def forward(self, x):
        _, _, h, w = x.shape
        ws = self.window
        pad_b, pad_r = (-h) % ws, (-w) % ws
        if pad_b or pad_r:
            x = F.pad(x, (0, pad_r, 0, pad_b))
        hp, wp = x.shape[-2:]
        t = window_partition(x, ws)
        for blk in self.blocks:
            t = blk(t)
        x = window_reverse(t, ws, hp, wp)
        if pad_b or pad_r:
            x = x[:, :, :h, :w].contiguous()
        return x if self.downsample is None else self.downsample(x)


class UltraScanNet(nn.Module):
    def __init__(self, cfg: UltraScanNetConfig | None = None, **overrides):
        super().__init__()
        cfg = cfg or UltraScanNetConfig()
        if overrides:
            cfg = UltraScanNetConfig.from_dict({**cfg.to_dict(), **overrides})
        self.cfg = cfg
        d = cfg.dim
        grid = cfg.img_size // 4
        dpr = torch.linspace(0, cfg.drop_path_rate, sum(cfg.depths)).tolist()
        starts = [sum(cfg.depths[:i]) for i in range(4)]
        rates = [dpr[s:s + n] for s, n in zip(starts, cfg.depths)]
        self.patch_embed = Stem(cfg.in_chans, cfg.in_dim, d, grid)
        self.levels = nn.ModuleList([
            Stage0(d, cfg.depths[0], grid, rates[0]),
            Stage1(2 * d, rates[1], cfg.global_block_heads, cfg.global_block_layers),
            TokenStage(4 * d, cfg.depths[2], cfg.num_heads[2], cfg.window_size[2], rates[2], True, cfg),
            TokenStage(8 * d, cfg.depths[3], cfg.num_heads[3], cfg.window_size[3], rates[3], False, cfg),
        ])
        self.num_features = 8 * d
        self.norm = nn.BatchNorm2d(self.num_features)
        self.head = nn.Linear(self.num_features, cfg.num_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None and not getattr(m.bias, "_no_reinit", False):
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward_features(self, x, return_stages: bool = False):
        """Last-stage feature map (B, 8*dim, H/32, W/32); with return_stages also [stem, level0..3]."""
        x = self.patch_embed(x)
        stages = [x]
        for level in self.levels:
            x = level(x)
            stages.append(x)
        return (x, stages) if return_stages else x

    def forward_head(self, fmap):
        return self.head(self.norm(fmap).mean(dim=(2, 3)))

    def cam_weights(self):
        """(classes, channels): d logit / d mean-pooled feature map. The head is an eval-mode BatchNorm (a
        per-channel scale), a global mean and a linear layer, so Grad-CAM's channel weights are these rows
        divided by h * w, and the heatmap needs no backward. None in training mode (batch statistics)."""
        if self.training:
            return None
        scale = self.norm.weight / torch.sqrt(self.norm.running_var + self.norm.eps)
        return self.head.weight * scale[None]

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def no_weight_decay(self):
        """Parameter names kept out of weight decay: norms, biases, positional embeddings, A_log, D."""
        return {n for n, p in self.named_parameters()
                if p.ndim <= 1 or n.endswith(("pos_embed", "A_log", ".D", "temb"))}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops(model: nn.Module, size=(224, 224)) -> float:
    """Multiply-accumulates x2 of one forward pass at `size`, counted by torch's FLOP counter (CPU)."""
    from torch.utils.flop_counter import FlopCounterMode

    was = model.training
    model.eval()
    x = torch.zeros(1, 3, *size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was)
    return float(counter.get_total_flops())


def normalize(x: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1], (N, 3, H, W) -> ImageNet-normalised, as every model here was trained."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


__all__ = ["UltraScanNet", "UltraScanNetConfig", "CLASSES", "IMAGENET_MEAN", "IMAGENET_STD", "count_parameters",
           "flops", "mixer_kind", "normalize"]


ARCHITECTURES = ("UltraScanNet", "EfficientNet-Lite0")


def build_classifier(architecture: str, config: dict | None = None):
    """The network a model manifest names -> (module, config dict as written to the manifest).
    config["members"] = N > 1: N copies of the network (other seeds) whose logits are averaged
    (ensemble.MemberMean; state-dict keys `members.<i>.`); absent or 1: the single network."""
    config = dict(config or {})
    members = int(config.pop("members", 1))
    if members < 1:
        raise ValueError(f"members must be a positive count, got {members}")
    if architecture == "UltraScanNet":
        ucfg = UltraScanNetConfig.from_dict(config)
        make, cfg = (lambda: UltraScanNet(ucfg)), ucfg.to_dict()
    elif architecture == "EfficientNet-Lite0":
        from .efficientnet_lite import EfficientNetLite0
        cfg = {"num_classes": int(config.get("num_classes", len(CLASSES))), "in_chans": int(config.get("in_chans", 3))}
        make = lambda: EfficientNetLite0(**cfg)          # noqa: E731
    else:
        raise ValueError(f"unknown classifier architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    if members == 1:
        return make(), cfg
    from .ensemble import MemberMean
    return MemberMean([make() for _ in range(members)]), {**cfg, "members": members}
