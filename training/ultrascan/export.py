"""Turn a trained run into a shipped model folder: fp16 safetensors shards, `model.json` manifest
(sha256 of each shard, config, calibration temperature, split, training record, cross-validated metrics).

    python -m training.ultrascan.export runs/cv/ultrascannet/foldall/final.safetensors \
        UltraScanClassifier/Resources/Models/ultrascannet_busi --record docs/training/ultrascannet_record.json
    python -m training.ultrascan.export runs/lite0_all/final.safetensors \
        UltraScanClassifier/Resources/Models/efficientnet_lite0_busi --architecture EfficientNet-Lite0 \
        --name efficientnet_lite0_busi --record docs/training/efficientnet_lite0_record.json
    # several seeds of one recipe as one model (their logits averaged at inference: ensemble.MemberMean)
    python -m training.ultrascan.export runs/cw1_all/final.safetensors runs/cw2_all/final.safetensors \
        UltraScanClassifier/Resources/Models/efficientnet_lite0_busi --architecture EfficientNet-Lite0 ...
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from safetensors.torch import load_file

from slicer_ai_common.weights import load_into, save_sharded

from UltraScanClassifierLib.efficientnet_lite import from_training_keys
from UltraScanClassifierLib.model import CLASSES, build_classifier


def export(weights, folder, name="ultrascannet_busi", record: dict | None = None, config: dict | None = None,
           shard_mb: float = 15.0, architecture: str = "UltraScanNet"):
    """weights: one trained state dict, or a list of several (seeds of one recipe: one model whose members'
    logits are averaged, keys `members.<i>.`). architecture: "UltraScanNet" (weights as trained: the
    published keys) or "EfficientNet-Lite0" (the training code's teacher, keys renamed to the runtime's
    MONAI-built network)."""
    files = [weights] if isinstance(weights, (str, Path)) else list(weights)
    parts = []
    for f in files:
        sd = load_file(str(f))
        parts.append(from_training_keys(sd) if architecture == "EfficientNet-Lite0" else sd)
    if len(parts) == 1:
        sd = parts[0]
    else:
        sd = {f"members.{i}.{k}": v for i, p in enumerate(parts) for k, v in p.items()}
        config = {**(config or {}), "members": len(parts)}
    net, cfg = build_classifier(architecture, config or {})
    load_into(net, sd)                        # refuses weights that do not fit the architecture
    extra = {"architecture": architecture, "classes": list(CLASSES), "config": cfg,
             "input": {"size": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                       "resize": "whole image to 224 x 224, bicubic, antialiased"},
             **(record or {})}
    return save_sharded(sd, folder, name, extra, shard_bytes=int(shard_mb * 2**20))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights", nargs="+", help="final.safetensors of the run; several: a seed ensemble")
    ap.add_argument("folder")
    ap.add_argument("--name", default="ultrascannet_busi")
    ap.add_argument("--record", default=None, help="JSON merged into the manifest (temperature, split, metrics, ...)")
    ap.add_argument("--shard-mb", type=float, default=15.0)
    ap.add_argument("--architecture", default="UltraScanNet", choices=["UltraScanNet", "EfficientNet-Lite0"])
    a = ap.parse_args(argv)
    rec = json.loads(Path(a.record).read_text()) if a.record else None
    r = export(a.weights, a.folder, a.name, rec, shard_mb=a.shard_mb, architecture=a.architecture)
    print(f"wrote {len(r.manifest['files'])} shards to {a.folder} ({r.weights_id})")


if __name__ == "__main__":
    main()
