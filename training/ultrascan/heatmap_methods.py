"""Which heatmap points at the lesion? Heatmap methods compared on trained fold models (issue 11, item 4).

    python -m training.ultrascan.heatmap_methods RUN_DIR [RUN_DIR ...] --data ../shared/data/busi \
        --masks ../shared/data/busi-masks [--json out.json]

RUN_DIR: a fold run of training.ultrascan.train (summary.json + final.safetensors, EfficientNet-Lite or
UltraScanNet), or several run folders of one fold joined by "+" (`runs/cw1/fold0+runs/cw2/fold0`, other
seeds): their seed ensemble, averaged as the runtime's ensemble.MemberMean does. For the benign and
malignant images of its validation fold (never trained on), every method explains the class the model
predicts, on the same 256 x 256 grid as the trainer's own score, against the radiologists' outlines:
pointing game (hottest pixel within 15 px of the lesion) and IoU of the map above its 80th percentile. Per-image hits are paired across methods (McNemar's exact test against `cam`).

Methods:
- cam: Grad-CAM of the last feature map (closed form, the trainer's score and the runtime without mirror).
- cam_flip: the same averaged with the mirrored image's map, the class of the averaged logits (what the
  runtime shows for a model cross-validated with mirror averaging).
- cam@S: the last map's Grad-CAM from a second forward at S x S (a finer map; the class stays the 224 one,
  or with --classify-size C that of the mirror-averaged logits at C x C: the runtime's path for a model
  whose manifest says input.size C and heatmap_size S).
- gradcam14: Grad-CAM at the last 14 x 14 block (EfficientNet-Lite: block 10), by backward.
- cam*g14: the product of cam and gradcam14 (both upsampled), a two-layer fusion.
- X+blur: X smoothed with a Gaussian of sigma 8 px at 256 before the argmax.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from UltraScanClassifierLib.inference import grad_cam
from UltraScanClassifierLib.metrics import heatmap_scores

from .augment import eval_batch
from .baselines import build_model
from .data import load_images, load_split
from .train import load_masks


def load_run(run):
    """(model in eval mode, its training args); "A+B" (where no such folder exists): the runs' MemberMean
    (one fold of one split)."""
    if "+" in str(run) and not Path(run).exists():
        from UltraScanClassifierLib.ensemble import MemberMean
        parts = [load_run(r) for r in str(run).split("+")]
        folds = {(a["split"], str(a["fold"])) for _, a in parts}
        if len(folds) != 1:
            raise ValueError(f"{run}: the members were not trained on one fold of one split: {sorted(folds)}")
        return MemberMean([m for m, _ in parts]).eval(), parts[0][1]
    run = Path(run)
    s = json.loads((run / "summary.json").read_text())
    a = s["args"]
    name = a["model"]
    model = _lite(name) if name.startswith("efficientnet_lite") else build_model(name, 3)
    from safetensors.torch import load_file
    sd = {k: v.float() for k, v in load_file(str(run / "final.safetensors")).items()}
    model.load_state_dict(sd)
    return model.eval(), a


def _lite(name):
    from .baselines import EfficientNetLite
    return EfficientNetLite(int(name[-1]), 3, pretrained=False)


def _norm(h):
    return h / h.amax(dim=(-2, -1), keepdim=True).clamp(min=1e-12)


def _up(cam, hw):
    return F.interpolate(cam.float(), size=hw, mode="bilinear", align_corners=False)[:, 0]


def _blur(h, sigma=8.0):
    """(N, H, W) smoothed by a sampled Gaussian (radius 3 sigma), edges replicated (MONAI's separable filter)."""
    from monai.networks.layers import gaussian_1d, separable_filtering
    k = gaussian_1d(torch.tensor(float(sigma)), truncated=3.0, approx="sampled", normalize=True).to(h.device)
    return separable_filtering(h[:, None].float(), [k, k], mode="replicate")[:, 0]


def gradcam_block(model, x, target, block: int):
    """Grad-CAM at EfficientNet-Lite's block `block` (its output kept by a hook), by backward."""
    kept = []
    hook = model.net._blocks[block].register_forward_hook(lambda _m, _i, out: kept.append(out))
    try:
        with torch.enable_grad():
            x = x.clone().requires_grad_(True)
            logits = model.forward_head(model.forward_features(x))
            act = kept[0]
            (g,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), act)
    finally:
        hook.remove()
    w = g.mean(dim=(2, 3), keepdim=True)
    return torch.relu((w * act).sum(dim=1, keepdim=True)).detach()


def heatmaps(model, images_u8, size=224, batch=16, sizes=None, classify_size=None):
    """method -> (N, H, W) heatmaps on the images' own grid, each normalised to [0, 1]. sizes: the finer
    second forwards (default about 1.4x and 2x size in multiples of 32: 320 and 448 for 224).
    classify_size: the cam@S maps explain the class of the mirror-averaged logits at this size (the
    runtime's), not that of the plain forward at size."""
    hw = images_u8.shape[-2:]
    sizes = sizes or (finer_size(size), 2 * size)
    lite = hasattr(model, "net") and hasattr(model.net, "_blocks")
    out = {}
    for i in range(0, len(images_u8), batch):
        x = eval_batch(images_u8[i:i + batch], size)
        n = x.shape[0]
        logits, cam = grad_cam(model, x)
        top = logits.argmax(1)
        maps = {"cam": _norm(_up(cam, hw))}
        _, cam2 = grad_cam(model, torch.cat([x, x.flip(3)]), lambda lg: ((lg[:n] + lg[n:]) / 2).argmax(1).repeat(2))
        maps["cam_flip"] = _norm(_up((cam2[:n] + cam2[n:].flip(3)) / 2, hw))
        if classify_size:
            xc = eval_batch(images_u8[i:i + batch], classify_size)
            lc = model(torch.cat([xc, xc.flip(3)]))
            top = ((lc[:n] + lc[n:]) / 2).argmax(1)
        for s in sizes:
            _, cs = grad_cam(model, eval_batch(images_u8[i:i + batch], s), top)
            maps[f"cam@{s}"] = _norm(_up(cs, hw))
        if lite:
            g14 = _norm(_up(gradcam_block(model, x, top, 10), hw))
            maps["gradcam14"] = g14
            maps["cam*g14"] = _norm(maps["cam"] * g14)
        for k in list(maps):
            maps[f"{k}+blur"] = _norm(_blur(maps[k]))
        for k, v in maps.items():
            out.setdefault(k, []).append(v)
    return {k: torch.cat(v).cpu().numpy() for k, v in out.items()}


def finer_size(size):
    """The finer second forward's size for a network fed size x size: about 1.4x, a multiple of 32 (320 for
    224; the runtime's `input.heatmap_size`)."""
    return 32 * round(size * 10 / 7 / 32)


def hits(heat, masks):
    """Per image with a lesion: 1 if it passes the pointing game."""
    return np.array(heatmap_scores(heat, masks, per_image=True)["hits"])


def mcnemar_p(a, b):
    """Exact two-sided McNemar p for paired 0/1 outcomes."""
    n01, n10 = int(((a == 0) & (b == 1)).sum()), int(((a == 1) & (b == 0)).sum())
    n = n01 + n10
    if n == 0:
        return 1.0
    k = min(n01, n10)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--data", required=True)
    p.add_argument("--masks", required=True)
    p.add_argument("--json")
    p.add_argument("--sizes", type=int, nargs="+", default=None,
                   help="the cam@S second forwards (default: about 1.4x and 2x the trained size, 320 and 448 for 224)")
    p.add_argument("--classify-size", type=int, default=None,
                   help="cam@S explains the class of the mirror-averaged logits at this size (a manifest's input.size)")
    a = p.parse_args(argv)
    torch.set_grad_enabled(False)
    per = {}
    rows = []
    for run in a.runs:
        model, args = load_run(run)
        names = load_split(args["split"])["folds"][int(args["fold"])]
        x, _ = load_images(a.data, names, args["load_size"])
        m = load_masks(a.masks, names, args["load_size"])[:, 0].numpy() > 0
        maps = heatmaps(model, x, args["img_size"], sizes=a.sizes, classify_size=a.classify_size)
        for k, h in maps.items():
            sc = heatmap_scores(h, m, per_image=True)
            per.setdefault(k, []).append(np.array(sc.pop("hits")))
            rows.append(dict(run=str(run), method=k, **sc))
            print(f"{Path(run.split('+')[0]).name:<24}{k:<20} pointing {sc['pointing_game']:.3f}  IoU {sc['heatmap_iou']:.3f}  n {sc['n']}",
                  flush=True)
    print(f"\n{'method':<20}{'pointing game':>14}{'vs cam (better/worse)':>24}{'McNemar p':>11}")
    base = np.concatenate(per["cam"])
    for k, v in per.items():
        h = np.concatenate(v)
        better, worse = int(((h == 1) & (base == 0)).sum()), int(((h == 0) & (base == 1)).sum())
        print(f"{k:<20}{h.mean():>14.3f}{f'{better} / {worse}':>24}{mcnemar_p(base, h):>11.3f}")
    if a.json:
        Path(a.json).write_text(json.dumps(dict(rows=rows), indent=1))


if __name__ == "__main__":
    main()
