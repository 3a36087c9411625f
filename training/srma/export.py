"""Turn a training checkpoint into the shipped model folder: fp16 safetensors shards + manifest.

    python -m training.srma.export runs/srma/best.pt SRMASegmenter/Resources/Models/srma_chaos_t2
"""
from __future__ import annotations

import argparse
import json

import torch

from slicer_ai_common.weights import save_sharded


def export(checkpoint, folder, name="srma_chaos_t2", extra=None):
    ck = torch.load(checkpoint, map_location="cpu", weights_only=False)
    meta = ck.get("meta", {})
    val = ck.get("val", [])
    mean = {}
    if val:
        keys = [k for k in val[0] if k != "id"]
        mean = {k: float(sum(r[k] for r in val) / len(val)) for k in keys}
    manifest = dict(
        model="SRMA-Mamba", task="liver segmentation, T2 MRI", config=meta.get("config", {}),
        split=meta.get("split"), epochs_trained=int(ck.get("epoch", -1)) + 1, command=meta.get("command"),
        validation={"per_case": val, "mean": mean}, **(extra or {}))
    return save_sharded(ck["model"], folder, name, manifest)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("checkpoint")
    p.add_argument("folder")
    p.add_argument("--name", default="srma_chaos_t2")
    p.add_argument("--extra", help="JSON with more manifest fields (hardware, training time, ...)")
    a = p.parse_args(argv)
    rec = export(a.checkpoint, a.folder, a.name, json.loads(a.extra) if a.extra else None)
    print(json.dumps({f["file"]: f["sha256"] for f in rec.manifest["files"]}, indent=1))


if __name__ == "__main__":
    main()
