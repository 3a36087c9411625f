"""Where one SRMA-Mamba training step spends its device time, by kernel group (issue 13, item 5).

    python benchmarks/profile_srma.py --patch 128 128 48 --json prof.json                 # the trainer's patch
    SSM_CROSS_LAYOUT=strided python benchmarks/profile_srma.py --patch 224 224 64 --json prof_strided.json
    python benchmarks/profile_srma.py --device cpu --dims 8 --patch 32 32 16 --steps 1   # smoke (CPU time)
    python benchmarks/profile_srma.py --patch 128 128 48 --by-source   # also: which model function launched what

The step is the trainer's (training/srma/train.py) without its data pipeline: the 5-class model at
--dims, bf16 autocast on the GPU, softmax Dice + CE with deep supervision on the four outputs, backward,
AdamW. It runs eager (a CUDA graph replays as one launch, which the profiler does not split), so the
whole-step time printed is above the trainer's graphed step; the groups say where the kernels' time goes.
Each kernel's own (self) device time is counted once, in the first group whose pattern its name holds
(GROUPS, in order). The scan kernels are named by ssm_kernels (`_scan_fwd_kernel`, `_scan_bwd_kernel`; d_state 1: `_scan1_...`);
the copies of the transposed SS2D layout (SSM_CROSS_LAYOUT=transpose, the training default) land in
"copies, casts and layout conversions", so running both layouts says whether the copies eat the scans' gain.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

GROUPS = (  # (group, name fragments, lower case); first match wins
    ("scan forward", ("_scan_fwd_kernel", "_scan1_fwd_kernel")),
    ("scan backward", ("_scan_bwd_kernel", "_scan1_bwd_kernel")),
    ("layer norm", ("layer_norm", "layernorm", "_ln_fwd_kernel", "_ln_bwd_kernel")),  # PyTorch's, ssm_kernels'
    ("copies, casts and layout conversions", ("copy", "nchwtonhwc", "nhwctonchw", "transpose", "permute")),
    # cuBLAS's GEMMs before the convolutions (whose "xmma" would take sm90_xmma_gemm_*); other GEMM names after
    ("matrix multiply", ("nvjet", "xmma_gemm", "gemmsn", "gemv", "cublas", "aten::mm", "aten::bmm", "aten::addmm",
                         "aten::matmul")),
    ("convolution", ("conv", "implicit_gemm", "xmma", "cudnn", "winograd", "dgrad", "wgrad",
                     "_dw_fwd_kernel", "_dw_bwd_pre_kernel", "_dw_bwd_input_kernel")),   # last three: ssm_kernels
    ("matrix multiply", ("gemm", "cutlass", "matmul")),
    ("upsampling", ("upsample",)),
    ("batch / group norm", ("batch_norm", "batchnorm", "group_norm", "groupnorm")),
    ("reductions", ("reduce", "sum_", "mean_", "norm_kernel")),
    ("optimizer", ("adam", "foreach", "multi_tensor")),
    ("elementwise", ("elementwise", "vectorized", "unrolled", "activation", "gelu", "silu", "softplus", "exp",
                     "aten::add", "aten::mul", "aten::sub", "aten::div", "aten::fill")),
)


def group_of(name: str) -> str:
    """The group of a kernel (or, on the CPU, an operator) by its name; "other" where none matches."""
    low = name.lower()
    for group, frags in GROUPS:
        if any(f in low for f in frags):
            return group
    return "other"


def _self_time_us(evt, cuda: bool) -> float:
    if cuda:
        for attr in ("self_device_time_total", "self_cuda_time_total"):
            if hasattr(evt, attr):
                return float(getattr(evt, attr))
        return 0.0
    return float(evt.self_cpu_time_total)


def kernel_groups(events, cuda: bool) -> tuple[dict, list]:
    """({group: ms}, [(name, ms, calls), ...] largest first) from profiler key averages, by self time."""
    groups: dict[str, float] = {}
    rows = []
    for e in events:
        ms = _self_time_us(e, cuda) / 1e3
        if ms <= 0 or ".py(" in e.key or e.key.startswith(("<built-in", "nn.Module:")):
            continue                     # with_stack's Python frames: no kernels of their own
        g = group_of(e.key)
        groups[g] = groups.get(g, 0.0) + ms
        rows.append((e.key, ms, int(e.count)))
    rows.sort(key=lambda r: -r[1])
    return dict(sorted(groups.items(), key=lambda kv: -kv[1])), rows


PROJECT = ("SRMASegmenterLib", "slicer_ai_common", "ssm_kernels", "training/")


@functools.lru_cache(maxsize=None)     # one parse per frame name, not per operator
def _qualname(frame: str) -> str:
    """'.../SRMASegmenterLib/model.py(105): forward' -> 'model.py: SS2D.forward' where the file can be read
    (the profiler names a Python function by the line of its `def`), else the frame's last path part."""
    import ast
    import re
    m = re.match(r"(.*)\((\d+)\): (\w+)$", frame)
    if not m:
        return frame
    path, line, func = m.group(1), int(m.group(2)), m.group(3)
    if not os.path.isabs(path):        # the profiler trims the path to the package: find it on sys.path
        import sys
        path = next((os.path.join(d, path) for d in sys.path if os.path.isfile(os.path.join(d or ".", path))), path)
    try:
        tree = ast.parse(open(path).read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for f in node.body:
                    if isinstance(f, ast.FunctionDef) and line in [f.lineno] + [d.lineno for d in f.decorator_list]:
                        return f"{os.path.basename(path)}: {node.name}.{func}"
    except OSError:
        pass
    return f"{os.path.basename(path)}: {func}"


def by_source(events, cuda: bool) -> list:
    """[((source, operator, group), (ms, kernels)), ...] largest first: each operator's own device time (on the
    GPU the kernels it launched, on the CPU its self time) charged to the innermost project function on its
    Python stack (the profile must be taken with_stack), or, in the backward, to the autograd node that ran
    it ("backward: CloneBackward0"). Says which line of the model a copy or cast comes from."""
    out: dict = {}
    for e in events:
        if cuda:
            items = [(k.name, float(k.duration)) for k in (getattr(e, "kernels", None) or [])]
        elif e.name.startswith("aten::"):
            items = [(e.name, float(e.self_cpu_time_total))]
        else:
            continue
        if not items:
            continue
        src, p = None, e.cpu_parent
        while p is not None and src is None:
            if p.name.startswith("autograd::engine::evaluate_function: "):
                src = "backward: " + p.name.split(": ", 1)[1]
            elif any(r in p.name for r in PROJECT) and "): " in p.name:
                src = _qualname(p.name)
            p = p.cpu_parent
        src = src or "(outside the project's code)"
        for kname, us in items:
            key = (src, e.name, group_of(kname))
            ms, n = out.get(key, (0.0, 0))
            out[key] = (ms + us / 1e3, n + 1)
    return sorted(out.items(), key=lambda kv: -kv[1][0])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dims", type=int, default=48, help="the trainer's width (48)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--patch", type=int, nargs=3, default=[128, 128, 48])
    p.add_argument("--steps", type=int, default=5, help="timed eager steps (after 3 of warm-up)")
    p.add_argument("--top", type=int, default=25, help="kernels (and sources) listed")
    p.add_argument("--by-source", action="store_true",
                   help="also charge each operator's device time to the project function that called it (with_stack)")
    p.add_argument("--json")
    a = p.parse_args(argv)

    from SRMASegmenterLib.model import SRMAConfig, SRMAMamba
    from training.srma.data import CHAOS_CLASSES
    from training.srma.train import deep_supervision_loss, segmentation_loss

    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    nc = len(CHAOS_CLASSES)
    model = SRMAMamba(SRMAConfig(dims=a.dims, out_chans=nc, class_names=tuple(CHAOS_CLASSES))).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05)
    loss_fn = segmentation_loss()
    x = torch.randn(a.batch_size, 1, *a.patch, device=dev)
    y = torch.randint(0, nc, (a.batch_size, *a.patch), device=dev)

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            outs = model(x)
        loss = deep_supervision_loss([o.float() for o in outs], y[:, None], loss_fn)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3 if cuda else 1):
        step()
    times = []
    for _ in range(a.steps):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    def profiled(activities, with_stack):
        with profile(activities=activities, with_stack=with_stack) as prof:
            step()
            sync()
        return prof

    prof = profiled([ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU], a.by_source and not cuda)
    groups, rows = kernel_groups(prof.key_averages(), cuda)
    sources = []
    if a.by_source:
        try:                           # an attribution that fails must not cost the kernel table
            # on the GPU a kernel is tied to the operator that launched it, and that to its Python stack, only
            # when the CPU is profiled too (session 26's GPU profile, CUDA alone, came back with no sources);
            # that profile would count each kernel's time twice in the table above (on the kernel and on its
            # operator), so the sources come from a second step profiled with both
            src = profiled([ProfilerActivity.CPU, ProfilerActivity.CUDA], True) if cuda else prof
            sources = by_source(src.events(), cuda)
        except Exception as e:         # noqa: BLE001
            print(f"--by-source failed: {type(e).__name__}: {e}")
    total = sum(groups.values())
    res = dict(device=torch.cuda.get_device_name(dev) if cuda else "cpu", torch=torch.__version__,
               dims=a.dims, batch=a.batch_size, patch=a.patch, eager_step_ms=statistics.median(times),
               step_ms_all=times, profiled_ms=total, groups_ms=groups,
               kernels=[dict(name=n, ms=ms, calls=c) for n, ms, c in rows[:a.top]],
               sources=[dict(source=s, op=o, group=g, ms=ms, kernels=k) for (s, o, g), (ms, k) in sources[:4 * a.top]],
               ssm_env={k: v for k, v in os.environ.items() if k.startswith("SSM_")})
    what = "kernel" if cuda else "operator"
    print(f"{res['device']}, dims {a.dims}, batch {a.batch_size}, patch {tuple(a.patch)}, SSM_* {res['ssm_env']}")
    print(f"eager step (median of {a.steps}): {res['eager_step_ms']:.1f} ms; profiled {what} self time {total:.1f} ms")
    print(f"| {what} group | ms | share |\n|---|---|---|")
    for g, ms in groups.items():
        print(f"| {g} | {ms:.1f} | {ms / total:.0%} |")
    print(f"\n| {what} | ms | calls | group |\n|---|---|---|---|")
    for n, ms, c in rows[:a.top]:
        print(f"| {n[:70]} | {ms:.2f} | {c} | {group_of(n)} |")
    if sources:
        print(f"\n| source (project function or autograd node) | operator | group | ms | kernels |\n|---|---|---|---|---|")
        for (src, op, g), (ms, k) in sources[:a.top]:
            print(f"| {src} | {op} | {g} | {ms:.2f} | {k} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
