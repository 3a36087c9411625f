"""The chunked scan on the GPU: the serial kernel (SSM_SEGMENTS=1) beside the segmented one at several
occupancy targets (SSM_SEG_PER_SM), same tensors, same run; medians of triton.testing.do_bench.

    python kernels/benchmarks/sweep_segments.py --json segments.json

Every configuration is checked against the serial kernel's output and gradients first (max relative
difference printed); the table gives ms and the speed-up over serial. Shapes: the N = 1 shapes of
bench_scan.py (SRMA-Mamba at a 224 x 224 x 64 patch), its N = 16 shapes, and the fused four-direction
scan at the stage shapes of the 224 x 224 x 64 patch and of the liver training patch (128 x 128 x 48).
"""
from __future__ import annotations

import argparse
import json
import os

import torch
import triton.testing as tt

from bench_scan import make  # the plain-scan inputs of the scan benchmark (this folder)
from ssm_kernels import cross_selective_scan, selective_scan_fn

PLAIN = [(2, 384, 401408, 1, 4), (2, 768, 50176, 1, 4), (2, 1536, 6272, 1, 4), (2, 128, 401408, 1, 4),
         (2, 384, 50176, 16, 1), (32, 768, 784, 16, 1), (8, 1536, 2048, 16, 1)]
# (batch, d_inner, H, W) of the four-direction scan: 224x224x64 patch stages, then the liver training patch's
CROSS = [(2, 96, 112, 3584), (2, 192, 56, 896), (2, 384, 28, 224), (2, 96, 64, 1536), (2, 192, 32, 384),
         (2, 384, 16, 96)]
# per_sm=P: split at any grid size (SSM_SEG_BELOW_PER_SM=inf), aiming at P programs per SM; "default":
# ssm_kernels' own choice (split only below one program per SM)
CONFIGS = ([("serial", {"SSM_SEGMENTS": "1"})]
           + [(f"per_sm={p}", {"SSM_SEG_PER_SM": str(p), "SSM_SEG_BELOW_PER_SM": "inf"}) for p in (2, 4, 8, 16, 32)]
           + [("default", {})])
BASE_ENV = {k: v for k, v in os.environ.items() if k.startswith("SSM_")}  # as the run was started


def use(env):
    """The kernels' settings of one configuration: the SSM_* variables the run started with, plus env. Every
    other SSM_* variable is cleared, so no configuration inherits a setting from the one before it (until
    session 29 a fixed list was cleared: SSM_BWD_BLOCK_L and SSM_BWD_SEG_* carried over)."""
    for k in [k for k in os.environ if k.startswith("SSM_")]:
        del os.environ[k]
    os.environ.update(BASE_ENV)
    os.environ.update(env)


def rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def cross_inputs(b, d, h, w):
    g = torch.Generator(device="cuda").manual_seed(1)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g)
    return dict(x=r(b, d, h, w), delta=0.5 * r(b, 4, d, h, w), A=-(torch.rand(4 * d, 1, device="cuda") + 0.1),
                B=r(b, 4, 1, h, w), C=r(b, 4, 1, h, w), D=r(4 * d), delta_bias=0.3 * r(4 * d))


def run_case(label, fn, x, rows, configs=CONFIGS):
    """Time fwd and fwd+bwd of fn under each (name, env) of configs; the first is the reference."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in x.items()}
    gout = None

    def fwd():
        return fn(x)

    def fwdbwd():
        nonlocal gout
        for v in leaves.values():
            v.grad = None
        o = fn(leaves)
        if gout is None:
            gout = torch.randn_like(o, dtype=torch.float32).to(o.dtype)
        o.backward(gout)

    ref_out = ref_grads = None
    times = {}
    ref_name = configs[0][0]
    for name, env in configs:
        use(env)
        try:
            with torch.no_grad():
                out = fwd()
            fwdbwd()
        except Exception as e:  # noqa: BLE001 - a configuration that does not compile or run is a row too
            if ref_out is None:
                raise
            rows.append(dict(case=label, config=name, failed=f"{type(e).__name__}: {str(e)[:300]}"))
            print(f"{label:<40}{name:<28} failed: {type(e).__name__}: {str(e)[:120]}", flush=True)
            continue
        grads = {k: v.grad.clone() for k, v in leaves.items()}
        if ref_out is None:
            ref_out, ref_grads = out, grads
            diff = 0.0
        else:
            diff = max([rel(out, ref_out)] + [rel(grads[k], ref_grads[k]) for k in grads])
        with torch.no_grad():
            tf = tt.do_bench(fwd, return_mode="median")
        tb = tt.do_bench(fwdbwd, return_mode="median")
        times[name] = (tf, tb)
        rows.append(dict(case=label, config=name, fwd_ms=tf, fwd_bwd_ms=tb, reference=ref_name,
                         max_rel_diff_vs_reference=diff, fwd_speedup=times[ref_name][0] / tf,
                         fwd_bwd_speedup=times[ref_name][1] / tb))
        print(f"{label:<40}{name:<28}{tf:9.3f}{tb:10.3f}{times[ref_name][0] / tf:7.2f}x"
              f"{times[ref_name][1] / tb:7.2f}x{diff:10.1e}", flush=True)
    use({})


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--json")
    p.add_argument("--quick", action="store_true", help="fp32 only")
    a = p.parse_args()
    print(f"device {torch.cuda.get_device_name()}, {torch.cuda.get_device_properties(0).multi_processor_count} SMs")
    print(f"{'case':<40}{'config':<28}{'fwd ms':>9}{'f+b ms':>10}{'fwd x':>8}{'f+b x':>8}{'max diff':>10}")
    rows = []
    for shape in PLAIN:
        for dtype in ((torch.float32,) if a.quick else (torch.float32, torch.bfloat16)):
            x = make(*shape, dtype)
            fn = lambda t: selective_scan_fn(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], None,
                                             t["delta_bias"], True, backend="triton")
            run_case(f"{shape} {str(dtype)[6:]}", fn, x, rows)
            del x
            torch.cuda.empty_cache()
    for shape in CROSS:
        x = cross_inputs(*shape)
        run_case(f"SS2D {shape} float32", lambda t: cross_selective_scan(**t, backend="triton"), x, rows)
        del x
        torch.cuda.empty_cache()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
