"""Turn a trained run into a shipped model folder: fp16 safetensors shards, `model.json` manifest
(sha256 of each shard, config, calibration temperature, split, training record, cross-validated metrics).

    python -m UltraScanClassifierLib.export runs/cv/ultrascannet/foldall/final.safetensors \
        UltraScanClassifier/Resources/Models/ultrascannet_busi --record docs/training/ultrascannet_record.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from safetensors.torch import load_file

from slicer_ai_common.weights import load_into, save_sharded

from .model import CLASSES, UltraScanNet, UltraScanNetConfig


def export(weights, folder, name="ultrascannet_busi", record: dict | None = None, config: dict | None = None,
           shard_mb: float = 15.0):
    sd = load_file(str(weights))
    cfg = UltraScanNetConfig.from_dict(config or {})
    load_into(UltraScanNet(cfg), sd)          # refuses weights that do not fit the architecture
    extra = {"architecture": "UltraScanNet", "classes": list(CLASSES), "config": cfg.to_dict(),
             "input": {"size": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                       "resize": "whole image to 224 x 224, bicubic, antialiased"},
             **(record or {})}
    return save_sharded(sd, folder, name, extra, shard_bytes=int(shard_mb * 2**20))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights")
    ap.add_argument("folder")
    ap.add_argument("--name", default="ultrascannet_busi")
    ap.add_argument("--record", default=None, help="JSON merged into the manifest (temperature, split, metrics, ...)")
    ap.add_argument("--shard-mb", type=float, default=15.0)
    a = ap.parse_args(argv)
    rec = json.loads(Path(a.record).read_text()) if a.record else None
    r = export(a.weights, a.folder, a.name, rec, shard_mb=a.shard_mb)
    print(f"wrote {len(r.manifest['files'])} shards to {a.folder} ({r.weights_id})")


if __name__ == "__main__":
    main()
