"""The scan's backward on the GPU (issue 13, items 2-3): how the adjoint gets its decay one step on
(SSM_BWD_SHIFT: reload = a second load of delta and a second exp, as before; divide = one exp, a scan of
a_t g_t on the unshifted decays), the backward's own tile (SSM_BWD_BLOCK_L: the forward saves the state
at the start of each; shorter tiles hold fewer registers), its own channel block (SSM_BWD_BLOCK_D: wider
blocks sum dB / dC over more channels before their atomics), and for N = 16 the
forward's channel block and tile (wider blocks read B and C once for several channels, shorter tiles keep
their states in registers). Same tensors, same run, medians of triton.testing.do_bench; every configuration
is checked against the first (today's default) for output and all gradients.

    cd kernels/benchmarks && PYTHONPATH=..:. python sweep_backward.py --json backward.json [--quick] [--only ss2d]

--quick: fp32 only and the shift x block grid without the N = 16 forward layouts (those run in fp32).
--tune: the SS2D maps of the 224 x 224 x 64 step (both of each stage's planes) in the step's bfloat16,
through the layout training uses (transposed), under launch settings of both passes (channel block, warps,
tile, the backward's split) instead of the shift grid:

    cd kernels/benchmarks && PYTHONPATH=..:. python sweep_backward.py --tune --json tune.json

--tune1: those maps through the one-wide-state kernels against the general ones; --stages: the one-wide-state
kernels with their tile loop software-pipelined (SSM_SCAN1_STAGES) against today's; --maps K: the first K maps.
"""
from __future__ import annotations

import argparse
import json
import math

import torch

from bench_scan import make  # the plain-scan inputs of the scan benchmark (this folder)
from ssm_kernels import cross_selective_scan, selective_scan_fn
from sweep_segments import CROSS, PLAIN, cross_inputs, run_case

SHIFTS = ("reload", "divide")


def backward_configs(N):
    """Today's default first, then shift x backward tile x backward channel block (ptxas_report.py: the
    backward holds 255 registers at today's tiles, two programs per SM; shorter tiles hold fewer)."""
    tiles, blocks = ((0, 512, 256, 128), (0, 4)) if N <= 2 else ((0, 64, 32), (0, 4))  # 0: the forward's
    out = [("default", {})]
    for shift in SHIFTS:
        for bl in tiles:
            for bd in blocks:
                if (shift, bl, bd) == ("reload", 0, 0):
                    continue
                env = {"SSM_BWD_SHIFT": shift}
                if bl:
                    env["SSM_BWD_BLOCK_L"] = str(bl)
                if bd:
                    env["SSM_BWD_BLOCK_D"] = str(bd)
                out.append((f"{shift} bwd bl={bl or 'fwd'} bd={bd or 'fwd'}", env))
    return out


# (batch, d_inner, H, W) of every SS2D plane the 224 x 224 x 64 step scans (Testing/test_srma_scan_shapes.py),
# largest first
CROSS224 = [(2, 96, 112, 3584), (2, 32, 32, 12544), (2, 192, 56, 896), (2, 32, 16, 3136)]


def tune_configs():
    """Today's defaults first, then one launch setting changed at a time (and two pairs): the backward's
    channel block (dB / dC summed over more channels before their atomics), warps and tile; the forward's
    channel block, warps and tile; the backward split across programs at any grid size."""
    one = [("bwd bd=4", {"SSM_BWD_BLOCK_D": "4"}), ("bwd bd=8", {"SSM_BWD_BLOCK_D": "8"}),
           ("bwd nw=8", {"SSM_BWD_NUM_WARPS": "8"}), ("bwd nw=2", {"SSM_BWD_NUM_WARPS": "2"}),
           ("bwd bd=4 nw=8", {"SSM_BWD_BLOCK_D": "4", "SSM_BWD_NUM_WARPS": "8"}),
           ("bwd bd=8 nw=8", {"SSM_BWD_BLOCK_D": "8", "SSM_BWD_NUM_WARPS": "8"}),
           ("bwd bl=256", {"SSM_BWD_BLOCK_L": "256"}), ("bwd bl=1024", {"SSM_BWD_BLOCK_L": "1024"}),
           ("bwd split 4/SM", {"SSM_BWD_SEG_BELOW_PER_SM": "inf", "SSM_BWD_SEG_PER_SM": "4"}),
           ("fwd bd=1", {"SSM_BLOCK_D": "1", "SSM_BWD_BLOCK_D": "2"}),
           ("fwd nw=8", {"SSM_NUM_WARPS": "8", "SSM_BWD_NUM_WARPS": "4"}),
           ("fwd nw=2", {"SSM_NUM_WARPS": "2", "SSM_BWD_NUM_WARPS": "4"}),
           ("fwd bl=2048", {"SSM_BLOCK_L": "2048", "SSM_BWD_BLOCK_L": "512"})]
    return [("default", {})] + one


def tune1_configs():
    """The general kernels (today's defaults) first, then the one-wide-state kernels (SSM_SCAN1=1,
    triton_scan1.py) under launch settings of both passes. All in the transposed layout, so the forward
    column times the kernels training runs (under no_grad the default would read strided)."""
    s1 = {"SSM_SCAN1": "1", "SSM_CROSS_LAYOUT": "transpose"}
    var = [("", {}), (" serial", {"SSM_SEGMENTS": "1"}), (" bd=1", {"SSM_BLOCK_D": "1"}),
           (" bd=1 serial", {"SSM_BLOCK_D": "1", "SSM_SEGMENTS": "1"}),
           (" bd=1 bwd bl=1024", {"SSM_BLOCK_D": "1", "SSM_BWD_BLOCK_L": "1024"}),
           (" bd=4 bl=512/256", {"SSM_BLOCK_D": "4", "SSM_BLOCK_L": "512", "SSM_BWD_BLOCK_L": "256"}),
           (" bd=1 nw=2 bl=512", {"SSM_BLOCK_D": "1", "SSM_NUM_WARPS": "2", "SSM_BLOCK_L": "512",
                                  "SSM_BWD_BLOCK_L": "512"}),
           (" nw=8", {"SSM_NUM_WARPS": "8"}),
           (" split 4/SM", {"SSM_SEG_BELOW_PER_SM": "inf", "SSM_SEG_PER_SM": "4"}),
           (" bd=1 split 4/SM", {"SSM_BLOCK_D": "1", "SSM_SEG_BELOW_PER_SM": "inf", "SSM_SEG_PER_SM": "4"})]
    return ([("general", {"SSM_SCAN1": "0", "SSM_CROSS_LAYOUT": "transpose"})]
            + [(f"scan1{n}", dict(s1, **e)) for n, e in var])


def stages_configs():
    """The one-wide-state kernels (today's defaults) with their tile loop software-pipelined (SSM_SCAN1_STAGES:
    the next tiles' loads in flight as cp.async while one is scanned), alone and with a finer split; and
    tiles twice as long at twice the warps, alone and pipelined."""
    long = {"SSM_BLOCK_L": "2048", "SSM_BWD_BLOCK_L": "1024", "SSM_NUM_WARPS": "8"}   # more loads in flight a program
    var = [("scan1", {}), ("stages=2", {"SSM_SCAN1_STAGES": "2"}), ("stages=3", {"SSM_SCAN1_STAGES": "3"}),
           ("bwd stages=3", {"SSM_SCAN1_BWD_STAGES": "3"}), ("bwd stages=4", {"SSM_SCAN1_BWD_STAGES": "4"}),
           ("stages=2 split 8/SM", {"SSM_SCAN1_STAGES": "2", "SSM_SEG_PER_SM": "8"}),
           ("tiles 2048/1024 nw=8", long), ("tiles 2048/1024 nw=8 stages=2", dict(long, SSM_SCAN1_STAGES="2"))]
    # the transposed layout in every row, so that the forward column (timed under no_grad) runs these kernels
    return [(n, dict(e, SSM_CROSS_LAYOUT="transpose")) for n, e in var]


def n16_layouts():
    """Forward channel block x tile at N = 16 (today: 1 channel x 128 steps), backward on the same tiles."""
    out = []
    for bd, bl in ((2, 64), (4, 32), (8, 32), (8, 16)):
        for shift in SHIFTS:
            out.append((f"{shift} fwd bd={bd} bl={bl}",
                        {"SSM_BWD_SHIFT": shift, "SSM_BLOCK_D": str(bd), "SSM_BLOCK_L": str(bl)}))
    for bl, nw in ((64, 4), (256, 4), (256, 8), (128, 8), (128, 2)):   # one channel, other tiles and warps
        out.append((f"divide fwd bl={bl} nw={nw} bwd bl=32",
                    {"SSM_BWD_SHIFT": "divide", "SSM_BLOCK_L": str(bl), "SSM_NUM_WARPS": str(nw),
                     "SSM_BWD_BLOCK_L": "32", "SSM_BWD_NUM_WARPS": "4"}))
    return out


# UltraScanNet's scans at batch 32 (d_state 8; stage 2: 160 channels x 14 x 14 tokens, stage 3: 320 x 7 x 7),
# after the benchmark table's N = 16 shapes
SCANN_SHAPES = [(2, 384, 50176, 16, 1), (32, 768, 784, 16, 1), (8, 1536, 2048, 16, 1), (32, 160, 196, 8, 1),
                (32, 320, 49, 8, 1)]


def scann_configs(fine=False):
    """The general kernels first (SSM_SCANN=0), then the state-at-a-time kernels (SSM_SCANN=1,
    triton_scann.py) under channel block x tile x warps (both passes alike); fine: around session 31's best
    (one channel, 512 steps, 4 warps), the tile loop or the state loop pipelined, 2048-step tiles at 4 warps
    (backward 512), and the backward's tile halved."""
    out = [("general", {"SSM_SCANN": "0"})]
    grid = (((1, 256, 4), (2, 256, 4), (1, 512, 4), (2, 512, 8), (4, 128, 4), (1, 1024, 8), (2, 128, 4)) if not fine
            else ((1, 512, 4), (1, 512, 2), (1, 1024, 4), (1, 256, 2), (1, 2048, 8), (1, 512, 8)))
    for bd, bl, nw in grid:
        out.append((f"scann bd={bd} bl={bl} nw={nw}", {"SSM_SCANN": "1", "SSM_BLOCK_D": str(bd),
                                                        "SSM_BLOCK_L": str(bl), "SSM_NUM_WARPS": str(nw)}))
    if fine:   # the tile loop pipelined, and the backward on half tiles
        out += [("scann stages=2", {"SSM_SCANN": "1", "SSM_SCANN_STAGES": "2"}),
                ("scann state stages=2", {"SSM_SCANN": "1", "SSM_SCANN_STATE_STAGES": "2"}),
                ("scann state stages=3", {"SSM_SCANN": "1", "SSM_SCANN_STATE_STAGES": "3"}),
                ("scann 2048 x 4 warps", {"SSM_SCANN": "1", "SSM_BLOCK_L": "2048", "SSM_BWD_BLOCK_L": "512"}),
                ("scann bwd bl=256", {"SSM_SCANN": "1", "SSM_BWD_BLOCK_L": "256"})]
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--json")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--tune", action="store_true", help="the launch-settings sweep of the 224 step's SS2D maps, bf16")
    p.add_argument("--tune1", action="store_true", help="--tune's maps: the one-wide-state kernels against the general ones")
    p.add_argument("--stages", action="store_true", help="--tune's maps: the one-wide-state kernels' tile loop pipelined")
    p.add_argument("--scann", action="store_true", help="the state-at-a-time kernels for d_state >= 2 against the "
                   "general ones, bf16 (fp32 too with --fp32)")
    p.add_argument("--fp32", action="store_true")
    p.add_argument("--fine", action="store_true", help="--scann: the grid around session 31's best")
    p.add_argument("--maps", type=int, default=4, help="--tune / --tune1 / --stages: the first this many maps")
    p.add_argument("--only", choices=("ss2d", "n1", "n16"), action="append",
                   help="a part of the sweep (repeatable; default all): the four-direction scans of SRMA-Mamba, "
                        "the plain N = 1 shapes, the N = 16 shapes")
    a = p.parse_args()
    parts = a.only or ["ss2d", "n1", "n16"]
    print(f"device {torch.cuda.get_device_name()}, {torch.cuda.get_device_properties(0).multi_processor_count} SMs")
    print(f"{'case':<40}{'config':<28}{'fwd ms':>9}{'f+b ms':>10}{'fwd x':>8}{'f+b x':>8}{'max diff':>10}")
    rows = []
    pick = stages_configs if a.stages else tune1_configs if a.tune1 else tune_configs
    if a.tune or a.tune1 or a.stages:
        for shape in CROSS224[:a.maps]:
            x = {k: (v.to(torch.bfloat16) if k in ("x", "delta", "B", "C") else v)
                 for k, v in cross_inputs(*shape).items()}
            run_case(f"SS2D {shape} bfloat16", lambda t: cross_selective_scan(**t, backend="triton"), x, rows,
                     pick())
            del x
            torch.cuda.empty_cache()
        parts = []
    if a.scann:
        for shape in SCANN_SHAPES:
            for dtype in ((torch.bfloat16, torch.float32) if a.fp32 else (torch.bfloat16,)):
                x = make(*shape, dtype)
                fn = lambda t: selective_scan_fn(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t.get("z"),
                                                 t["delta_bias"], True, backend="triton")
                run_case(f"{shape} {str(dtype)[6:]}", fn, x, rows, scann_configs(a.fine))
                del x
                torch.cuda.empty_cache()
        parts = []
    if "ss2d" in parts:  # first: the training step of the liver model runs these
        for shape in CROSS:
            x = cross_inputs(*shape)
            run_case(f"SS2D {shape} float32", lambda t: cross_selective_scan(**t, backend="triton"), x, rows,
                     backward_configs(1))
            del x
            torch.cuda.empty_cache()
    for shape in PLAIN:
        N = shape[3]
        if ("n16" if N > 2 else "n1") not in parts:
            continue
        for dtype in ((torch.float32,) if a.quick else (torch.float32, torch.bfloat16)):
            layouts = N > 2 and dtype == torch.float32 and not a.quick
            configs = backward_configs(N) + (n16_layouts() if layouts else [])
            if N > 2:   # this grid tunes the general kernels, which d_state >= 2 no longer runs by default (--scann)
                configs = [(name, dict(env, SSM_SCANN="0")) for name, env in configs]
            x = make(*shape, dtype)
            fn = lambda t: selective_scan_fn(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], None,
                                             t["delta_bias"], True, backend="triton")
            run_case(f"{shape} {str(dtype)[6:]}", fn, x, rows, configs)
            del x
            torch.cuda.empty_cache()
    best = {}
    for r in rows:
        if "failed" not in r and r["fwd_bwd_speedup"] > best.get(r["case"], {}).get("fwd_bwd_speedup", 0):
            best[r["case"]] = r
    print("\nbest fwd+bwd per case:")
    for case, r in best.items():
        print(f"{case:<40}{r['config']:<28}{r['fwd_bwd_ms']:10.3f}{r['fwd_bwd_speedup']:7.2f}x")
    if a.scann:
        for pre in ("(", "(32, 160", "(32, 320"):
            r = best_overall(rows, pre)
            if r:
                print(f"best over the {r[2]} cases starting {pre!r} (geometric mean of fwd+bwd speed-ups {r[1]:.2f}x): {r[0]}")
    suggest = best_overall(rows, "SS2D")
    if suggest:
        name, gm, n = suggest
        env = dict(pick() if a.tune or a.tune1 or a.stages else backward_configs(1))[name]
        print(f"\nbest over the {n} SS2D cases (geometric mean of fwd+bwd speed-ups {gm:.2f}x): {name}\n"
              f"KERNEL_ENV {' '.join(f'{k}={v}' for k, v in env.items())}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), parts=parts, rows=rows, best_ss2d=suggest), f,
                      indent=1)


def best_overall(rows, prefix):
    """(config, geometric-mean fwd+bwd speed-up, cases) best over every case starting with prefix that it ran
    without failing; None if no case matched."""
    cases = {r["case"] for r in rows if r["case"].startswith(prefix)}
    per = {}
    for r in rows:
        if r["case"] in cases and "failed" not in r:
            per.setdefault(r["config"], []).append(r["fwd_bwd_speedup"])
    full = {c: v for c, v in per.items() if len(v) == len(cases)}
    if not full:
        return None
    gm = {c: math.exp(sum(math.log(x) for x in v) / len(v)) for c, v in full.items()}
    c = max(gm, key=gm.get)
    return c, gm[c], len(cases)


if __name__ == "__main__":
    main()
