"""Selective-scan benchmark: our backends beside mamba_ssm, same tensors, same run.

    python kernels/benchmarks/bench_scan.py --json out.json            # GPU: triton vs mamba_ssm
    python kernels/benchmarks/bench_scan.py --cpu                      # CPU: torch backend vs reference

Times are medians of triton.testing.do_bench (GPU) or of repeated runs (CPU). "floor" is the time to
move u, delta, B, C and out once each at the copy bandwidth measured in the same run; "% floor" =
floor / time.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ssm_kernels import cross_merge, cross_scan, cross_selective_scan, selective_scan_fn, selective_scan_ref

SRMA = [(2, 384, 401408, 1, 4), (2, 768, 50176, 1, 4), (2, 1536, 6272, 1, 4), (2, 128, 401408, 1, 4)]
N16 = [(2, 384, 50176, 16, 1), (32, 768, 784, 16, 1), (8, 1536, 2048, 16, 1)]
# SS2D images of SRMA's ABSS at a 224x224x64 patch: (batch*slices, d_inner, H, W) for the h-scan of each stage
SS2D = [(2, 96, 112, 3584), (2, 192, 56, 896), (2, 384, 28, 224)]


def copy_bandwidth():
    x = torch.empty(1 << 28, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    import triton.testing as tt
    ms = tt.do_bench(lambda: y.copy_(x), return_mode="median")
    return 2 * x.numel() / (ms * 1e-3)  # bytes read + written per second


def make(batch, dim, L, N, G, dtype, device="cuda"):
    g = torch.Generator(device=device).manual_seed(0)
    r = lambda *s: torch.randn(*s, device=device, generator=g)
    bc = (batch, G, N, L) if G > 1 else (batch, N, L)
    return dict(u=r(batch, dim, L).to(dtype), delta=(0.5 * r(batch, dim, L)).to(dtype),
                A=-(torch.rand(dim, N, device=device, generator=g) + 0.1), B=r(*bc).to(dtype), C=r(*bc).to(dtype),
                D=r(dim), delta_bias=0.3 * r(dim))


def import_mamba_scan():
    """mamba_ssm's selective_scan_fn without running mamba_ssm/__init__ (which pulls in transformers)."""
    import importlib
    import importlib.util
    import sys
    import types
    spec = importlib.util.find_spec("selective_scan_cuda")
    if spec is None:
        raise ImportError("selective_scan_cuda (mamba_ssm's CUDA extension) is not built")
    root = None
    for p in sys.path:
        import os
        if os.path.isdir(os.path.join(p, "mamba_ssm", "ops")):
            root = os.path.join(p, "mamba_ssm")
            break
    if root is None:
        raise ImportError("mamba_ssm sources not on sys.path")
    for name, path in (("mamba_ssm", root), ("mamba_ssm.ops", os.path.join(root, "ops")),
                       ("mamba_ssm.ops.triton", os.path.join(root, "ops", "triton"))):
        if name not in sys.modules:
            m = types.ModuleType(name)
            m.__path__ = [path]
            sys.modules[name] = m
    return importlib.import_module("mamba_ssm.ops.selective_scan_interface").selective_scan_fn


def bench_gpu(args):
    import triton.testing as tt
    try:
        mamba_fn = import_mamba_scan()
    except Exception as e:  # noqa: BLE001
        print(f"mamba_ssm not importable ({e}); timing ours alone")
        mamba_fn = None
    bw = copy_bandwidth()
    print(f"device {torch.cuda.get_device_name()}, copy bandwidth {bw / 1e12:.2f} TB/s (read+write)")
    rows = []
    hdr = f"{'shape (B,dim,L,N,G)':<28}{'dtype':<6}{'pass':<8}{'ours ms':>9}{'mamba ms':>10}{'ratio':>7}{'%floor':>8}{'mamba %':>8}{'max rel err':>12}"
    print(hdr)
    for shape in (SRMA + N16):
        for dtype in (torch.float32, torch.bfloat16):
            x = make(*shape, dtype)
            el = torch.tensor([], dtype=dtype).element_size()
            batch, dim, L, N, G = shape
            nbytes = (3 * batch * dim * L) * el + 2 * batch * G * N * L * el  # u, delta, out + B, C
            for mode in ("fwd", "fwd+bwd"):
                def run(fn):
                    if mode == "fwd":
                        return lambda: fn(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], None, x["delta_bias"], True)
                    leaves = {k: v.detach().clone().requires_grad_() for k, v in x.items()}
                    gout = torch.randn_like(x["u"])

                    def f():
                        for v in leaves.values():
                            v.grad = None
                        o = fn(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], leaves["D"], None,
                               leaves["delta_bias"], True)
                        o.backward(gout)
                    return f
                ours = lambda *a: selective_scan_fn(*a, backend="triton")
                t_ours = tt.do_bench(run(ours), return_mode="median")
                t_m = tt.do_bench(run(mamba_fn), return_mode="median") if mamba_fn else float("nan")
                err = float("nan")
                if mamba_fn and mode == "fwd":
                    a = ours(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], None, x["delta_bias"], True).float()
                    b = mamba_fn(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], None, x["delta_bias"], True).float()
                    err = float((a - b).norm() / b.norm())
                floor_ms = nbytes / bw * 1e3 * (1 if mode == "fwd" else 3)
                row = dict(shape=shape, dtype=str(dtype).split(".")[-1], mode=mode, ours_ms=t_ours, mamba_ms=t_m,
                           ratio=t_m / t_ours, floor_ms=floor_ms, ours_floor=floor_ms / t_ours,
                           mamba_floor=floor_ms / t_m, rel_err_vs_mamba=err)
                rows.append(row)
                print(f"{str(shape):<28}{row['dtype']:<6}{mode:<8}{t_ours:9.3f}{t_m:10.3f}{row['ratio']:7.2f}"
                      f"{100 * row['ours_floor']:7.0f}%{100 * row['mamba_floor']:7.0f}%{err:12.1e}", flush=True)
            del x
            torch.cuda.empty_cache()
    print("\nfused four-direction SS2D scan vs cross_scan + scan + cross_merge (fp32, N=1)")
    print(f"{'(B, d_inner, H, W)':<24}{'pass':<8}{'fused ms':>9}{'unfused(mamba) ms':>18}{'unfused(ours) ms':>17}{'ratio':>7}")
    for (b, d, h, w) in SS2D:
        g = torch.Generator(device="cuda").manual_seed(1)
        r = lambda *s: torch.randn(*s, device="cuda", generator=g)
        xx = dict(x=r(b, d, h, w), delta=0.5 * r(b, 4, d, h, w), A=-(torch.rand(4 * d, 1, device="cuda") + 0.1),
                  B=r(b, 4, 1, h, w), C=r(b, 4, 1, h, w), D=r(4 * d), delta_bias=0.3 * r(4 * d))
        L = h * w

        def unfused(fn, t):
            xs = cross_scan(t["x"]).reshape(b, 4 * d, L)
            ds = torch.stack([cross_scan(t["delta"][:, i])[:, i] for i in range(4)], 1).reshape(b, 4 * d, L)
            Bs = torch.stack([cross_scan(t["B"][:, i])[:, i] for i in range(4)], 1).contiguous()
            Cs = torch.stack([cross_scan(t["C"][:, i])[:, i] for i in range(4)], 1).contiguous()
            ys = fn(xs, ds, t["A"], Bs, Cs, t["D"], None, t["delta_bias"], True)
            return cross_merge(ys.view(b, 4, d, L), h, w)

        for mode in ("fwd", "fwd+bwd"):
            def wrap(f):
                if mode == "fwd":
                    return lambda: f(xx)
                leaves = {k: v.detach().clone().requires_grad_() for k, v in xx.items()}

                def g_():
                    for v in leaves.values():
                        v.grad = None
                    f(leaves).float().sum().backward()
                return g_
            t_f = tt.do_bench(wrap(lambda t: cross_selective_scan(**t, backend="triton")), return_mode="median")
            t_um = tt.do_bench(wrap(lambda t: unfused(mamba_fn, t)), return_mode="median") if mamba_fn else float("nan")
            t_uo = tt.do_bench(wrap(lambda t: unfused(lambda *a: selective_scan_fn(*a, backend="triton"), t)),
                               return_mode="median")
            best_unfused = t_um if mamba_fn else t_uo
            rows.append(dict(ss2d=(b, d, h, w), mode=mode, fused_ms=t_f, unfused_mamba_ms=t_um, unfused_ours_ms=t_uo,
                             ratio=best_unfused / t_f))
            print(f"{str((b, d, h, w)):<24}{mode:<8}{t_f:9.3f}{t_um:18.3f}{t_uo:17.3f}{best_unfused / t_f:7.2f}", flush=True)
        del xx
        torch.cuda.empty_cache()
    return dict(device=torch.cuda.get_device_name(), copy_bw=bw, rows=rows)


def bench_cpu(args):
    torch.set_num_threads(args.threads or torch.get_num_threads())
    shape = (1, 384, 50176, 1, 1)
    x = make(*shape, torch.float32, device="cpu")
    fn = lambda be: selective_scan_fn(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], None, x["delta_bias"],
                                      True, backend=be)
    times = {}
    for be, reps in (("torch", 5), ("ref", 1)):
        fn(be) if be == "torch" else None
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            with torch.no_grad():
                fn(be)
            ts.append(time.perf_counter() - t0)
        times[be] = statistics.median(ts)
    err = float((fn("torch").double() - selective_scan_ref(**{k: v for k, v in x.items()}, delta_softplus=True)).norm()
                / selective_scan_ref(**x, delta_softplus=True).norm())
    print(f"CPU, {torch.get_num_threads()} threads, shape (B,dim,L,N)={shape[:4]}")
    print(f"torch backend {times['torch'] * 1e3:.0f} ms, float64 reference loop {times['ref'] * 1e3:.0f} ms, "
          f"ratio {times['ref'] / times['torch']:.1f}x, rel err {err:.1e}")
    return dict(cpu_threads=torch.get_num_threads(), shape=shape, torch_s=times["torch"], ref_s=times["ref"])


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json")
    a = p.parse_args()
    res = bench_cpu(a) if a.cpu else bench_gpu(a)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1, default=str)
