"""Train UltraScanNet (or a baseline) on BUSI, one cross-validation fold or all images.

    python -m training.ultrascan.train --data ../shared/data/busi --split splits/busi_5fold.json \
        --fold 0 --out runs/ultrascannet/fold0

Defaults are the published recipe: AdamW lr 6.25e-5, weight decay 0.01, batch 32, per-step cosine
with 20 warm-up epochs, 150 epochs + 10 cool-down, RandAugment m9, Mixup/CutMix 0.2, label smoothing
0.1, random erasing 0.1, drop path 0.2, gradient clip 5, AMP (bf16 on GPUs); plus an EMA of the weights.
No epoch is chosen by looking at the validation fold: the reported model is the EMA after the last
epoch. The validation fold is scored every `--eval-every` epochs for the curves only.

Writes to --out: metrics.csv, curves.png, last.pt (resumable), final.safetensors (EMA weights, fp16),
val_logits.npz (names, labels, logits of the validation fold), summary.json (with the heatmap scores:
pointing game and IoU of the Grad-CAM against the radiologists' outlines, when --masks is given).

Beyond the published recipe (issue: ImageNet teacher, outlines, patient training):
- `--model efficientnet_lite0|1|2`: the ImageNet-initialised teacher (training code only).
- `--teacher RUN/final.safetensors --teacher-model efficientnet_lite0`: knowledge distillation by
  function matching (Beyer et al., CVPR 2022): the teacher sees exactly the student's augmented, mixed
  batch, and the loss adds KL(teacher || student) to the (mixed, smoothed) hard-label cross-entropy.
- `--masks BUSI_MASKS --mask-weight W`: an auxiliary lesion-mask loss (BCE + soft Dice) on 1x1-conv
  heads over UltraScanNet's last two stages; the heads live in the trainer and are not exported, so
  the shipped state dict keeps the published keys.
- `--masks BUSI_MASKS --lesion-crop P`: a square crop around the lesion outline for a fraction P of the
  training images (normal images: a crop of similar size anywhere); `--crop-tta` also scores the
  validation fold on a crop around each image's Grad-CAM region and on the average of crop and whole
  image (val_logits_crop.npz, val_logits_fused.npz), the way a runtime could use them without outlines.
- `--class-weights balanced`: each image's cross-entropy weighted by its (mixed) target's class weight,
  n / (classes x n_class) over the training images (BUSI: benign 0.59, malignant 1.24, normal 1.96),
  for the classes that the twin-free images show weakest (normal, then malignant recall).
"""
from __future__ import annotations

import argparse
import csv
import inspect
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..loop import EMA, Amp, Clock, GraphedStep, WarmupCosine, adamw, load_checkpoint, save_checkpoint
from .augment import AugmentConfig, crop_batch, eval_batch, mask_boxes, square_crop_theta, train_batch
from .data import load_images, load_split, list_busi
from UltraScanClassifierLib.metrics import classification_report
from UltraScanClassifierLib.model import CLASSES, count_parameters

from .baselines import build_model


def build_parser():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="BUSI root (benign/ malignant/ normal/)")
    ap.add_argument("--split", default=None, help="split JSON (data.py split); needed unless --fold all")
    ap.add_argument("--fold", default="0", help="validation fold index, or 'all' to train on every image")
    ap.add_argument("--model", default="ultrascannet", choices=["ultrascannet", "resnet50", "convnext_tiny",
                                                                "efficientnet_lite0", "efficientnet_lite1",
                                                                "efficientnet_lite2"])
    ap.add_argument("--teacher", default=None, help="distil from this teacher (final.safetensors of a teacher run)")
    ap.add_argument("--teacher-model", default="efficientnet_lite0")
    ap.add_argument("--kd-weight", type=float, default=1.0)
    ap.add_argument("--kd-temp", type=float, default=1.0)
    ap.add_argument("--masks", default=None, help="BUSI lesion masks root (<class>/<name>_mask.png)")
    ap.add_argument("--mask-weight", type=float, default=0.0, help="auxiliary lesion-mask loss weight (0: off)")
    ap.add_argument("--tta-flip", action="store_true", help="score the validation fold with horizontal-flip averaging")
    ap.add_argument("--lesion-crop", type=float, default=0.0,
                    help="probability per training image of a square crop around its lesion outline (needs --masks; "
                         "normal images get a crop of similar size anywhere)")
    ap.add_argument("--class-weights", choices=["none", "balanced"], default="none",
                    help="balanced: weight each image's loss by n / (classes x n_class) of its target class")
    ap.add_argument("--crop-tta", action="store_true",
                    help="also score the validation fold on a crop around each image's Grad-CAM peak region, and "
                         "the average of that and the whole image (summary val_crop / val_fused)")
    ap.add_argument("--export", default=None, help="UltraScanNet: also write the shipped model folder here")
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--cooldown-epochs", type=int, default=10)
    ap.add_argument("--warmup-epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=6.25e-5)
    ap.add_argument("--warmup-lr", type=float, default=6.25e-8)
    ap.add_argument("--min-lr", type=float, default=6.25e-7)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--clip-grad", type=float, default=5.0)
    ap.add_argument("--drop-path", type=float, default=0.2)
    ap.add_argument("--ema-decay", type=float, default=0.995,
                    help="per step; BUSI folds give ~15 steps per epoch, so ImageNet's 0.9998 would still hold "
                         "a fifth of the random initialisation after 100 epochs")
    ap.add_argument("--aug", choices=["published", "scratch", "distill"], default="published",
                    help="augmentation preset (augment.AugmentConfig.preset)")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--load-size", type=int, default=256, help="images are held in memory at this size")
    ap.add_argument("--scan-backend", default=None, choices=[None, "triton", "torch", "ref"],
                    help="selective-scan backend for UltraScanNet (default: best for the device)")
    ap.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default="auto")
    ap.add_argument("--cuda-graphs", choices=["on", "off"], default="on",
                    help="forward (+ teacher, mask heads) + loss + backward of a step replayed as one CUDA graph")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N training images (smoke tests)")
    ap.add_argument("--init", default=None, help="initial weights (e.g. ImageNet MambaVision-T2); non-matching keys skipped")
    ap.add_argument("--resume", action="store_true", help="continue from --out/last.pt")
    ap.add_argument("--time-budget", type=float, default=0,
                    help="seconds: the schedule runs on max(step / steps, time / budget) and ends with whichever "
                         "comes first (recorded in summary.json)")
    return ap


def balanced_class_weights(labels, num_classes: int):
    """n / (num_classes x n_c) per class c over `labels` (mean weight over the images: 1); a class without
    images gets 0."""
    counts = torch.bincount(labels.flatten().cpu(), minlength=num_classes).double()
    w = torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp_min(1)), torch.zeros_like(counts))
    return w.float()


def weighted_soft_ce(logits, y_soft, class_weights=None):
    """Mean over the batch of the soft-target cross-entropy, each image's term times the class weight of
    its target (for a mixed target, the mix of its classes' weights)."""
    ce = torch.sum(-y_soft * F.log_softmax(logits.float(), dim=1), dim=1)
    if class_weights is not None:
        ce = ce * (y_soft @ class_weights)
    return ce.mean()


def param_groups(model, weight_decay):
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if (n in skip or p.ndim <= 1) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def predict_logits(model, images_u8, size, batch=64, amp_dtype=None, flip=False):
    model.eval()
    out = []
    for i in range(0, len(images_u8), batch):
        x = eval_batch(images_u8[i:i + batch], size)
        with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            lg = model(x).float()
            if flip:
                lg = (lg + model(x.flip(3)).float()) / 2
        out.append(lg)
    return torch.cat(out).cpu().numpy()


@torch.no_grad()
def predict_crop_logits(model, images_u8, top, size, batch=64, flip=False, margin=2.1, heat_size=None):
    """Logits of a square crop around each image's Grad-CAM region: the map of a second forward at heat_size
    (default about 1.4 x size, as the runtime's heatmap), for the class `top` (N,) of the whole-image logits,
    above half its maximum; the crop's half-side `margin` x that region's larger half-side (at least 0.15 of
    the image); the whole image where the map is empty. Flip averaging as predict_logits."""
    from UltraScanClassifierLib.inference import grad_cam

    from .heatmap_methods import finer_size
    heat_size = heat_size or finer_size(size)
    model.eval()

    def fwd(x):
        lg = model(x).float()
        return (lg + model(x.flip(3)).float()) / 2 if flip else lg

    out = []
    for i in range(0, len(images_u8), batch):
        xb = images_u8[i:i + batch]
        _, cam = grad_cam(model, eval_batch(xb, heat_size), top[i:i + batch].to(xb.device))
        cam = F.interpolate(cam.float(), size=xb.shape[-2:], mode="bilinear", align_corners=False)
        box, has = mask_boxes(cam / cam.amax(dim=(2, 3), keepdim=True).clamp(min=1e-12))
        s = torch.where(has, (margin * box[:, 2:].amax(1)).clamp(0.15, 1.0), torch.ones_like(box[:, 0]))
        cx, cy = torch.where(has, box[:, 0], 0.0), torch.where(has, box[:, 1], 0.0)
        out.append(fwd(crop_batch(xb, square_crop_theta(cx, cy, s), size)))
    return torch.cat(out).cpu().numpy()


def load_masks(root, names, size: int = 256):
    """Lesion outlines <root>/<class>/<name>_mask.png as uint8 (N, 1, size, size) (0 / 255)."""
    import torch.nn.functional as F
    from PIL import Image

    out = torch.zeros(len(names), 1, size, size, dtype=torch.uint8)
    for i, n in enumerate(names):
        p = Path(root) / (n.rsplit(".", 1)[0] + "_mask.png")
        if not p.is_file():
            raise FileNotFoundError(f"no lesion mask for {n}: {p}")
        m = torch.from_numpy((np.asarray(Image.open(p).convert("L")) > 127).astype(np.float32))[None, None]
        if tuple(m.shape[-2:]) != (size, size):
            m = F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False)
        out[i] = (m[0] > 0.5).to(torch.uint8) * 255
    return out


class MaskHeads(torch.nn.Module):
    """Auxiliary lesion-mask heads (1x1 convolutions) on the last two feature maps; training only."""

    def __init__(self, channels):
        super().__init__()
        self.heads = torch.nn.ModuleList(torch.nn.Conv2d(c, 1, 1) for c in channels)

    def loss(self, feats, masks):
        total = 0.0
        for head, f in zip(self.heads, feats):
            logit = head(f.float())
            t = F.adaptive_avg_pool2d(masks, logit.shape[-2:])
            bce = F.binary_cross_entropy_with_logits(logit, t)
            p = torch.sigmoid(logit)
            dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
            total = total + bce + dice
        return total / len(self.heads)


def load_init(model, path):
    """Initial weights by name where shapes fit (an ImageNet checkpoint has a 1000-class head)."""
    from slicer_ai_common.weights import load_weights_file
    sd, _ = load_weights_file(path)
    own = model.state_dict()
    fit = {k: v for k, v in sd.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    model.load_state_dict(fit, strict=False)
    return len(fit), len(own)


def main(argv=None):
    a = build_parser().parse_args(argv)
    if "LOCAL_RANK" in os.environ:
        raise SystemExit("training.ultrascan.train runs in one process (624 images train in about a minute on "
                         "one GPU); start it without torchrun")
    need_masks = a.mask_weight > 0 or a.lesion_crop > 0         # the training images' outlines
    if need_masks and not a.masks:
        raise SystemExit("--mask-weight and --lesion-crop need the lesion outlines: --masks BUSI_MASKS")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    from slicer_ai_common.devices import resolve_device
    device = resolve_device(a.device)
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    g = torch.Generator(device=device)
    g.manual_seed(a.seed)

    if a.fold == "all":
        train_names = [n for n, _ in list_busi(a.data)]
        val_names = []
    else:
        split = load_split(a.split)
        k = int(a.fold)
        val_names = split["folds"][k]
        train_names = [n for i, f in enumerate(split["folds"]) if i != k for n in f]
    if a.limit:
        train_names = train_names[:a.limit]
        val_names = val_names[:max(8, a.limit // 4)] if val_names else []
    t0 = time.time()
    xtr, ytr = load_images(a.data, train_names, a.load_size)
    xva, yva = load_images(a.data, val_names, a.load_size) if val_names else (None, None)
    mtr = mva = None
    if a.masks:
        mtr = load_masks(a.masks, train_names, a.load_size).to(device) if need_masks else None
        mva = load_masks(a.masks, val_names, a.load_size) if val_names else None
    xtr, ytr = xtr.to(device), ytr.to(device)
    cw = balanced_class_weights(ytr, len(CLASSES)).to(device) if a.class_weights == "balanced" else None
    if cw is not None:
        print(f"[loss] class weights {dict(zip(CLASSES, [round(float(v), 3) for v in cw]))}", flush=True)
    if xva is not None:
        xva = xva.to(device)
    print(f"[data] {len(train_names)} train / {len(val_names)} val images loaded in {time.time() - t0:.1f} s", flush=True)

    kw = {"drop_path_rate": a.drop_path, "scan_backend": a.scan_backend} if a.model == "ultrascannet" else {}
    model = build_model(a.model, len(CLASSES), **kw).to(device)
    if a.init:
        n, tot = load_init(model, a.init)
        print(f"[init] {n} of {tot} tensors from {a.init}")
    ema = EMA(model, a.ema_decay)
    groups = param_groups(model, a.weight_decay)
    heads = None
    if a.mask_weight > 0:
        if "return_stages" not in inspect.signature(model.forward_features).parameters:
            raise SystemExit(f"--mask-weight needs a model that returns its stages (not {a.model})")
        with torch.no_grad():
            _, st = model.forward_features(torch.zeros(1, 3, a.img_size, a.img_size, device=device), return_stages=True)
        heads = MaskHeads([st[-2].shape[1], st[-1].shape[1]]).to(device)
        groups.append({"params": list(heads.parameters()), "weight_decay": a.weight_decay})
    teacher = None
    if a.teacher:
        from slicer_ai_common.weights import load_into, load_weights_file
        teacher = load_into(build_model(a.teacher_model, len(CLASSES)), load_weights_file(a.teacher)[0]).to(device).eval()
        for p_ in teacher.parameters():
            p_.requires_grad_(False)
        print(f"[teacher] {a.teacher_model} from {a.teacher}", flush=True)
    opt = adamw(groups, a.lr, device, betas=(0.9, 0.999), eps=1e-8)
    amp = Amp(a.amp, device)
    aug = AugmentConfig.preset(a.aug, a.img_size)
    aug.lesion_crop = a.lesion_crop
    steps_per_epoch = max(1, len(train_names) // a.batch_size)      # drop the last partial batch
    total_epochs = a.epochs + a.cooldown_epochs
    # per step: warm-up from warmup_lr, cosine to min_lr at the end of `epochs`, then min_lr (cool-down)
    schedule = WarmupCosine(peak=a.lr, warmup=a.warmup_epochs / total_epochs, end=a.epochs / total_epochs,
                            start=a.warmup_lr, floor=a.min_lr)
    start_epoch, elapsed_before = 0, 0.0
    if a.resume and (out / "last.pt").is_file():
        ck = load_checkpoint(out / "last.pt", device)
        model.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        start_epoch, elapsed_before = ck["epoch"] + 1, ck["elapsed"]
        g.set_state(ck["gen"].cpu())          # generator states are CPU byte tensors on every device
        print(f"[resume] from epoch {start_epoch}")
    print(f"[model] {a.model}: {count_parameters(model):,} parameters; {steps_per_epoch} steps/epoch x "
          f"{total_epochs} epochs; device {device}, amp {amp.name}", flush=True)

    fields = ["epoch", "lr", "train_loss", "val_loss", "val_acc", "val_macro_f1", "ema_val_loss", "ema_val_acc",
              "ema_val_macro_f1", "seconds"]
    csv_path = out / "metrics.csv"
    if start_epoch == 0 or not csv_path.exists():
        with open(csv_path, "w", newline="") as f:
            csv.writer(f).writerow(fields)
    graphs = a.cuda_graphs == "on" and device.type == "cuda" and amp.name != "fp16"

    def loss_of(x, y, masks=None):
        """Forward (student, teacher, mask heads) and loss of one batch: what GraphedStep captures."""
        with amp.autocast(cache=not graphs):
            if heads is not None:
                fmap, st = model.forward_features(x, return_stages=True)
                logits = model.forward_head(fmap)
            else:
                logits = model(x)
            if teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(x).float()
        loss = weighted_soft_ce(logits, y, cw)
        if teacher is not None:
            T = a.kd_temp
            kd = F.kl_div(F.log_softmax(logits.float() / T, dim=1), F.log_softmax(t_logits / T, dim=1),
                          log_target=True, reduction="batchmean") * T * T
            loss = loss + a.kd_weight * kd
        if heads is not None:
            loss = loss + a.mask_weight * heads.loss([st[-2], st[-1]], masks)
        return loss

    fwd_bwd = GraphedStep([p_ for grp in opt.param_groups for p_ in grp["params"]], loss_of, enabled=graphs)
    t_start = time.time()
    clock = Clock(total_epochs * steps_per_epoch, a.time_budget, elapsed_before)
    step = start_epoch * steps_per_epoch
    epoch = start_epoch
    while epoch < total_epochs:
        model.train()
        perm = torch.randperm(len(train_names), generator=g, device=device)
        losses = []
        te = time.time()
        for it in range(steps_per_epoch):
            progress = clock.progress(step)
            if progress >= 1:                  # the time budget ended the schedule
                break
            idx = perm[it * a.batch_size:(it + 1) * a.batch_size]
            batch = train_batch(xtr[idx], ytr[idx], aug, len(CLASSES), g, mtr[idx] if mtr is not None else None)
            lr = schedule(progress)
            for grp in opt.param_groups:
                grp["lr"] = lr
            loss = fwd_bwd(*batch[:3] if heads is not None else batch[:2])    # gradients left in p.grad
            if step == start_epoch * steps_per_epoch:
                print("[step] forward + backward " + ("as a CUDA graph" if fwd_bwd.active else "eager" + (
                    f" (CUDA graph capture failed: {fwd_bwd.failed})" if graphs else "")), flush=True)
            amp.update(opt, a.clip_grad)
            ema.update(model)
            losses.append(loss.detach())
            step += 1
        if not losses:                     # the budget ran out at an epoch boundary
            break
        epoch_loss = torch.stack(losses).mean().item()     # one host sync per epoch, not per step
        if not math.isfinite(epoch_loss):
            raise FloatingPointError(f"loss is {epoch_loss} in epoch {epoch}")
        row = {"epoch": epoch, "lr": f"{lr:.3e}", "train_loss": f"{epoch_loss:.4f}",
               "seconds": f"{time.time() - te:.2f}"}
        last = epoch == total_epochs - 1 or clock.progress(step) >= 1
        if xva is not None and ((epoch + 1) % a.eval_every == 0 or last):
            for tag, m in (("", model), ("ema_", ema.module)):
                lg = predict_logits(m, xva, a.img_size, amp_dtype=amp.dtype)
                rep = classification_report(lg, yva.numpy(), CLASSES)
                row.update({f"{tag}val_loss": f"{rep['nll']:.4f}", f"{tag}val_acc": f"{rep['accuracy']:.4f}",
                            f"{tag}val_macro_f1": f"{rep['macro_f1']:.4f}"})
        with open(csv_path, "a", newline="") as f:
            csv.DictWriter(f, fields).writerow(row)
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        if (epoch + 1) % 20 == 0 or last:
            save_checkpoint(out / "last.pt", {"model": model.state_dict(), "ema": ema.state_dict(),
                                              "opt": opt.state_dict(), "epoch": epoch, "elapsed": clock.elapsed(),
                                              "gen": g.get_state()})
        epoch += 1
        if last:
            break
    by_time = clock.by_time(step)
    if by_time:
        print(f"[time] the {a.time_budget:.0f} s budget ended the schedule after {step} of {clock.total} steps "
              f"({epoch} epochs)", flush=True)

    from safetensors.torch import save_file
    final = {k: (v.detach().half() if v.is_floating_point() else v.detach()).cpu().contiguous()
             for k, v in ema.module.state_dict().items()}
    save_file(final, str(out / "final.safetensors"))
    summary = {"model": a.model, "fold": a.fold, "args": vars(a), "epochs_run": epoch, "steps_run": step,
               "stopped_by_time": by_time, "parameters": count_parameters(model),
               "train_images": len(train_names), "val_images": len(val_names),
               "train_seconds": round(time.time() - t_start, 1), "device": str(device),
               "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
               "command": "python -m training.ultrascan.train " + " ".join(sys.argv[1:] if argv is None else argv)}
    if xva is not None:
        lg = predict_logits(ema.module, xva, a.img_size, amp_dtype=None, flip=a.tta_flip)
        np.savez(out / "val_logits.npz", names=np.array(val_names), labels=yva.numpy(), logits=lg)
        summary["val"] = classification_report(lg, yva.numpy(), CLASSES)
        print(f"[val] EMA after the last epoch: accuracy {summary['val']['accuracy']:.4f}, "
              f"macro-F1 {summary['val']['macro_f1']:.4f}", flush=True)
        if a.crop_tta:
            lc = predict_crop_logits(ema.module, xva, torch.from_numpy(lg.argmax(1)), a.img_size, flip=a.tta_flip,
                                     margin=sum(aug.lesion_margin) / 2)
            for tag, z in (("crop", lc), ("fused", (lg + lc) / 2)):
                np.savez(out / f"val_logits_{tag}.npz", names=np.array(val_names), labels=yva.numpy(), logits=z)
                summary[f"val_{tag}"] = classification_report(z, yva.numpy(), CLASSES)
                print(f"[val] {tag} (Grad-CAM crop{' + whole image' if tag == 'fused' else ''}): accuracy "
                      f"{summary[f'val_{tag}']['accuracy']:.4f}, macro-F1 {summary[f'val_{tag}']['macro_f1']:.4f}",
                      flush=True)
        if mva is not None and hasattr(ema.module, "forward_features"):
            from UltraScanClassifierLib.metrics import heatmap_scores
            from .heatmap_methods import heatmaps   # Grad-CAM of the predicted class, and the other methods
            masks = mva[:, 0].numpy() > 0
            ema.module.eval()
            scores = {k: heatmap_scores(h, masks, per_image=True)
                      for k, h in heatmaps(ema.module, xva, a.img_size).items()}
            # per image with a lesion, each method's pointing-game hit ("0"/"1"), so that methods and runs can
            # be paired image by image across folds (McNemar) without the weights
            summary["heatmap_hits"] = {"names": [n for n, m in zip(val_names, masks) if m.any()],
                                       **{k: "".join(map(str, v.pop("hits"))) for k, v in scores.items()}}
            summary["heatmap_methods"] = scores
            summary["heatmap"] = summary["heatmap_methods"]["cam"]
            print(f"[val] heatmap: pointing game {summary['heatmap']['pointing_game']:.3f}, "
                  f"IoU {summary['heatmap']['heatmap_iou']:.3f} (n {summary['heatmap']['n']})", flush=True)
            print("[val] heatmap methods, pointing game: " + ", ".join(
                f"{k} {v['pointing_game']:.3f}" for k, v in summary["heatmap_methods"].items()), flush=True)
    if a.export:
        from .export import export
        rec = export(out / "final.safetensors", a.export, record={"training": {k: summary[k] for k in (
            "command", "epochs_run", "train_images", "train_seconds", "gpu")}})
        summary["exported"] = rec.weights_id
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    try:
        plot_curves(csv_path, out / "curves.png")
    except Exception as e:  # noqa: BLE001 - curves are a convenience
        print(f"[warn] no curves: {e}")
    return summary


def plot_curves(csv_path, png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = list(csv.DictReader(open(csv_path)))
    ep = [int(r["epoch"]) for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    ax[0].plot(ep, [float(r["train_loss"]) for r in rows], label="train loss")
    ev = [r for r in rows if r["val_acc"]]
    if ev:
        ax[0].plot([int(r["epoch"]) for r in ev], [float(r["ema_val_loss"]) for r in ev], label="val NLL (EMA)")
        ax[1].plot([int(r["epoch"]) for r in ev], [float(r["val_acc"]) for r in ev], label="val acc")
        ax[1].plot([int(r["epoch"]) for r in ev], [float(r["ema_val_acc"]) for r in ev], label="val acc (EMA)")
        ax[1].plot([int(r["epoch"]) for r in ev], [float(r["ema_val_macro_f1"]) for r in ev], label="val macro-F1 (EMA)")
    for x in ax:
        x.set_xlabel("epoch")
        x.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
