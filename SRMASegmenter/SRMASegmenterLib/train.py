"""Train SRMA-Mamba: deep supervision (Dice + BCE on all four outputs), AdamW, AMP, clipping,
checkpoint/resume, sliding-window validation, best-model selection, metrics CSV and curves.

    python -m SRMASegmenterLib.train --data ../shared/data/chaos-mr-t2 --split splits/chaos_t2.json \
        --out runs/srma --epochs 300

Multi-GPU: torchrun --nproc_per_node=N -m SRMASegmenterLib.train ... (DistributedDataParallel).
Options can also come from a YAML file (--config), CLI flags win.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML file with any of these options")
    p.add_argument("--data", required=False)
    p.add_argument("--split", help="JSON with 'train' and 'val' case ids (CHAOS layout)")
    p.add_argument("--out", default="runs/srma")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--max-minutes", type=float, default=0, help="stop (and checkpoint) after this long")
    p.add_argument("--fit-epochs-to-time", action="store_true",
                   help="with --max-minutes: after the first epoch, set --epochs to what fits, so the cosine "
                        "schedule ends when time does")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--samples-per-volume", type=int, default=2)
    p.add_argument("--patch", type=int, nargs=3, default=[224, 224, 64])
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=int, default=5)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"])
    p.add_argument("--val-every", type=int, default=10)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--dims", type=int, default=48)
    p.add_argument("--resume", help="checkpoint to resume from (default: OUT/last.pt if present)")
    p.add_argument("--init", help="start from these weights (model folder, .safetensors or .pth); fresh optimizer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    if args.config:
        import yaml
        cfg = yaml.safe_load(Path(args.config).read_text()) or {}
        defaults = p.parse_args([])
        for k, v in cfg.items():
            k = k.replace("-", "_")
            if getattr(args, k, None) == getattr(defaults, k, None):
                setattr(args, k, v)
    if not args.data:
        p.error("--data is required (or set 'data' in --config)")
    return args


def build_transforms(patch, samples):
    from monai import transforms as T

    keys = ["image", "label"]
    return T.Compose([
        T.SpatialPadd(keys, spatial_size=patch, mode="constant"),
        T.RandCropByPosNegLabeld(keys, label_key="label", spatial_size=patch, pos=2, neg=1, num_samples=samples),
        T.RandFlipd(keys, prob=0.1, spatial_axis=0),
        T.RandFlipd(keys, prob=0.1, spatial_axis=1),
        T.RandScaleIntensityd("image", factors=0.1, prob=0.5),
        T.RandShiftIntensityd("image", offsets=0.1, prob=0.5),
        T.EnsureTyped(keys, track_meta=False),
    ])


def deep_supervision_loss(outputs, target, loss_fn):
    return sum(loss_fn(o, target) for o in outputs) / len(outputs)


@torch.no_grad()
def validate(model, cases, device, amp_dtype, roi=(224, 224, 64)):
    from monai.inferers import sliding_window_inference

    from .metrics import segmentation_metrics
    model.eval()
    rows = []
    for c in cases:
        x = torch.from_numpy(c["image"])[None].to(device)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = sliding_window_inference(x, tuple(roi), 4, lambda t: model(t)[0].float(), overlap=0.25,
                                              mode="gaussian")
        pred = (torch.sigmoid(logits[0, 0]).cpu().numpy() > 0.5)
        m = segmentation_metrics(pred.transpose(2, 1, 0), c["label"][0].transpose(2, 1, 0), c["spacing"][::-1])
        rows.append(dict(id=c["id"], **m))
    model.train()
    return rows


def main(argv=None):
    args = parse_args(argv)
    from monai.data import DataLoader, Dataset
    from monai.losses import DiceCELoss
    from tqdm import tqdm

    from slicer_ai_common.devices import resolve_device

    from .data import find_cases, load_case, split_cases
    from .model import SRMAConfig, SRMAMamba

    ddp = "LOCAL_RANK" in os.environ
    rank = 0
    if ddp:
        import torch.distributed as dist
        dist.init_process_group("nccl")
        rank = dist.get_rank()
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    else:
        device = resolve_device(args.device)
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed + rank)
    np.random.seed(args.seed + rank)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    found = find_cases(args.data)
    train_cases, val_cases = split_cases(found, args.split)
    if rank == 0:
        print(f"{found['layout']}: {len(train_cases)} training, {len(val_cases)} validation cases; "
              f"validation = {[c['id'] for c in val_cases]}", flush=True)
    train_data = [load_case(c) for c in train_cases]
    val_data = [load_case(c) for c in val_cases] if rank == 0 else []
    ds = Dataset([{"image": d["image"], "label": d["label"]} for d in train_data],
                 transform=build_transforms(tuple(args.patch), args.samples_per_volume))
    sampler = None
    if ddp:
        from torch.utils.data.distributed import DistributedSampler
        sampler = DistributedSampler(ds, shuffle=True)
    loader = DataLoader(ds, batch_size=max(1, args.batch_size // args.samples_per_volume), shuffle=sampler is None,
                        sampler=sampler, num_workers=args.workers, persistent_workers=args.workers > 0,
                        drop_last=False)

    cfg = SRMAConfig(dims=args.dims)
    model = SRMAMamba(cfg).to(device)
    decay, no_decay = [], []
    for n, p_ in model.named_parameters():
        (no_decay if p_.ndim <= 1 or n.endswith(("A_logs", "Ds")) else decay).append(p_)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    steps_per_epoch = len(loader)
    total = [args.epochs * steps_per_epoch]
    warm = args.warmup_epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / max(1, warm) if s < warm
        else 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warm) / max(1, total[0] - warm)))))
    amp_dtype = None
    if device.type == "cuda" and args.amp != "off":
        amp_dtype = torch.float16 if args.amp == "fp16" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    loss_fn = DiceCELoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5)

    start_epoch, best, history = 0, -1.0, []
    resume = args.resume or (out / "last.pt" if (out / "last.pt").exists() else None)
    if resume:
        ck = torch.load(resume, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        start_epoch, best, history = ck["epoch"] + 1, ck["best"], ck["history"]
        if rank == 0:
            print(f"resumed from {resume} at epoch {start_epoch}", flush=True)
    if args.init and not resume:
        from slicer_ai_common.weights import load_into, load_weights_file
        load_into(model, load_weights_file(args.init)[0])
        if rank == 0:
            print(f"initialised from {args.init}", flush=True)
    net = model
    if ddp:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index])

    meta = dict(split={"train": [c["id"] for c in train_cases], "val": [c["id"] for c in val_cases]},
                data=str(args.data), command=" ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
                config=cfg.to_dict(), args=vars(args))
    t_start = time.time()
    epoch = start_epoch - 1
    while epoch + 1 < args.epochs:  # args.epochs may shrink after the first epoch (--fit-epochs-to-time)
        epoch += 1
        if sampler is not None:
            sampler.set_epoch(epoch)
        net.train()
        losses = []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", disable=rank != 0 or not sys.stderr.isatty(), leave=False)
        for batch in bar:
            x = batch["image"].to(device, non_blocking=True)
            y = batch["label"].to(device, non_blocking=True).float()
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                outs = net(x)
            loss = deep_supervision_loss([o.float() for o in outs], y, loss_fn)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            scaler.step(opt)
            scaler.update()
            sched.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", lr=f"{sched.get_last_lr()[0]:.2e}")
        row = dict(epoch=epoch + 1, loss=float(np.mean(losses)), lr=sched.get_last_lr()[0],
                   minutes=(time.time() - t_start) / 60)
        last_epoch = epoch + 1 == args.epochs
        out_of_time = args.max_minutes and (time.time() - t_start) / 60 > args.max_minutes
        if rank == 0 and ((epoch + 1) % args.val_every == 0 or last_epoch or out_of_time):
            vrows = validate(model, val_data, device, amp_dtype, args.patch)
            row["val_dice"] = float(np.mean([r["dice"] for r in vrows]))
            row["val_hd95"] = float(np.nanmean([r["hd95_mm"] for r in vrows]))
            if row["val_dice"] > best:
                best = row["val_dice"]
                torch.save({"model": model.state_dict(), "epoch": epoch, "val": vrows, "meta": meta}, out / "best.pt")
            print(f"epoch {epoch + 1}: loss {row['loss']:.4f} val dice {row['val_dice']:.4f} "
                  f"hd95 {row['val_hd95']:.1f} mm (best {best:.4f})", flush=True)
        elif rank == 0:
            print(f"epoch {epoch + 1}: loss {row['loss']:.4f}", flush=True)
        history.append(row)
        if args.fit_epochs_to_time and args.max_minutes and epoch == start_epoch + 1:
            # the second epoch's time (the first one includes kernel compilation and cudnn autotuning)
            per_epoch = row["minutes"] - history[-2]["minutes"]
            fit = int((args.max_minutes - row["minutes"]) / (per_epoch * (1 + 0.6 / args.val_every))) + 1
            args.epochs = max(epoch + 2, min(args.epochs, epoch + 1 + fit))
            total[0] = args.epochs * steps_per_epoch
            meta["args"]["epochs"] = args.epochs
            if rank == 0:
                print(f"an epoch takes {per_epoch:.2f} min: training for {args.epochs} epochs", flush=True)
        if rank == 0:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "epoch": epoch, "best": best, "history": history, "meta": meta}, out / "last.pt")
            write_history(history, out)
        if out_of_time:
            if rank == 0:
                print(f"stopping after {args.max_minutes} minutes at epoch {epoch + 1}; resume with --resume", flush=True)
            break
    if ddp:
        import torch.distributed as dist
        dist.destroy_process_group()
    return best


def write_history(history, out: Path):
    keys = sorted({k for r in history for k in r}, key=lambda k: ["epoch", "loss", "lr", "minutes", "val_dice",
                                                                   "val_hd95"].index(k) if k in
                  ["epoch", "loss", "lr", "minutes", "val_dice", "val_hd95"] else 99)
    with open(out / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
        ax[0].plot([r["epoch"] for r in history], [r["loss"] for r in history])
        ax[0].set(xlabel="epoch", ylabel="training loss (Dice+BCE, 4 outputs)")
        v = [r for r in history if "val_dice" in r]
        ax[1].plot([r["epoch"] for r in v], [r["val_dice"] for r in v], "o-")
        ax[1].set(xlabel="epoch", ylabel="validation Dice", ylim=(0, 1))
        fig.tight_layout()
        fig.savefig(out / "curves.png", dpi=100)
        plt.close(fig)
    except Exception as e:  # plotting must never stop training
        print(f"(could not draw curves: {e})")


if __name__ == "__main__":
    main()
