"""Where the scan's time goes in one SRMA-Mamba training step: each scan call timed by shape.

Wraps ssm_kernels.triton_launch.forward/backward with CUDA events during a bf16 training step at
batch 2 (patch from --patch, default 224 224 64) and prints, per (batch, channels, L, N, SS2D map H x W) shape,
the calls, the median forward and backward time, and the bytes each moves over the time of a copy of
those bytes (the memory floor), so the shapes furthest from the floor are the ones to work on.

    python3 benchmarks/scan_shapes_srma.py [--patch 224 224 64] [--json OUT.json]
"""
import argparse
import collections
import json
import statistics

import torch

from ssm_kernels import triton_launch as tl
from SRMASegmenterLib.model import SRMAMamba

p = argparse.ArgumentParser()
p.add_argument("--patch", type=int, nargs=3, default=[224, 224, 64])
p.add_argument("--steps", type=int, default=5)
p.add_argument("--json")
a = p.parse_args()

times = collections.defaultdict(lambda: {"fwd": [], "bwd": [], "bytes": 0})
pending = []


def key(u, B, hw):
    """(u's shape, N, the SS2D map's (H, W) or None): maps of one length but other heights are other shapes."""
    return (tuple(u.shape), B.shape[-2], tuple(hw) if hw is not None else None)


def nbytes(*ts):
    return sum(t.numel() * t.element_size() for t in ts if t is not None)


def timed(fn, kind):
    def wrap(*args, **kw):
        u, delta, A, B, C = args[:5]
        hw = args[9] if kind == "fwd" else args[11]
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        out = fn(*args, **kw)
        e1.record()
        k = key(u, B, hw)
        pending.append((k, kind, e0, e1))
        if kind == "fwd":
            times[k]["bytes"] = nbytes(u, delta, B, C) + u.numel() * 4   # read u, delta, B, C; write fp32 out
        return out
    return wrap


tl.forward = timed(tl.forward, "fwd")
tl.backward = timed(tl.backward, "bwd")
dev = torch.device("cuda")
model = SRMAMamba().to(dev).train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
x = torch.randn(2, 1, *a.patch, device=dev)
y = (torch.rand(2, 1, *a.patch, device=dev) > 0.5).float()
for i in range(a.steps + 2):
    if i == 2:
        torch.cuda.synchronize()
        pending.clear()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        outs = model(x)
    loss = sum(torch.nn.functional.binary_cross_entropy_with_logits(o.float(), y) for o in outs)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
torch.cuda.synchronize()
for k, kind, e0, e1 in pending:
    times[k][kind].append(e0.elapsed_time(e1))
# copy floor: a device-to-device copy of the same number of bytes
rows = []
for k, v in times.items():
    n = max(1, v["bytes"] // 2)
    src = torch.empty(n, dtype=torch.bfloat16, device=dev)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    ts = []
    for _ in range(10):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record(); dst.copy_(src); e1.record(); torch.cuda.synchronize()
        ts.append(e0.elapsed_time(e1) / 2)   # a copy reads and writes: half of it is moving the bytes once
    per = len(v["fwd"]) // a.steps
    rows.append({"u_shape": k[0], "N": k[1], "ss2d": k[2] is not None, "hw": k[2], "calls_per_step": per,
                 "fwd_ms": statistics.median(v["fwd"]), "bwd_ms": statistics.median(v["bwd"]) if v["bwd"] else None,
                 "floor_ms": statistics.median(ts)})
rows.sort(key=lambda r: -(r["fwd_ms"] + (r["bwd_ms"] or 0)) * r["calls_per_step"])
print(f"{torch.cuda.get_device_name()}  patch {a.patch}  batch 2 bf16")
print(f"{'u (b, d, L)':>22} {'N':>3} {'map H x W':>11} {'calls':>5} {'fwd ms':>8} {'bwd ms':>8} {'floor ms':>9} "
      f"{'fwd/floor':>9} {'step ms':>8}")
tot = 0.0
for r in rows:
    st = (r["fwd_ms"] + (r["bwd_ms"] or 0)) * r["calls_per_step"]
    tot += st
    hw = f"{r['hw'][0]} x {r['hw'][1]}" if r["hw"] else "-"
    print(f"{str(r['u_shape']):>22} {r['N']:>3} {hw:>11} {r['calls_per_step']:>5} {r['fwd_ms']:8.3f} "
          f"{(r['bwd_ms'] or 0):8.3f} {r['floor_ms']:9.3f} {r['fwd_ms'] / r['floor_ms']:9.1f} {st:8.1f}")
print(f"scan total per step: {tot:.1f} ms")
if a.json:
    json.dump({"device": torch.cuda.get_device_name(), "patch": a.patch, "rows": rows, "scan_ms_per_step": tot},
              open(a.json, "w"), indent=1)
