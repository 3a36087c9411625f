"""Does a training step replayed as a CUDA graph compute what the eager step computes? Shared by
bench_train_step.py (SRMA-Mamba) and bench_ultrascan.py (UltraScanNet). And does a step with other scan
kernel settings (`check_kernel_env`, e.g. SSM_CROSS_LAYOUT=transpose), or the step compiled by torch.compile
(`check_candidate_loss`), compute what the defaults compute?

Two copies of one model with drop-path and dropout off (for the check only: a captured graph keeps whatever Python
branches were taken at capture), one batch: the loss and gradients of the eager step twice (their
difference is eager's own run-to-run noise: bf16 autocast, float32 atomics in the scan) and of the graph's
replay. The graph passes when its difference from eager is of the size of eager's from itself."""
from __future__ import annotations

import contextlib
import math
import os

import torch

from training.loop import GraphedStep


def no_dropout(model):
    """Drop-path and dropout off (their random masks would differ between the passes compared)."""
    for mod in model.modules():
        if "DropPath" in type(mod).__name__ or isinstance(mod, torch.nn.modules.dropout._DropoutNd):
            for attr in ("p", "drop_prob"):
                if hasattr(mod, attr):
                    setattr(mod, attr, 0.0)
    return model.train()


def grad_difference(ga, gb):
    """Relative L2 difference over all gradients, and the worst per tensor (tensors whose norm is at
    least 1e-3 of the largest: the others are rounding noise around a zero gradient)."""
    na = [float(a.norm()) for a in ga]
    tot = math.sqrt(sum(float((a - b).norm()) ** 2 for a, b in zip(ga, gb))) / math.sqrt(sum(n * n for n in na))
    big = max(na)
    worst = max(float((a - b).norm()) / n for a, b, n in zip(ga, gb, na) if n >= 1e-3 * big)
    return tot, worst


def check_graphed_step(make_model, loss_of, inputs):
    """make_model() -> a fresh model (same weights each call not needed: the second is loaded from the
    first); loss_of(model, graphed, *inputs) -> scalar loss. Returns a dict of the measured differences."""
    m0 = no_dropout(make_model())
    m1 = no_dropout(make_model())
    m1.load_state_dict(m0.state_dict())
    s0 = GraphedStep(m0.parameters(), lambda *x: loss_of(m0, False, *x), enabled=False)
    s1 = GraphedStep(m1.parameters(), lambda *x: loss_of(m1, True, *x))
    state = {k: v.clone() for k, v in m1.state_dict().items()}
    l0 = float(s0(*inputs))
    g0 = [p.grad.float().clone() for p in m0.parameters() if p.grad is not None]
    l0b = float(s0(*inputs))
    s1(*[x.clone() for x in inputs])            # warms up and captures (updates batch-norm statistics)
    m1.load_state_dict(state)
    l1 = float(s1(*inputs))                     # a replay: the graph's own arithmetic
    ge = [p.grad.float() for p in m0.parameters() if p.grad is not None]
    gg = [p.grad.float() for p in m1.parameters() if p.grad is not None]
    noise, graph = grad_difference(g0, ge), grad_difference(g0, gg)
    out = dict(loss_eager=l0, loss_eager_again=l0b, loss_graph=l1,
               rel_l2_grad_eager_vs_eager=noise[0], worst_tensor_eager_vs_eager=noise[1],
               rel_l2_grad_eager_vs_graph=graph[0], worst_tensor_eager_vs_graph=graph[1],
               graph_active=s1.active, capture_failed=s1.failed)
    print(f"check: loss eager {l0:.6f} / again {l0b:.6f}, graph {l1:.6f}; gradients, relative L2 over all "
          f"(worst tensor): eager vs eager {noise[0]:.2e} ({noise[1]:.2e}), eager vs graph {graph[0]:.2e} "
          f"({graph[1]:.2e}); graph {'captured' if s1.active else 'NOT captured: ' + str(s1.failed)}", flush=True)
    return out


def check_candidate_loss(make_model, loss_of, candidate_loss_of, inputs, label: str, context=None,
                         reference_loss_of=None) -> dict:
    """Does another way of computing the step (other scan settings, the step compiled by torch.compile)
    give the defaults' loss and gradients? One eager step of loss_of twice (the defaults' own noise: float32
    atomics in the scan, bf16 autocast) and one of candidate_loss_of, run inside `context()` if given
    (forward and backward), on two copies of one model (drop-path and dropout off). The candidate passes
    when its difference from the defaults is of the size of that noise. loss_of(model, *inputs) -> loss.
    reference_loss_of (e.g. the step without autocast): also the distance of each from its gradients, for a
    candidate that rounds differently (bf16 where the defaults keep fp32): it passes when it is no further
    from the reference than the defaults are."""
    m0 = no_dropout(make_model())
    m1 = no_dropout(make_model())
    m1.load_state_dict(m0.state_dict())

    def grads(model, fn):
        model.zero_grad(set_to_none=True)
        loss = fn(model, *inputs)
        loss.backward()
        return float(loss), [p.grad.float().clone() for p in model.parameters() if p.grad is not None]

    l0, g0 = grads(m0, loss_of)
    l0b, g0b = grads(m0, loss_of)
    with (context() if context else contextlib.nullcontext()):
        l1, g1 = grads(m1, candidate_loss_of)
    noise, cand = grad_difference(g0, g0b), grad_difference(g0, g1)
    out = dict(candidate=label, loss_defaults=l0, loss_defaults_again=l0b, loss_candidate=l1,
               rel_l2_grad_defaults_vs_defaults=noise[0], worst_tensor_defaults_vs_defaults=noise[1],
               rel_l2_grad_defaults_vs_candidate=cand[0], worst_tensor_defaults_vs_candidate=cand[1])
    ref = ""
    if reference_loss_of is not None:
        lr, gr = grads(m0, reference_loss_of)
        d_ref, c_ref = grad_difference(gr, g0), grad_difference(gr, g1)
        out.update(loss_reference=lr, rel_l2_grad_reference_vs_defaults=d_ref[0],
                   rel_l2_grad_reference_vs_candidate=c_ref[0])
        ref = f"; the reference ({lr:.6f}) vs defaults {d_ref[0]:.2e}, vs candidate {c_ref[0]:.2e}"
    print(f"check {label}: loss defaults {l0:.6f} / again {l0b:.6f}, candidate {l1:.6f}; gradients, relative L2 "
          f"over all (worst tensor): defaults vs defaults {noise[0]:.2e} ({noise[1]:.2e}), defaults vs candidate "
          f"{cand[0]:.2e} ({cand[1]:.2e}){ref}", flush=True)
    return out


@contextlib.contextmanager
def environ(env: dict, unset=()):
    """os.environ with `env` set and the names in `unset` removed, restored afterwards."""
    saved = {k: os.environ.get(k) for k in (*env, *unset)}
    for k in unset:
        os.environ.pop(k, None)
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def check_kernel_env(make_model, loss_of, inputs, env: dict, reference_loss_of=None) -> dict:
    """check_candidate_loss for ssm_kernels settings `env` ({"SSM_CROSS_LAYOUT": "transpose"}, ...): the
    defaults with those variables unset, the candidate with them set (forward and backward). The caller's
    environment is restored afterwards. reference_loss_of: as in check_candidate_loss (the step without
    autocast: which of the two is nearer to it, where their bf16 steps differ by more than the defaults' own
    noise)."""
    with environ({}, unset=env):
        out = check_candidate_loss(make_model, loss_of, loss_of, inputs,
                                   " ".join(f"{k}={v}" for k, v in env.items()), lambda: environ(env),
                                   reference_loss_of=reference_loss_of)
    return dict(env=dict(env), **out)
