"""The SRMA-Mamba training step as training/srma/train.py runs it (12 volumes on the GPU, nnU-Net-style
GPU augmentation, 5 classes, deep supervision, bf16, clipping, AdamW, EMA), on synthetic volumes of the
CHAOS canvas size: where a step's time goes, and the step before / after the shared loop's changes
(EMA as one multi-tensor lerp instead of a per-tensor loop over state_dict(); fused or multi-tensor AdamW).

    python benchmarks/bench_train_step.py --json step.json           # on the GPU machine
    python benchmarks/bench_train_step.py --device cpu --dims 8 --steps 1 --chunks 1 --patch 64 64 16  # smoke
    python benchmarks/bench_train_step.py --compare scan --json step.json   # serial vs segmented scan
    python benchmarks/bench_train_step.py --compare graphs --json step.json # eager vs one CUDA graph
    python benchmarks/bench_train_step.py --compare kernels --kernel-env SSM_BWD_BLOCK_L=256 SSM_BWD_SHIFT=divide
    python benchmarks/bench_train_step.py --compare compile --json step.json  # forward + loss by torch.compile
    python benchmarks/bench_train_step.py --compare ops --json step.json  # the model's own ops vs PyTorch's
    python benchmarks/bench_train_step.py --compare ops --revert upsample  # one of them alone

--compare scan times the step (multi-tensor EMA, fused AdamW) with the Triton scan serial over each
sequence (SSM_SEGMENTS=1, the kernel before the chunked scan) against the chunked scan as chosen by
ssm_kernels' heuristic; the variable is switched between chunks in the one process.

--compare graphs times the step with its forward + loss + backward eager against the same replayed as one
CUDA graph (training.loop.GraphedStep, what train.py does by default on a GPU), and first checks that the
two give the same loss and gradients: both models from one seed, drop-path off for the check only, one
batch; the largest gradient difference relative to the gradient's largest entry is printed and recorded.

--compare kernels times the step (as a CUDA graph on the GPU) with the scan kernels' defaults against the
same with the ssm_kernels settings of --kernel-env (e.g. a candidate of kernels/benchmarks/sweep_backward.py),
set while that variant's graph is captured and run; first it checks that the settings give the defaults'
loss and gradients (graph_check.check_kernel_env: one batch, eager; --chunks 0 stops after the check).

--compare compile times the step (as a CUDA graph on the GPU) with its forward + loss compiled by
torch.compile (inductor, static shapes; the scan stays the ssm_kernels call between the compiled graphs:
training.loop.compile_around) against the same uncompiled, after checking that the compiled step gives the
defaults' loss and gradients (graph_check.check_candidate_loss). Compilation happens in the warm-up. The
compiled variant's layer norms and SS2D convolutions are PyTorch's (for inductor to fuse them with their
neighbours; --compile-ln own keeps ssm_kernels' layer norm and convolution there too); the uncompiled one
runs the model's own.
--compile-backend aot_eager checks the plumbing where inductor cannot generate code (this CPU).

--compare ops times the step (as a CUDA graph on the GPU) with some of the model's operations as they were
before against the model as it is, after the same loss and gradient check; --revert names which go back
in the "before" variant (default all): `upsample`, the trilinear upsampling differentiated by PyTorch
(atomic scatter) instead of the model's gathering backward (SRMASegmenterLib.model._TrilinearUp); `proj`,
SS2D's per-direction projections as 1 x 1 convolutions (cuDNN, with its NCHW <-> NHWC conversions) instead
of matrix products (both session 24); `ln`, PyTorch's layer norm (fp32 under autocast, on channels-last
copies, then cast / permuted) instead of ssm_kernels.layer_norm (session 25); `dwconv`, SS2D's depthwise
convolution + SiLU by PyTorch on the permuted projection, then copied channels-first, instead of
ssm_kernels.dwconv3x3_silu (session 26); `pad`, SS2D's dt projection with its rank of 3 as it is (cuBLAS's
unaligned kernels) instead of padded to 8 (session 26); `xgrad`, SS2D's x multiplied by matmul, whose
gradient of x comes back channels-last and is added to the scan's through strides, instead of bmm
(session 28). They are swapped while each variant's graph is
captured.

Whole steps are timed without synchronising inside them (the rate training gets), in chunks that
alternate between the variants; the breakdown synchronises around each part (so its sum is a little
above the whole step). Medians.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time

import torch

import SRMASegmenterLib.model as srma_model
from SRMASegmenterLib.model import SRMAConfig, SRMAMamba
from training.loop import EMA, Amp, GraphedStep, PerTensorEMA, adamw
from training.srma.augment3d import Augment3DConfig, augment_batch
from training.srma.data import CHAOS_CLASSES
from training.srma.train import deep_supervision_loss, segmentation_loss

from graph_check import check_candidate_loss, check_graphed_step, check_kernel_env


def synthetic_canvas(n, size, device, g):
    """n volumes (1, I, J, K) with a liver, spleen and two kidneys as ellipsoids of distinct intensity."""
    i, j, k = torch.meshgrid(*[torch.linspace(-1, 1, s) for s in size], indexing="ij")
    imgs, labs = [], []
    for _ in range(n):
        lab = torch.zeros(size, dtype=torch.uint8)
        x = torch.randn(size, generator=g) * 0.3
        for c, (ci, cj, r) in enumerate([(-0.3, -0.1, 0.45), (0.2, 0.4, 0.15), (0.2, -0.5, 0.15),
                                         (0.5, 0.1, 0.25)], start=1):
            d = torch.rand(2, generator=g) * 0.1
            m = ((i - ci - d[0]) ** 2 + (j - cj - d[1]) ** 2 + k ** 2 / 1.5) < r ** 2
            lab[m] = c
            x[m] += 0.5 * c
        imgs.append(x[None])
        labs.append(lab)
    return torch.stack(imgs).to(device), torch.stack(labs).to(device)


def scatter_upsample(x, size):
    """SRMA-Mamba's upsampling before session 24: differentiated by PyTorch (atomic scatter)."""
    return torch.nn.functional.interpolate(x, size=tuple(size), mode="trilinear", align_corners=False)


def conv_projections(self, x):
    """SS2D.projections before session 24: 1 x 1 convolutions."""
    F = torch.nn.functional
    b, _, h, w = x.shape
    k, di, r, n = self.K, self.d_inner, self.dt_rank, self.d_state
    x_dbl = F.conv2d(x, self.x_proj_weight.reshape(k * (r + 2 * n), di, 1, 1)).view(b, k, r + 2 * n, h, w)
    dts, Bs, Cs = torch.split(x_dbl, [r, n, n], dim=2)
    dts = F.conv2d(dts.reshape(b, k * r, h, w), self.dt_projs_weight.reshape(k * di, r, 1, 1), groups=k)
    return dts.view(b, k, di, h, w), Bs, Cs


def torch_dwconv_silu(conv, x):
    """SS2D's depthwise convolution + SiLU before session 26: conv2d on the permuted projection (cuDNN or
    PyTorch's depthwise kernels), SiLU, then a channels-first copy."""
    return torch.nn.functional.silu(conv(x.permute(0, 3, 1, 2))).contiguous()


def torch_layer_norm(norm, x, channels_first=False, out_channels_first=False, out_dtype=None):
    """SRMA-Mamba's layer norms before session 25: PyTorch's on a channels-last copy, then cast and permuted."""
    if channels_first:
        x = x.movedim(1, -1)
    y = torch.nn.functional.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
    y = y if out_dtype is None else y.to(out_dtype)
    return y.movedim(-1, 1).contiguous() if out_channels_first else y


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dims", type=int, default=48)
    p.add_argument("--refine", type=int, default=0, help="width of the full-resolution refinement head (0: none)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--patch", type=int, nargs=3, default=[128, 128, 48])
    p.add_argument("--steps", type=int, default=20, help="steps per timed chunk")
    p.add_argument("--chunks", type=int, default=5, help="timed chunks per variant (alternating)")
    p.add_argument("--compare", choices=("optimizer", "scan", "graphs", "kernels", "compile", "ops"), default="optimizer")
    p.add_argument("--revert", nargs="+", choices=("upsample", "proj", "ln", "dwconv", "pad", "xgrad"),
                   default=["upsample", "proj", "ln", "dwconv", "pad", "xgrad"],
                   help="--compare ops: what the 'before' variant takes back")
    p.add_argument("--kernel-env", nargs="+", default=[], metavar="SSM_VAR=VALUE",
                   help="--compare kernels: the candidate's ssm_kernels settings")
    p.add_argument("--compile-backend", default="inductor", help="--compare compile: torch.compile's backend")
    p.add_argument("--compile-ln", choices=("torch", "own"), default="torch",
                   help="--compare compile: the compiled variant's layer norms and SS2D convolutions: PyTorch's "
                        "(for inductor to fuse; default) or ssm_kernels' (the model's own, as the uncompiled variant)")
    p.add_argument("--json")
    a = p.parse_args(argv)
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    torch.backends.cudnn.benchmark = True
    g = torch.Generator(device=dev).manual_seed(0)
    images, labels = synthetic_canvas(12, tuple(a.patch), dev, torch.Generator().manual_seed(0))
    nc = len(CHAOS_CLASSES)
    aug = Augment3DConfig(patch=tuple(a.patch), spacing=(2.5, 2.5, 7.7), fg_classes=(1, 4), p_organ=0.3,
                          organ_classes=(1, 4), contrast=(0.35, 1.5), p_contrast=0.3)
    loss_fn = segmentation_loss()
    amp = Amp("auto", dev)
    own_ops = {"upsample": srma_model._upsample, "proj": srma_model.SS2D.projections, "ln": srma_model._layer_norm,
               "dwconv": srma_model._dwconv_silu}

    def set_ops(names):
        """The model's ops of before for `names`, its own for the rest."""
        srma_model._upsample = scatter_upsample if "upsample" in names else own_ops["upsample"]
        srma_model.SS2D.projections = conv_projections if "proj" in names else own_ops["proj"]
        srma_model._layer_norm = torch_layer_norm if "ln" in names else own_ops["ln"]
        srma_model._dwconv_silu = torch_dwconv_silu if "dwconv" in names else own_ops["dwconv"]
        srma_model.PAD_DT_RANK = False if "pad" in names else None
        srma_model.X_PROJ_BMM = "xgrad" not in names

    @contextlib.contextmanager
    def reverted(names=None):
        set_ops(a.revert if names is None else names)
        try:
            yield
        finally:
            set_ops(())

    compile_ops = ("ln", "dwconv") if a.compile_ln == "torch" else ()   # what the compiled variant runs as before

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    def build(foreach_ema: bool, fused: bool):
        torch.manual_seed(0)
        model = SRMAMamba(SRMAConfig(dims=a.dims, out_chans=nc, class_names=tuple(CHAOS_CLASSES),
                                     refine_channels=a.refine)).to(dev)
        opt = adamw(list(model.parameters()), 5e-4, dev, fused=fused and cuda, weight_decay=0.05)
        return model, opt, (EMA if foreach_ema else PerTensorEMA)(model, 0.999, ramp=True)

    graphed = {}                      # variant -> GraphedStep (compare graphs, kernels)
    if a.compare == "scan":
        variants = {"serial scan (before)": build(True, True), "segmented scan": build(True, True)}
        scan_env = {"serial scan (before)": {"SSM_SEGMENTS": "1"}}
    elif a.compare == "kernels":
        if not a.kernel_env or not all("=" in kv and kv.startswith("SSM_") for kv in a.kernel_env):
            p.error("--compare kernels needs --kernel-env SSM_VAR=VALUE ...")
        cand = " ".join(a.kernel_env)
        variants = {"kernel defaults (before)": build(True, True), cand: build(True, True)}
        scan_env = {cand: dict(kv.split("=", 1) for kv in a.kernel_env)}
    elif a.compare == "graphs":
        variants = {"eager (before)": build(True, True), "CUDA graph": build(True, True)}
        scan_env = {}
    elif a.compare == "compile":
        comp = f"torch.compile ({a.compile_backend})"
        variants = {"not compiled (before)": build(True, True), comp: build(True, True)}
        scan_env = {}
    elif a.compare == "ops":
        before = f"{' + '.join(a.revert)} as before"
        variants = {before: build(True, True), "the model's own (after)": build(True, True)}
        scan_env = {}
    else:
        variants = {"per-tensor EMA, foreach AdamW (before)": build(False, False),
                    "multi-tensor EMA, foreach AdamW": build(True, False),
                    "multi-tensor EMA, fused AdamW": build(True, True)}
        scan_env = {}
    if a.compare == "compile":
        from training.loop import compile_around

        def compiled_loss(model):
            def loss_of(x, y):
                with amp.autocast(cache=not cuda):
                    outs = model(x)
                return deep_supervision_loss([o.float() for o in outs], y[:, None], loss_fn)
            return compile_around(loss_of, [(srma_model, "cross_selective_scan")], backend=a.compile_backend)
    if a.compare in ("graphs", "kernels", "compile", "ops"):
        for name, (model, _, _) in variants.items():
            on = name != "eager (before)"

            def loss_of(x, y, model=model, on=on):
                with amp.autocast(cache=not on):
                    outs = model(x)
                return deep_supervision_loss([o.float() for o in outs], y[:, None], loss_fn)
            if a.compare == "compile" and name == comp:
                loss_of = compiled_loss(model)
            graphed[name] = GraphedStep(model.parameters(), loss_of, enabled=on)
    env_keys = {k for e in scan_env.values() for k in e}

    def use(name):
        """The scan settings of `name`: ssm_kernels reads its SSM_* variables at each call (a graph keeps
        the kernels of its capture)."""
        for k in env_keys:
            os.environ.pop(k, None)
        os.environ.update(scan_env.get(name, {}))
        set_ops(a.revert if a.compare == "ops" and name == before else
                compile_ops if a.compare == "compile" and name == comp else ())

    def parts(model, opt, ema):
        idx = torch.randint(len(images), (a.batch_size,), generator=g, device=dev)
        with torch.no_grad():
            x, y = augment_batch(images[idx], labels[idx], nc, aug, g)
        yield "augmentation"
        model.train()
        step_of = next((s for n, s in graphed.items() if variants[n][0] is model), None)
        if step_of is not None:
            step_of(x, y)
            yield "forward + loss + backward"
            amp.update(opt, 1.0)
            yield "clip + AdamW"
            ema.update(model)
            yield "EMA update"
            return
        with amp.autocast():
            outs = model(x)
        loss = deep_supervision_loss([o.float() for o in outs], y[:, None], loss_fn)
        yield "forward + loss"
        amp.step(loss, opt, 1.0)
        yield "backward + clip + AdamW"
        ema.update(model)
        yield "EMA update"

    def step(v):
        for _ in parts(*v):
            pass

    check = None
    if a.compare in ("graphs", "kernels", "compile", "ops"):   # the same loss and gradients as the reference
        def check_loss(model, x, y, cache=True):
            with amp.autocast(cache=cache):
                outs = model(x)
            return deep_supervision_loss([o.float() for o in outs], y[:, None], loss_fn)
        def fp32_loss(model, x, y):   # the step without autocast: the reference for candidates that round otherwise
            return deep_supervision_loss([o.float() for o in model(x)], y[:, None], loss_fn)
        idx = torch.arange(a.batch_size, device=dev)
        with torch.no_grad():
            x, y = augment_batch(images[idx], labels[idx], nc, aug, g)
        if a.compare == "graphs":      # eager against replayed (graph_check.check_graphed_step)
            check = check_graphed_step(lambda: build(True, True)[0],
                                       lambda m, on, x, y: check_loss(m, x, y, cache=not on), (x, y))
        elif a.compare == "kernels":   # defaults against the candidate's settings (graph_check.check_kernel_env)
            check = check_kernel_env(lambda: build(True, True)[0], check_loss, (x, y), scan_env[cand],
                                     reference_loss_of=fp32_loss)
        elif a.compare == "compile":   # uncompiled against compiled, eager (graph_check.check_candidate_loss)
            check = check_candidate_loss(lambda: build(True, True)[0], check_loss,
                                         lambda m, x, y: compiled_loss(m)(x, y), (x, y), comp,
                                         context=lambda: reverted(compile_ops), reference_loss_of=fp32_loss)
        else:                          # the model's own ops against those of before, eager
            check = check_candidate_loss(lambda: build(True, True)[0], check_loss, check_loss, (x, y), before,
                                         context=reverted, reference_loss_of=fp32_loss)
    if check is not None and a.chunks == 0:
        print(json.dumps(check))
        return
    for name, v in variants.items():     # warm-up: Triton compile, cuDNN autotune, graph capture
        use(name)
        for _ in range(3):
            step(v)
    sync()
    whole = {k: [] for k in variants}
    for _ in range(a.chunks):
        for name, v in variants.items():
            use(name)
            sync()
            t0 = time.perf_counter()
            for _ in range(a.steps):
                step(v)
            sync()
            whole[name].append((time.perf_counter() - t0) / a.steps * 1e3)
    breakdown = {}
    for name, v in variants.items():
        use(name)
        rows = {}
        for _ in range(a.steps):
            sync()
            t = time.perf_counter()
            for part in parts(*v):
                sync()
                now = time.perf_counter()
                rows.setdefault(part, []).append((now - t) * 1e3)
                t = now
        breakdown[name] = {k: statistics.median(x) for k, x in rows.items()}
    peak = torch.cuda.max_memory_allocated(dev) / 2 ** 30 if cuda else None
    res = dict(device=torch.cuda.get_device_name(dev) if cuda else "cpu", torch=torch.__version__,
               compare=a.compare, dims=a.dims, refine=a.refine, batch=a.batch_size, patch=a.patch, steps_per_chunk=a.steps, chunks=a.chunks,
               step_ms={k: statistics.median(x) for k, x in whole.items()}, step_ms_chunks=whole,
               breakdown_ms=breakdown, peak_gib_both_models=peak, graph_check=check)
    names = list(variants)
    print(f"{res['device']}, batch {a.batch_size}, patch {tuple(a.patch)}, dims {a.dims}; medians in ms")
    print(f"| part | {' | '.join(names)} |")
    print("|---|" + "---|" * len(names))
    for part in breakdown[names[0]]:
        print(f"| {part} | " + " | ".join(f"{breakdown[n][part]:.1f}" for n in names) + " |")
    print("| **whole step, not synchronised inside** | " + " | ".join(f"**{res['step_ms'][n]:.1f}**" for n in names)
          + " |")
    b = res["step_ms"][names[0]]
    for n in names[1:]:
        print(f"{n}: steps/s {1e3 / b:.2f} -> {1e3 / res['step_ms'][n]:.2f} ({b / res['step_ms'][n]:.2f}x)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
