"""The parts of a training loop that both trainers share, written once: the learning-rate schedule
(linear warm-up, cosine, an optional flat tail), the clock that ends a schedule by step count or by a
wall-clock budget, mixed precision with gradient clipping, the forward + loss + backward of a step as one
CUDA graph, an EMA of the weights, atomic checkpoints, and the torchrun / DistributedDataParallel set-up.

Each trainer (training/srma/train.py, training/ultrascan/train.py) keeps only what is its own: data,
augmentation, losses, what it logs and what it writes at the end. Development code: not shipped.
"""
from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class WarmupCosine:
    """Learning rate at a point of the schedule, `progress` in [0, 1]: linear from `start` to `peak` over
    the first `warmup` of it, cosine from `peak` down to `floor` until `end`, then `floor` (a cool-down)."""

    peak: float
    warmup: float
    end: float = 1.0
    start: float = 0.0
    floor: float = 0.0

    def __call__(self, progress: float) -> float:
        if progress < self.warmup:
            return self.start + (self.peak - self.start) * progress / self.warmup
        t = min(1.0, (progress - self.warmup) / max(1e-9, self.end - self.warmup))
        return self.floor + 0.5 * (self.peak - self.floor) * (1 + math.cos(math.pi * t))


class Clock:
    """Where a run is in its schedule: step / total steps, or the share of a wall-clock budget already
    spent when that is further along (the schedule then ends with the budget). Time spent before a
    resume counts (`elapsed_before`)."""

    def __init__(self, total_steps: int, budget_s: float = 0.0, elapsed_before: float = 0.0):
        self.total, self.budget, self.before = int(total_steps), float(budget_s), float(elapsed_before)
        self.t0 = time.time()

    def elapsed(self) -> float:
        return self.before + time.time() - self.t0

    def progress(self, step: int) -> float:
        p = step / self.total
        return max(p, self.elapsed() / self.budget) if self.budget else p

    def by_time(self, step: int) -> bool:
        """True when the budget, not the step count, ended the schedule."""
        return step < self.total and self.progress(step) >= 1


class Amp:
    """Mixed precision for one device: `amp` is auto (bf16 on a GPU, off elsewhere), bf16, fp16 (with a
    gradient scaler) or off. `step` does the backward pass, gradient clipping and the optimiser step."""

    def __init__(self, amp: str, device: torch.device):
        name = {"auto": "bf16" if device.type == "cuda" else "off"}.get(amp, amp)
        if name not in ("bf16", "fp16", "off"):
            raise ValueError(f"amp must be auto, bf16, fp16 or off, not {amp!r}")
        self.name, self.device = name, device
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[name]
        self.scaler = torch.amp.GradScaler(device.type, enabled=name == "fp16")

    def autocast(self, cache: bool = True):
        """`cache=False` for code captured in a CUDA graph (no weight cast cached across the capture)."""
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None,
                              cache_enabled=cache)

    def step(self, loss, opt, clip: float):
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        return self.update(opt, clip)

    def update(self, opt, clip: float):
        """Clip the gradients already in p.grad and step the optimiser (the half of `step` after the
        backward; GraphedStep leaves its gradients there)."""
        self.scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], clip)
        self.scaler.step(opt)
        self.scaler.update()
        return norm


class GraphedStep:
    """The forward, loss and backward of a training step, captured once as a CUDA graph and replayed at
    every step: `loss_of(*inputs)` (forward under autocast(cache=False), loss) and its backward are a few
    hundred small kernels each launched from Python (SRMA-Mamba's step is launch-bound at batch 2 as its
    inference window was); replayed, they are one launch. Call it with tensors of the same shapes every
    step; it leaves the gradients in p.grad (the graph's own tensors, overwritten by each replay: never
    set them to None while a graph is held, so step with Amp.update, not Amp.step) and returns the loss.

    The first CUDA call warms up on a side stream (`warmup` forward + backward passes whose gradients are
    discarded: lazy initialisation, Triton compilation, cuDNN autotuning), then captures. A capture that
    fails (an op that syncs with the host, out of memory) gives graphs up for this object (`failed` says
    why) and the step runs eagerly, with the same arithmetic; so does every call on the CPU or with
    `enabled=False`. Random ops (drop-path) stay random from replay to replay (PyTorch's graph-safe
    generator). Not for gradient scaling (fp16) or DistributedDataParallel."""

    def __init__(self, params, loss_of, warmup: int = 3, enabled: bool = True):
        self.params = [p for p in params if p.requires_grad]
        self.loss_of, self.warmup = loss_of, int(warmup)
        self.graph = self.static_in = self.static_loss = None
        self.failed = None if enabled else "disabled"

    @property
    def active(self) -> bool:
        return self.graph is not None

    def _zero(self):
        for p in self.params:
            p.grad = None

    def _capture(self, inputs):
        dev = inputs[0].device
        try:
            self.static_in = [x.clone() for x in inputs]
            side = torch.cuda.Stream(dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    self._zero()
                    self.loss_of(*self.static_in).backward()
            torch.cuda.current_stream(dev).wait_stream(side)
            self._zero()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                loss = self.loss_of(*self.static_in)
                loss.backward()
            self.graph, self.static_loss = graph, loss.detach()
        except Exception as e:  # noqa: BLE001 - any capture failure means: run eagerly
            self.failed = f"{type(e).__name__}: {e}"
            self.graph = self.static_in = self.static_loss = None
            torch.cuda.synchronize(dev)

    def __call__(self, *inputs) -> torch.Tensor:
        if self.graph is None and self.failed is None and inputs[0].device.type == "cuda":
            self._capture(inputs)
        if self.graph is not None:
            for s, x in zip(self.static_in, inputs, strict=True):
                s.copy_(x)
            self.graph.replay()
            return self.static_loss.clone()
        self._zero()
        loss = self.loss_of(*inputs)
        loss.backward()
        return loss.detach()


class EMA:
    """Exponential moving average of a model's weights and buffers, held as a frozen copy of the model
    (`.module`, ready to evaluate or export). `ramp=True` ramps the decay up as min(decay, (1+n)/(10+n))
    over the first updates; `ramp=False` starts from a copy of the model at the first update and uses
    `decay` from the second (torch's AveragedModel with get_ema_multi_avg_fn). Integer buffers are copied."""

    def __init__(self, model: torch.nn.Module, decay: float, ramp: bool = False):
        self.decay, self.ramp, self.n = float(decay), bool(ramp), 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self._pairs = None                  # (model id, float shadows, float sources, other shadows, others)

    def _decay(self) -> float:
        if self.ramp:
            return min(self.decay, (1 + self.n) / (10 + self.n))
        return 0.0 if self.n == 1 else self.decay

    def _tensor_lists(self, model):
        """The shadow and model tensors paired once per model (state_dict() builds a dict of several
        hundred entries: once, not every step). Floating tensors of one dtype and device on both sides go
        to the multi-tensor lerp; the rest (integer buffers, a mismatch) are handled one by one."""
        if self._pairs is None or self._pairs[0] != id(model):
            ef, mf, eo, mo = [], [], [], []
            for e, m in zip(self.module.state_dict().values(), model.state_dict().values(), strict=True):
                same = e.dtype.is_floating_point and e.dtype == m.dtype and e.device == m.device
                (ef if same else eo).append(e)
                (mf if same else mo).append(m.detach())
            self._pairs = (id(model), ef, mf, eo, mo)
        return self._pairs[1:]

    @torch.no_grad()
    def update(self, model: torch.nn.Module):
        """One EMA step: one multi-tensor lerp over the floating tensors (torch._foreach_lerp_, as
        torch.optim.swa_utils does), a handful of kernel launches instead of one per tensor; the same
        arithmetic as a per-tensor lerp (tested)."""
        self.n += 1
        d = self._decay()
        ef, mf, eo, mo = self._tensor_lists(model)
        if ef:
            if d > 0:
                torch._foreach_lerp_(ef, mf, 1 - d)
            else:
                torch._foreach_copy_(ef, mf)
        for e, m in zip(eo, mo):
            if e.dtype.is_floating_point and d > 0:
                e.lerp_(m.to(e.dtype), 1 - d)
            else:
                e.copy_(m)

    def state_dict(self):
        return {"n": self.n, "shadow": self.module.state_dict()}

    def load_state_dict(self, s):
        self.n = int(s["n"])
        self.module.load_state_dict(s["shadow"])


class PerTensorEMA(EMA):
    """The reference beside EMA.update (as mamba_ssm keeps its reference beside the kernel): one lerp per
    tensor of a state_dict() built every step, the update before the multi-tensor lerp. For the test that
    holds them equal and the benchmark's "before" row; the trainers use EMA."""

    @torch.no_grad()
    def update(self, model: torch.nn.Module):
        self.n += 1
        d = self._decay()
        for e, m in zip(self.module.state_dict().values(), model.state_dict().values(), strict=True):
            if e.dtype.is_floating_point and d > 0:
                e.lerp_(m.detach().to(e.dtype), 1 - d)
            else:
                e.copy_(m)


def adamw(groups, lr: float, device: torch.device, fused: bool | None = None, **kw) -> torch.optim.AdamW:
    """AdamW with torch's fused implementation on a GPU (`fused=None`: on CUDA only; elsewhere torch's
    default, the multi-tensor one). The same update rule as the unfused one to float32 rounding (tested
    on the CPU, where the fused kernel also exists)."""
    if fused is None:
        fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=lr, fused=bool(fused), **kw)


def compile_around(fn, opaque=(), backend: str = "inductor"):
    """fn compiled by torch.compile (static shapes), the functions of `opaque` ((module, attribute name)
    pairs) left to run as they are, between the compiled graphs: the scan's launcher picks Triton kernels
    in Python (environment, shapes), which dynamo cannot trace. The module attributes are replaced by their
    compiler-disabled wrappers for the whole process (an eager caller gets the same results through them).
    For the training step's forward + loss, whose layer norms and elementwise ops inductor can fuse
    (issue 13, item 5); backend "aot_eager" traces without generating code (a CPU check of the plumbing)."""
    for mod, name in opaque:
        f = getattr(mod, name)
        if not getattr(f, "_compile_opaque", False):
            wrapped = torch.compiler.disable(f)
            wrapped._compile_opaque = True
            setattr(mod, name, wrapped)
    import torch._dynamo as dynamo
    # the graphs between scan calls are the SS2D blocks' code at each stage's shapes: one compiled version
    # per stage and direction of the network, more than dynamo's default limit of 8 per code object
    dynamo.config.cache_size_limit = max(dynamo.config.cache_size_limit, 64)
    return torch.compile(fn, dynamic=False, backend=backend)


def save_checkpoint(path: Path, state: dict):
    """Written beside, then renamed: a run killed mid-save leaves the previous checkpoint whole."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, device="cpu") -> dict:
    return torch.load(path, map_location=device, weights_only=True)


@dataclass
class Distributed:
    """One process of a torchrun job (or the only process): its rank, the world size and its device."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    active: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if not self.active:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def close(self):
        if self.active:
            import torch.distributed as dist
            dist.destroy_process_group()


def setup_distributed(device_arg: str = "auto") -> Distributed:
    """Under torchrun (LOCAL_RANK set): NCCL with one GPU per process, or gloo on CPUs
    (`--device cpu`, or no GPU); NVLink multicast stays off. Otherwise the one device asked for."""
    from slicer_ai_common.devices import resolve_device
    if "LOCAL_RANK" not in os.environ:
        return Distributed(device=resolve_device(device_arg))
    import torch.distributed as dist
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    local = int(os.environ["LOCAL_RANK"])
    gpu = device_arg != "cpu" and torch.cuda.is_available()
    dist.init_process_group("nccl" if gpu else "gloo")
    if gpu:
        torch.cuda.set_device(local)
    device = torch.device("cuda", local) if gpu else torch.device("cpu")
    return Distributed(dist.get_rank(), dist.get_world_size(), device, True)
