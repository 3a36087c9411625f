"""nnU-Net-style data augmentation for 3D MRI patches, a whole batch at once on the training device.

Why not MONAI's transforms: they work one sample at a time (on CPU workers or the GPU), and each
spatial transform resamples separately. Here the patch sampling (crop with foreground oversampling),
rotation, scaling and elastic deformation are folded into one sampling grid per batch and applied by
one `grid_sample` call for the image and one for the one-hot labels; the intensity transforms act on
the whole batch with per-sample random parameters. Everything is computed in millimetres, so rotations
stay rigid on anisotropic voxels (CHAOS T2: 7.7 mm slices).

Recipe (Isensee et al., nnU-Net, Nature Methods 2021; probabilities per sample):
rotation (in-plane up to +-30 deg, out-of-plane up to +-5 deg) p 0.5, scaling 0.7-1.4 p 0.5, elastic
deformation p 0.2, Gaussian noise p 0.15, Gaussian blur p 0.2, brightness p 0.15, contrast p 0.15,
simulated low resolution p 0.25, gamma p 0.3 (inverted p 0.1), mirroring.

Organ contrast (`p_organ`, off in nnU-Net, on in this project's recipe): the grey value of liver and
spleen, above the image's background, is multiplied by a random factor (0.15-1.3, one for both organs,
jittered +-15 % per organ) inside their soft, slightly blurred label masks. Why: CHAOS case_15 has a
liver and spleen at a fifth of the kidneys' T2 signal where the other 14 cases have 0.41-0.67 (liver)
and 0.65-1.45 (spleen): the picture of iron overload (haemosiderosis), which darkens liver, spleen and
marrow and spares the kidneys. A model that never saw a dark liver misses it entirely (Dice 0.002 in its
fold); global gamma/contrast cannot make the liver darker than the kidneys.

Mirroring: on the anterior-posterior and cranio-caudal axes (p 0.5 each), not left-right by default:
left-right mirroring puts the liver where the spleen is and swaps the kidneys' labels, erasing the one
cue that separates liver from spleen on a grey-value image (`mirror_axes` changes it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from SRMASegmenterLib.inference import gaussian_blur_axis


@dataclass
class Augment3DConfig:
    patch: tuple = (128, 128, 48)        # voxels (i, j, k)
    spacing: tuple = (2.5, 2.5, 7.7)     # mm of the data and the patch
    fg_fraction: float = 1 / 3           # patches centred on a foreground voxel
    fg_classes: tuple = (1, 4)           # liver, spleen (CHAOS)
    p_rotate: float = 0.5
    rot_inplane_deg: float = 30.0
    rot_outplane_deg: float = 5.0
    p_scale: float = 0.5
    scale: tuple = (0.7, 1.4)
    p_elastic: float = 0.2
    elastic_mm: float = 10.0             # displacement amplitude (in-plane; a third of it across slices)
    elastic_grid: tuple = (5, 5, 3)      # control points of the displacement field
    p_noise: float = 0.15
    noise_var: tuple = (0.0, 0.1)
    p_blur: float = 0.2
    blur_sigma: tuple = (0.5, 1.0)       # voxels, in-plane
    p_brightness: float = 0.15
    brightness: tuple = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast: tuple = (0.75, 1.25)
    p_lowres: float = 0.25
    lowres_zoom: tuple = (0.5, 1.0)
    p_gamma: float = 0.3
    p_gamma_invert: float = 0.1
    gamma: tuple = (0.7, 1.5)
    mirror_axes: tuple = (1, 2)          # axes of (i, j, k) that may be mirrored; 0 (left-right) is off
    p_mirror: float = 0.5
    p_organ: float = 0.0                 # organ contrast (see the module text); the recipe sets 0.3
    organ_classes: tuple = (1, 4)        # liver, spleen (CHAOS): the organs iron overload darkens
    organ_scale: tuple = (0.15, 1.3)     # factor on (value - background) inside the organs
    organ_jitter: float = 0.15           # per-organ deviation from the shared factor

    @classmethod
    def none(cls, **kw) -> "Augment3DConfig":
        """Patch sampling only (for tests and ablations)."""
        off = dict(p_rotate=0, p_scale=0, p_elastic=0, p_noise=0, p_blur=0, p_brightness=0, p_contrast=0,
                   p_lowres=0, p_gamma=0, p_gamma_invert=0, p_mirror=0, p_organ=0)
        return cls(**{**off, **kw})


def _u(n, lo, hi, g, dev):
    return lo + (hi - lo) * torch.rand(n, generator=g, device=dev)


def _hit(n, p, g, dev):
    return torch.rand(n, generator=g, device=dev) < p


def _rot(axis, ang):
    """(n, 3, 3) rotations about one axis of (i, j, k)."""
    n = ang.shape[0]
    c, s = torch.cos(ang), torch.sin(ang)
    m = torch.eye(3, device=ang.device).repeat(n, 1, 1)
    a, b = [x for x in range(3) if x != axis]
    m[:, a, a], m[:, a, b], m[:, b, a], m[:, b, b] = c, -s, s, c
    return m


def _centres_mm(labels, cfg: Augment3DConfig, g):
    """Per sample: the patch centre in mm from the canvas centre; a random foreground voxel for a
    fraction of the samples (where there is one), else uniform over the canvas."""
    n, dev = labels.shape[0], labels.device
    size = torch.tensor(labels.shape[1:], device=dev, dtype=torch.float32)
    sp = torch.tensor(cfg.spacing, device=dev)
    centres = (torch.rand(n, 3, generator=g, device=dev) - 0.5) * (size * sp - torch.tensor(cfg.patch, device=dev) * sp).clamp(min=0)
    want_fg = _hit(n, cfg.fg_fraction, g, dev)
    for b in torch.nonzero(want_fg).flatten().tolist():
        fg = torch.zeros_like(labels[b], dtype=torch.bool)
        for c in cfg.fg_classes:
            fg |= labels[b] == c
        idx = torch.nonzero(fg)
        if len(idx):
            pick = idx[torch.randint(len(idx), (1,), generator=g, device=dev)][0].float()
            centres[b] = (pick - (size - 1) / 2) * sp
    return centres


def sampling_grid(labels, cfg: Augment3DConfig, g=None):
    """The grid_sample grid (n, Pi, Pj, Pk, 3) that crops, rotates, scales and deforms each sample, and
    the mirror flags (n, 3)."""
    n, dev = labels.shape[0], labels.device
    sp = torch.tensor(cfg.spacing, device=dev)
    P = torch.tensor(cfg.patch, device=dev, dtype=torch.float32)
    C = torch.tensor(labels.shape[1:], device=dev, dtype=torch.float32)
    axes = [torch.arange(p, device=dev, dtype=torch.float32) for p in cfg.patch]
    ii, jj, kk = torch.meshgrid(*axes, indexing="ij")
    u = (torch.stack([ii, jj, kk], -1) - (P - 1) / 2) * sp               # (Pi, Pj, Pk, 3) mm from patch centre
    A = torch.eye(3, device=dev).repeat(n, 1, 1)
    rot = _hit(n, cfg.p_rotate, g, dev)
    if bool(rot.any()):
        r_in = _u(n, -1, 1, g, dev) * math.radians(cfg.rot_inplane_deg)
        r_a = _u(n, -1, 1, g, dev) * math.radians(cfg.rot_outplane_deg)
        r_b = _u(n, -1, 1, g, dev) * math.radians(cfg.rot_outplane_deg)
        R = _rot(2, r_in) @ _rot(0, r_a) @ _rot(1, r_b)
        A = torch.where(rot.view(-1, 1, 1), R, A)
    sc = torch.where(_hit(n, cfg.p_scale, g, dev), _u(n, *cfg.scale, g, dev), torch.ones(n, device=dev))
    A = A * sc.view(-1, 1, 1)
    v = torch.einsum("nab,ijkb->nijka", A, u)
    el = _hit(n, cfg.p_elastic, g, dev)
    if bool(el.any()):
        amp = torch.tensor([cfg.elastic_mm, cfg.elastic_mm, cfg.elastic_mm / 3], device=dev)
        coarse = torch.randn(n, 3, *cfg.elastic_grid, generator=g, device=dev) * amp.view(1, 3, 1, 1, 1)
        d = F.interpolate(coarse, size=tuple(cfg.patch), mode="trilinear", align_corners=True).permute(0, 2, 3, 4, 1)
        v = v + d * el.view(-1, 1, 1, 1, 1)
    v = v + _centres_mm(labels, cfg, g).view(n, 1, 1, 1, 3)
    idx = v / sp + (C - 1) / 2                                           # source voxel index (i, j, k)
    norm = (2 * idx + 1) / C - 1                                         # align_corners=False
    mirror = torch.zeros(n, 3, dtype=torch.bool, device=dev)
    for ax in cfg.mirror_axes:
        mirror[:, ax] = _hit(n, cfg.p_mirror, g, dev)
    return norm.flip(-1), mirror                                         # grid_sample wants (k, j, i) = (x, y, z)


def _gauss_blur(x, sigma_ij):
    """Separable Gaussian blur of (n, C, I, J, K) in-plane, one sigma (voxels) for the batch."""
    return gaussian_blur_axis(gaussian_blur_axis(x, sigma_ij, 0), sigma_ij, 1)


def intensity(x, cfg: Augment3DConfig, g=None):
    """nnU-Net's intensity transforms on a normalised batch (n, 1, I, J, K), per-sample parameters."""
    n, dev = x.shape[0], x.device

    def pick(p):
        return _hit(n, p, g, dev).view(-1, 1, 1, 1, 1)

    noise = torch.randn(x.shape, generator=g, device=dev) * _u(n, *cfg.noise_var, g, dev).sqrt().view(-1, 1, 1, 1, 1)
    x = torch.where(pick(cfg.p_noise), x + noise, x)
    if cfg.p_blur > 0:
        x = torch.where(pick(cfg.p_blur), _gauss_blur(x, float(_u(1, *cfg.blur_sigma, g, dev))), x)
    x = torch.where(pick(cfg.p_brightness), x * _u(n, *cfg.brightness, g, dev).view(-1, 1, 1, 1, 1), x)
    mean = x.mean(dim=(2, 3, 4), keepdim=True)
    lo, hi = x.amin(dim=(2, 3, 4), keepdim=True), x.amax(dim=(2, 3, 4), keepdim=True)
    con = ((x - mean) * _u(n, *cfg.contrast, g, dev).view(-1, 1, 1, 1, 1) + mean).clamp(lo, hi)
    x = torch.where(pick(cfg.p_contrast), con, x)
    if cfg.p_lowres > 0:
        z = float(_u(1, *cfg.lowres_zoom, g, dev))
        size = [max(1, int(round(s * z))) for s in x.shape[2:4]] + [x.shape[4]]
        low = F.interpolate(F.interpolate(x, size=size, mode="nearest"), size=x.shape[2:], mode="trilinear",
                            align_corners=False)
        x = torch.where(pick(cfg.p_lowres), low, x)
    lo, hi = x.amin(dim=(2, 3, 4), keepdim=True), x.amax(dim=(2, 3, 4), keepdim=True)
    rng = (hi - lo).clamp(min=1e-6)
    gam = _u(n, *cfg.gamma, g, dev).view(-1, 1, 1, 1, 1)
    inv = pick(cfg.p_gamma_invert)
    t = (x - lo) / rng
    t = torch.where(inv, 1 - (1 - t).clamp(min=0) ** gam, t.clamp(min=0) ** gam)
    x = torch.where(pick(cfg.p_gamma) | inv, t * rng + lo, x)
    return x


def organ_contrast(x, soft_onehot, lo, cfg: Augment3DConfig, g=None):
    """Scale (x - lo) inside the organs of `cfg.organ_classes` by a random factor per sample (shared by
    the organs, jittered per organ), blended through the soft one-hot masks blurred by one voxel in-plane
    so that the organ's rim has no step edge. x (n, 1, I, J, K), soft_onehot (n, C, I, J, K), lo (n, 1, 1, 1, 1)."""
    n, dev = x.shape[0], x.device
    hit = _hit(n, cfg.p_organ, g, dev)
    classes = [c for c in cfg.organ_classes if c < soft_onehot.shape[1]]
    if not bool(hit.any()) or not classes:
        return x
    base = _u(n, *cfg.organ_scale, g, dev)
    gain = torch.zeros_like(x)
    for c in classes:
        f = (base * _u(n, 1 - cfg.organ_jitter, 1 + cfg.organ_jitter, g, dev)).clamp(min=0.05)
        m = _gauss_blur(soft_onehot[:, c:c + 1].clamp(0, 1), 1.0)
        gain = gain + (f.view(-1, 1, 1, 1, 1) - 1) * m
    out = lo + (x - lo) * (1 + gain).clamp(min=0.05)
    return torch.where(hit.view(-1, 1, 1, 1, 1), out, x)


def augment_batch(images, labels, num_classes: int, cfg: Augment3DConfig, g=None):
    """images (n, 1, I, J, K) float (each sample's minimum is its background), labels (n, I, J, K)
    integer, on one canvas size -> patches (n, 1, *patch) and labels (n, *patch) long."""
    grid, mirror = sampling_grid(labels, cfg, g)
    lo = images.amin(dim=(1, 2, 3, 4), keepdim=True)
    x = F.grid_sample(images - lo, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + lo
    oh = F.one_hot(labels.long(), num_classes).permute(0, 4, 1, 2, 3).float()
    y = F.grid_sample(oh, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    y[:, 0] += 1 - y.sum(1)                                              # outside the canvas: background
    if cfg.p_organ > 0:
        x = organ_contrast(x, y, lo, cfg, g)
    y = y.argmax(1)
    for ax in range(3):
        if bool(mirror[:, ax].any()):
            m = mirror[:, ax]
            x = torch.where(m.view(-1, 1, 1, 1, 1), x.flip(2 + ax), x)
            y = torch.where(m.view(-1, 1, 1, 1), y.flip(1 + ax), y)
    return intensity(x, cfg, g), y
