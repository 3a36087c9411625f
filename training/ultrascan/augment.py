"""The published training augmentations, batched on the training device.

RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3) + horizontal flip, RandAugment (rand-m9-mstd0.5-inc1:
two ops per image, magnitude ~ N(9, 0.5)), normalisation, random erasing (p 0.1, per-pixel noise),
Mixup / CutMix (alpha 0.2 each, one or the other per batch) with label smoothing 0.1.

Why not torchvision / timm / MONAI transforms: those run per image on CPU workers; a whole 5-fold
cross-validation of three models has to fit in minutes of one GPU, so every op here acts on a batch
of images at once on the GPU (geometry folded into one affine grid_sample per batch).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from UltraScanClassifierLib.model import normalize


@dataclass
class AugmentConfig:
    size: int = 224
    scale: tuple = (0.08, 1.0)
    ratio: tuple = (3 / 4, 4 / 3)
    hflip: float = 0.5
    ra_ops: int = 2
    ra_magnitude: float = 9.0
    ra_magnitude_std: float = 0.5
    reprob: float = 0.1
    mixup_alpha: float = 0.2
    cutmix_alpha: float = 0.2
    mixup_switch_prob: float = 0.5
    smoothing: float = 0.1
    lesion_crop: float = 0.0          # per image, the probability of a lesion-centred crop (needs the outlines)
    lesion_margin: tuple = (1.6, 2.6)  # that crop's half-side / the lesion box's larger half-side

    @classmethod
    def preset(cls, name: str, size: int = 224) -> "AugmentConfig":
        """'published': the authors' fine-tuning recipe. 'scratch': milder, for training without
        pre-trained weights on ~500 images (crops keep at least 35% of the image, where a lesion
        usually survives; RandAugment at magnitude 5; no Mixup/CutMix)."""
        if name == "published":
            return cls(size=size)
        if name == "scratch":
            return cls(size=size, scale=(0.35, 1.0), ra_magnitude=5.0, mixup_alpha=0.0, cutmix_alpha=0.0)
        if name == "distill":
            # function matching (Beyer et al., CVPR 2022): teacher and student see the same strongly
            # augmented, mixed view; the teacher's soft output is the target, so mixing costs no label noise
            return cls(size=size, scale=(0.35, 1.0), ra_magnitude=7.0, mixup_alpha=0.4, cutmix_alpha=0.4)
        raise ValueError(f"unknown augmentation preset {name!r}: published, scratch or distill")


def _uniform(n, lo, hi, g, device):
    return lo + (hi - lo) * torch.rand(n, generator=g, device=device)


def random_resized_crop_affine(n, cfg: AugmentConfig, g, device):
    """Per-image 2x3 affine (normalised coordinates) of a random resized crop with flip."""
    area = _uniform(n, cfg.scale[0], cfg.scale[1], g, device)
    logr = _uniform(n, math.log(cfg.ratio[0]), math.log(cfg.ratio[1]), g, device)
    ratio = torch.exp(logr)
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(n, generator=g, device=device) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, generator=g, device=device) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(n, generator=g, device=device) < cfg.hflip, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = w * flip
    theta[:, 1, 1] = h
    theta[:, 0, 2] = cx
    theta[:, 1, 2] = cy
    return theta


def mask_boxes(maps: torch.Tensor, thresh: float = 0.5):
    """(B, 1, H, W) maps in [0, 1] -> the box of the pixels >= thresh as (B, 4) (centre x, centre y,
    half-width, half-height) in grid_sample's normalised coordinates (the image spans [-1, 1],
    align_corners=False), and (B,) whether any pixel is on."""
    _, _, h, w = maps.shape
    on = maps[:, 0] >= thresh
    rows, cols = on.any(2), on.any(1)
    ys, xs = torch.arange(h, device=maps.device), torch.arange(w, device=maps.device)
    y0, y1 = torch.where(rows, ys, h).amin(1), torch.where(rows, ys, -1).amax(1) + 1
    x0, x1 = torch.where(cols, xs, w).amin(1), torch.where(cols, xs, -1).amax(1) + 1
    box = torch.stack([(x0 + x1) / w - 1, (y0 + y1) / h - 1, (x1 - x0) / w, (y1 - y0) / h], 1).float()
    return box, rows.any(1)


def square_crop_theta(cx, cy, s, flip=None):
    """2x3 affines of square crops: centre (cx, cy), half-side s (normalised units; 1 = the whole image),
    moved inside the image where they fit; flip: -1 mirrors left-right."""
    cx, cy = cx.clamp(-(1 - s), 1 - s), cy.clamp(-(1 - s), 1 - s)
    theta = torch.zeros(s.shape[0], 2, 3, device=s.device)
    theta[:, 0, 0] = s * (flip if flip is not None else 1.0)
    theta[:, 1, 1] = s
    theta[:, 0, 2], theta[:, 1, 2] = cx, cy
    return theta


def lesion_crop_affine(theta, masks_u8, cfg: AugmentConfig, g):
    """Replace the random crop of a fraction cfg.lesion_crop of the images by a square crop around the lesion
    (half-side lesion_margin x the box's larger half-side, centre jittered by up to a quarter of it); images
    without a lesion (normal) get a square crop of similar size anywhere, so that a crop does not by itself
    mean 'lesion'. The flip of the random crop is kept."""
    n, dev = theta.shape[0], theta.device
    box, has = mask_boxes(masks_u8.float() / 255)
    sel = torch.rand(n, generator=g, device=dev) < cfg.lesion_crop
    margin = _uniform(n, cfg.lesion_margin[0], cfg.lesion_margin[1], g, dev)
    s = torch.where(has, margin * box[:, 2:].amax(1), _uniform(n, 0.3, 0.7, g, dev)).clamp(0.15, 1.0)
    jx, jy = ((torch.rand(2, n, generator=g, device=dev) * 2 - 1) * 0.25 * s)
    cx = torch.where(has, box[:, 0], (torch.rand(n, generator=g, device=dev) * 2 - 1) * (1 - s)) + jx
    cy = torch.where(has, box[:, 1], (torch.rand(n, generator=g, device=dev) * 2 - 1) * (1 - s)) + jy
    crop = square_crop_theta(cx, cy, s, torch.sign(theta[:, 0, 0]))
    return torch.where(sel.view(-1, 1, 1), crop, theta)


def crop_batch(images_u8: torch.Tensor, theta: torch.Tensor, size: int = 224) -> torch.Tensor:
    """uint8 (B, 3, H, W) and crop affines -> the crops at size x size, normalised (evaluation)."""
    x = images_u8.float() / 255
    grid = F.affine_grid(theta, (x.shape[0], 3, size, size), align_corners=False)
    return normalize(F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False))


# RandAugment ops: geometric ones compose into the affine, photometric ones act on pixels in [0, 1]
_GEOM = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
_PHOTO = ("identity", "auto_contrast", "equalize", "brightness", "contrast", "sharpness", "posterize", "solarize",
          "solarize_add", "color")
OPS = _GEOM + _PHOTO


def _geom_matrix(op, level, sign, n, device):
    """3x3 homogeneous matrices for a geometric op (level in [0, 1])."""
    m = torch.eye(3, device=device).repeat(n, 1, 1)
    if op == "rotate":
        a = sign * level * math.radians(30)
        m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = torch.cos(a), -torch.sin(a), torch.sin(a), torch.cos(a)
    elif op == "shear_x":
        m[:, 0, 1] = sign * level * 0.3
    elif op == "shear_y":
        m[:, 1, 0] = sign * level * 0.3
    elif op == "translate_x":
        m[:, 0, 2] = sign * level * 0.45 * 2       # 45% of the image, in [-1, 1] units
    elif op == "translate_y":
        m[:, 1, 2] = sign * level * 0.45 * 2
    return m


def _blend(a, b, factor):
    return (b + (a - b) * factor.view(-1, 1, 1, 1)).clamp(0, 1)


def _gray(x):
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)


def _photo(op, x, level, sign):
    n = x.shape[0]
    if op == "identity":
        return x
    if op == "auto_contrast":
        lo = x.amin(dim=(2, 3), keepdim=True)
        hi = x.amax(dim=(2, 3), keepdim=True)
        return ((x - lo) / (hi - lo).clamp(min=1e-3)).clamp(0, 1)
    if op == "equalize":
        # histogram equalisation by rank (per image, on the gray level; colour kept as a ratio)
        g = _gray(x)[:, 0].reshape(n, -1)
        ranks = g.argsort(dim=1).argsort(dim=1).float() / (g.shape[1] - 1)
        eq = ranks.view(n, 1, *x.shape[2:])
        return (x * (eq / _gray(x)[:, :1].clamp(min=1e-3))).clamp(0, 1)
    factor = 1.0 + sign * level * 0.9
    if op == "brightness":
        return _blend(x, torch.zeros_like(x), factor)
    if op == "contrast":
        mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
        return _blend(x, mean.expand_as(x), factor)
    if op == "color":
        return _blend(x, _gray(x), factor)
    if op == "sharpness":
        k = torch.tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=x.dtype, device=x.device) / 13
        blur = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k.view(1, 1, 3, 3).repeat(3, 1, 1, 1), groups=3)
        return _blend(x, blur, factor)
    if op == "posterize":
        bits = (8 - (level * 4).round()).clamp(4, 8).view(-1, 1, 1, 1)
        q = 2 ** (8 - bits)
        return torch.floor(x * 255 / q) * q / 255
    if op == "solarize":
        thr = (1.0 - level).view(-1, 1, 1, 1)
        return torch.where(x >= thr, 1 - x, x)
    if op == "solarize_add":
        add = (level * 110 / 255).view(-1, 1, 1, 1)
        return torch.where(x < 128 / 255, (x + add).clamp(0, 1), x)
    raise ValueError(op)


def rand_augment(x, theta, cfg: AugmentConfig, g):
    """Apply cfg.ra_ops random ops per image; returns (pixels, composed affine)."""
    n, device = x.shape[0], x.device
    choices = torch.randint(len(OPS), (cfg.ra_ops, n), generator=g, device=device)
    full = torch.cat([theta, torch.tensor([0, 0, 1.0], device=device).view(1, 1, 3).expand(n, 1, 3)], dim=1)
    photo_plan = []
    for k in range(cfg.ra_ops):
        mag = (cfg.ra_magnitude + cfg.ra_magnitude_std * torch.randn(n, generator=g, device=device)).clamp(0, 10) / 10
        sign = torch.where(torch.rand(n, generator=g, device=device) < 0.5, -1.0, 1.0)
        for j, op in enumerate(OPS):
            sel = choices[k] == j
            if not bool(sel.any()):
                continue
            if op in _GEOM:
                m = _geom_matrix(op, mag, sign, n, device)
                full = torch.where(sel.view(-1, 1, 1), full @ m, full)
            else:
                photo_plan.append((op, sel, mag, sign))
    return photo_plan, full[:, :2]


def random_erasing(x, prob, g, area=(0.02, 1 / 3), ratio=(0.3, 3.3)):
    """Per image with probability prob: one rectangle filled with N(0, 1) noise (normalised space)."""
    n, _, h, w = x.shape
    dev = x.device
    hit = torch.rand(n, generator=g, device=dev) < prob
    if not bool(hit.any()):
        return x
    a = _uniform(n, area[0], area[1], g, dev) * h * w
    r = torch.exp(_uniform(n, math.log(ratio[0]), math.log(ratio[1]), g, dev))
    eh = torch.sqrt(a * r).clamp(1, h - 1).floor()
    ew = torch.sqrt(a / r).clamp(1, w - 1).floor()
    top = (torch.rand(n, generator=g, device=dev) * (h - eh)).floor()
    left = (torch.rand(n, generator=g, device=dev) * (w - ew)).floor()
    yy = torch.arange(h, device=dev).view(1, h, 1)
    xx = torch.arange(w, device=dev).view(1, 1, w)
    box = ((yy >= top.view(-1, 1, 1)) & (yy < (top + eh).view(-1, 1, 1)) &
           (xx >= left.view(-1, 1, 1)) & (xx < (left + ew).view(-1, 1, 1)) & hit.view(-1, 1, 1))
    noise = torch.randn(x.shape, generator=g, device=dev, dtype=x.dtype)
    return torch.where(box.unsqueeze(1), noise, x)


def smooth_one_hot(y, num_classes, smoothing):
    off = smoothing / num_classes
    return torch.full((y.shape[0], num_classes), off, device=y.device).scatter_(1, y.view(-1, 1), 1 - smoothing + off)


def mixup_cutmix(x, y_soft, cfg: AugmentConfig, g, masks=None):
    """Batch mode: flip the batch and mix; CutMix (box) or Mixup (blend), lambda ~ Beta(alpha, alpha).
    `masks` (n, 1, h, w), if given, are mixed the same way and returned third."""
    n, _, h, w = x.shape
    if cfg.mixup_alpha <= 0 and cfg.cutmix_alpha <= 0:
        return (x, y_soft) if masks is None else (x, y_soft, masks)
    use_cutmix = cfg.cutmix_alpha > 0 and (cfg.mixup_alpha <= 0 or
                                           float(torch.rand(1, generator=g, device=x.device)) < cfg.mixup_switch_prob)
    alpha = cfg.cutmix_alpha if use_cutmix else cfg.mixup_alpha
    if alpha <= 0:
        return (x, y_soft) if masks is None else (x, y_soft, masks)
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    xf, yf = x.flip(0), y_soft.flip(0)
    if use_cutmix:
        cut = math.sqrt(1 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(torch.randint(h, (1,))), int(torch.randint(w, (1,)))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = xf[:, :, y0:y1, x0:x1]
        if masks is not None:
            masks = masks.clone()
            masks[:, :, y0:y1, x0:x1] = masks.flip(0)[:, :, y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        x = x * lam + xf * (1 - lam)
        if masks is not None:
            masks = masks * lam + masks.flip(0) * (1 - lam)
    y = y_soft * lam + yf * (1 - lam)
    return (x, y) if masks is None else (x, y, masks)


def train_batch(images_u8: torch.Tensor, labels: torch.Tensor, cfg: AugmentConfig, num_classes: int,
                g: torch.Generator | None = None, masks_u8: torch.Tensor | None = None):
    """uint8 (B, 3, H, W) on the training device -> (normalised float batch, soft targets); with lesion
    masks (B, 1, H, W) uint8 also the masks in [0, 1] through the same geometry and mixing, third."""
    x = images_u8.float() / 255
    n = x.shape[0]
    theta = random_resized_crop_affine(n, cfg, g, x.device)
    if cfg.lesion_crop > 0 and masks_u8 is not None:
        theta = lesion_crop_affine(theta, masks_u8, cfg, g)
    plan, theta = rand_augment(x, theta, cfg, g)
    grid = F.affine_grid(theta, (n, 3, cfg.size, cfg.size), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    m = None
    if masks_u8 is not None:
        m = F.grid_sample(masks_u8.float() / 255, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    for op, sel, mag, sign in plan:
        x = torch.where(sel.view(-1, 1, 1, 1), _photo(op, x, mag, sign), x)
    x = random_erasing(normalize(x), cfg.reprob, g)
    y = smooth_one_hot(labels, num_classes, cfg.smoothing)
    return mixup_cutmix(x, y, cfg, g, m)


def eval_batch(images_u8: torch.Tensor, size: int = 224) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> resized (whole image, crop_pct 1.0), normalised float batch."""
    x = images_u8.float() / 255
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    return normalize(x)
