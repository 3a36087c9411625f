"""training/loop.py, the loop parts both trainers share: each against the code it replaced (float64
references of the two old schedules, torch's AveragedModel EMA, the old ramped EMA), the time budget, the
atomic checkpoint, and both trainers running through them (SRMA also under torchrun on two CPU processes)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import need

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CHAOS = SHARED / "data" / "chaos-mr-t2"
BUSI = SHARED / "data" / "busi"


def _old_ultrascan_lr(step, spe, lr, warmup_lr, min_lr, warmup_epochs, epochs):
    e = step / spe
    if e < warmup_epochs:
        return warmup_lr + (lr - warmup_lr) * e / warmup_epochs
    t = min(1.0, (e - warmup_epochs) / max(1e-9, epochs - warmup_epochs))
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * t))


def _old_srma_factor(progress, warmup):
    if progress < warmup:
        return (progress + 1e-3) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / max(1e-9, 1 - warmup))))


def test_schedule_is_the_ultrascan_one():
    from training.loop import WarmupCosine
    spe, epochs, cool, warm, lr, wlr, mlr = 15, 150, 10, 20, 6.25e-5, 6.25e-8, 6.25e-7
    total = epochs + cool
    s = WarmupCosine(peak=lr, warmup=warm / total, end=epochs / total, start=wlr, floor=mlr)
    for step in range(0, total * spe, 7):
        ref = _old_ultrascan_lr(step, spe, lr, wlr, mlr, warm, epochs)
        assert s(step / (total * spe)) == pytest.approx(ref, rel=1e-12, abs=1e-18), step
    assert s(0.0) == wlr and s(1.0) == pytest.approx(mlr) and s(0.99) == pytest.approx(mlr)   # cool-down flat


def test_schedule_is_the_srma_one_but_ends_its_warm_up_on_the_peak():
    from training.loop import WarmupCosine
    lr, w = 5e-4, 0.05
    s = WarmupCosine(peak=lr, warmup=w, start=lr * 1e-3 / w)
    assert s(0.0) == pytest.approx(lr * _old_srma_factor(0.0, w), rel=1e-12)
    for p in np.linspace(w, 1, 97):
        assert s(p) == pytest.approx(lr * _old_srma_factor(p, w), rel=1e-12, abs=1e-18)
    for p in np.linspace(0, w, 50, endpoint=False):       # the old warm-up overshot by up to 2 %
        assert abs(s(p) - lr * _old_srma_factor(p, w)) <= 0.0201 * lr
    assert s(w - 1e-12) == pytest.approx(lr, rel=1e-9) and s(1.0) == 0.0


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(144, 2))


def _train_steps(models_and_emas, n=6):
    """The same updates applied to every (model, ema update fn) pair."""
    g = torch.Generator().manual_seed(1)
    for _ in range(n):
        x = torch.randn(4, 3, 8, 8, generator=g)
        for m, update in models_and_emas:
            m.train()
            opt = torch.optim.SGD(m.parameters(), lr=0.1)
            m(x).square().mean().backward()
            opt.step()
            opt.zero_grad()
            update(m)


def test_ema_without_ramp_is_torch_averaged_model():
    from training.loop import EMA
    a, b = _net(), _net()
    b.load_state_dict(a.state_dict())
    ours = EMA(a, 0.9)
    ref = torch.optim.swa_utils.AveragedModel(b, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.9),
                                              use_buffers=True)
    _train_steps([(a, ours.update), (b, ref.update_parameters)])
    for (k, x), y in zip(ours.module.state_dict().items(), ref.module.state_dict().values()):
        if x.dtype.is_floating_point:
            assert torch.allclose(x, y, rtol=1e-6, atol=1e-7), k
    assert not all(torch.equal(x, y) for x, y in zip(ours.module.parameters(), a.parameters()))   # it averages


def test_ema_with_ramp_against_float64():
    from training.loop import EMA
    m = _net()
    ema = EMA(m, 0.999, ramp=True)
    ref = {k: v.double().clone() for k, v in m.state_dict().items()}
    n = [0]

    def both(model):
        ema.update(model)
        n[0] += 1
        d = min(0.999, (1 + n[0]) / (10 + n[0]))
        for k, v in model.state_dict().items():
            ref[k] = ref[k] * d + v.double() * (1 - d) if v.dtype.is_floating_point else v.double()
    _train_steps([(m, both)], n=8)
    for k, v in ema.module.state_dict().items():
        assert torch.allclose(v.double(), ref[k], rtol=1e-5, atol=1e-6), k
    assert not any(p.requires_grad for p in ema.module.parameters())
    state = ema.state_dict()
    other = EMA(_net(), 0.999, ramp=True)
    other.load_state_dict(state)
    assert other.n == 8 and all(torch.equal(x, y) for x, y in zip(other.module.state_dict().values(),
                                                                   ema.module.state_dict().values()))


def test_ema_multi_tensor_lerp_is_the_per_tensor_loop():
    """The default (one torch._foreach_lerp_ over the cached tensor lists) against the per-tensor loop it
    replaced, bit for bit, with the ramp, an integer buffer (BatchNorm's counter) and the model's weights
    replaced in place in the middle (load_state_dict: the cached lists must still see them)."""
    from training.loop import EMA, PerTensorEMA
    a, b = _net(), _net()
    fast, slow = EMA(a, 0.99, ramp=True), PerTensorEMA(b, 0.99, ramp=True)
    _train_steps([(a, fast.update), (b, slow.update)], n=4)
    other = _net()
    with torch.no_grad():
        for p_ in other.parameters():
            p_.mul_(0.5)
    a.load_state_dict(other.state_dict())
    b.load_state_dict(other.state_dict())
    _train_steps([(a, fast.update), (b, slow.update)], n=4)
    for (k, x), y in zip(fast.module.state_dict().items(), slow.module.state_dict().values()):
        assert torch.equal(x, y), k
    assert int(fast.module[1].num_batches_tracked) == int(a[1].num_batches_tracked) == 4   # copied, reset by the load
    assert not torch.equal(fast.module[0].weight, a[0].weight)          # it averages rather than copies


def test_adamw_fused_is_the_unfused_update():
    """The trainers' optimiser (fused on a GPU) against torch's default AdamW, on the CPU where the fused
    kernel also runs: the same weights after a few steps with two parameter groups, to float32 rounding."""
    from training.loop import adamw

    def net():          # no BatchNorm: the conv bias before it has a zero gradient, which Adam turns into noise
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(144, 2))
    a, b = net(), net()
    groups = lambda m: [{"params": list(m[0].parameters()), "weight_decay": 0.05},  # noqa: E731
                        {"params": list(m[3].parameters()), "weight_decay": 0.0}]
    oa = adamw(groups(a), 1e-2, torch.device("cpu"), fused=True)
    ob = torch.optim.AdamW(groups(b), lr=1e-2)
    assert oa.defaults["fused"] and not ob.defaults.get("fused")
    assert not adamw(groups(net()), 1e-2, torch.device("cpu")).defaults["fused"]     # fused only on CUDA by default
    g = torch.Generator().manual_seed(2)
    for _ in range(5):
        x = torch.randn(4, 3, 8, 8, generator=g)
        for m, o in ((a, oa), (b, ob)):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(x, y, rtol=1e-5, atol=1e-6), k
    assert not torch.equal(a[0].weight, net()[0].weight)                # it stepped


def test_clock_ends_the_schedule_by_steps_or_by_budget():
    from training.loop import Clock
    c = Clock(100)
    assert c.progress(50) == 0.5 and not c.by_time(50)
    c = Clock(100, budget_s=10.0, elapsed_before=9.0)          # 90 % of the budget already spent
    assert c.progress(10) >= 0.9 and not c.by_time(10)
    c = Clock(100, budget_s=1.0, elapsed_before=5.0)
    assert c.progress(3) >= 1 and c.by_time(3) and not c.by_time(100)


def test_amp_step_clips_and_steps():
    from training.loop import Amp
    with pytest.raises(ValueError, match="amp must be"):
        Amp("fp8", torch.device("cpu"))
    assert Amp("auto", torch.device("cpu")).dtype is None and Amp("auto", torch.device("cuda")).dtype == torch.bfloat16
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    opt = torch.optim.SGD([w], lr=1.0)
    norm = Amp("off", torch.device("cpu")).step((w * 10).sum(), opt, clip=1.0)   # grad (10, 10), norm 14.14
    assert float(norm) == pytest.approx(math.sqrt(200))
    assert torch.allclose(w.detach(), torch.tensor([3.0, 4.0]) - 10 / math.sqrt(200))


def test_graphed_step_off_the_gpu_is_the_plain_step_and_leaves_gradients_for_update():
    """Off the GPU (and whenever capture fails) GraphedStep is forward + loss + backward, eager: the same
    loss and gradients as autograd on the same module, fresh each call (not accumulated across calls), so
    that Amp.update then clips and steps exactly as Amp.step would. The CUDA path is checked on the GPU
    by benchmarks/bench_train_step.py --compare graphs (same loss and gradients, recorded)."""
    from training.loop import Amp, GraphedStep
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.GELU(), torch.nn.Linear(5, 3)).double()
    twin = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.GELU(), torch.nn.Linear(5, 3)).double()
    twin.load_state_dict(net.state_dict())
    x, y = torch.randn(4, 6, dtype=torch.float64), torch.tensor([0, 2, 1, 2])
    step = GraphedStep(net.parameters(), lambda a, b: torch.nn.functional.cross_entropy(net(a), b))
    assert step(x, y) is not None and step(x, y).dtype == torch.float64      # twice: no accumulation
    assert not step.active and step.failed is None          # CPU tensors: never captured, not a failure
    ref = torch.nn.functional.cross_entropy(twin(x), y)
    ref.backward()
    for p, q in zip(net.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)
    assert float(step(x, y)) == float(ref)
    amp = Amp("off", torch.device("cpu"))
    o1, o2 = torch.optim.SGD(net.parameters(), lr=0.5), torch.optim.SGD(twin.parameters(), lr=0.5)
    n1 = amp.update(o1, clip=0.01)
    n2 = amp.step(torch.nn.functional.cross_entropy(twin(x), y), o2, clip=0.01)
    assert float(n1) == float(n2) > 0.01                     # the clip acted, on the same norm
    for p, q in zip(net.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)
    assert GraphedStep(net.parameters(), lambda a: a.sum(), enabled=False).failed == "disabled"


def test_kernel_env_check_sees_what_a_setting_changes_and_restores_the_environment(monkeypatch):
    """benchmarks/graph_check.check_kernel_env, which bench_train_step.py --compare kernels runs before
    timing a scan setting on the GPU: on a toy model whose forward reads a setting from the environment (as
    ssm_kernels reads SSM_*), a setting equal to the default gives the defaults' gradients exactly (CPU,
    deterministic), a setting that changes the arithmetic by 1 % is seen at that size, and the caller's
    environment comes back as it was."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from graph_check import check_kernel_env

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.lin(x) * float(os.environ.get("SSM_TOY_GAIN", "1"))

    torch.manual_seed(0)
    x = torch.randn(5, 4)

    def loss_of(model, x):
        return (model(x) ** 2).mean()
    monkeypatch.setenv("SSM_TOY_GAIN", "7")
    same = check_kernel_env(Toy, loss_of, (x,), {"SSM_TOY_GAIN": "1"})
    assert same["rel_l2_grad_defaults_vs_defaults"] == 0 and same["rel_l2_grad_defaults_vs_candidate"] == 0
    assert same["loss_candidate"] == same["loss_defaults"]
    moved = check_kernel_env(Toy, loss_of, (x,), {"SSM_TOY_GAIN": "1.01"})
    assert moved["rel_l2_grad_defaults_vs_defaults"] == 0
    assert moved["rel_l2_grad_defaults_vs_candidate"] == pytest.approx(1.01 ** 2 - 1, rel=1e-3)
    assert os.environ["SSM_TOY_GAIN"] == "7"


def test_checkpoint_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    from training import loop
    p = tmp_path / "last.pt"
    loop.save_checkpoint(p, {"step": 1, "w": torch.ones(3)})
    assert loop.load_checkpoint(p)["step"] == 1 and not (tmp_path / "last.pt.tmp").exists()

    def broken(obj, f, *a, **k):
        Path(f).write_bytes(b"half")
        raise OSError("disk full")
    monkeypatch.setattr(loop.torch, "save", broken)
    with pytest.raises(OSError):
        loop.save_checkpoint(p, {"step": 2})
    assert loop.load_checkpoint(p)["step"] == 1


def test_ultrascan_time_budget_ends_the_schedule(tmp_path):
    """A budget far shorter than the schedule ends it: fewer steps than asked, stopped_by_time recorded."""
    need(BUSI)
    from training.ultrascan.train import main
    s = main(["--data", str(BUSI), "--fold", "all", "--limit", "16", "--epochs", "50", "--warmup-epochs", "1",
              "--cooldown-epochs", "0", "--batch-size", "8", "--img-size", "32", "--load-size", "32", "--model",
              "resnet50", "--device", "cpu", "--time-budget", "3", "--out", str(tmp_path)])
    assert s["stopped_by_time"] and 0 < s["steps_run"] < 100 and s["epochs_run"] < 50
    assert (tmp_path / "last.pt").exists() and (tmp_path / "final.safetensors").exists()


def test_srma_trains_under_torchrun_on_two_cpu_processes(tmp_path):
    """The shared DistributedDataParallel set-up (gloo on CPUs): two ranks train, rank 0 writes."""
    need(CHAOS)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(ROOT), str(ROOT / "SRMASegmenter"), str(ROOT / "SlicerAICommon"), str(ROOT / "kernels"),
         os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "training.srma.train", "--data", str(CHAOS), "--fold", "all", "--hold-out", "case_20",
           "--out", str(tmp_path), "--steps", "4", "--batch-size", "1", "--patch", "32", "32", "16",
           "--spacing", "10", "10", "15.4", "--dims", "8", "--aug", "none", "--log-every", "2",
           "--device", "cpu", "--no-eval"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["steps_done"] == 4 and r.stdout.count("step=4 ") == 1       # rank 0 alone logs
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 4


def test_compare_cv_pairs_cases_and_sign_test(tmp_path, capsys):
    """The CV comparison reads both CVs' per-fold CSVs, pairs cases by id (not by row order) and gives the
    exact two-sided sign test (13 of 15: p = 2 * (1 + 15 + 105) / 2**15)."""
    import csv
    import math
    from training.srma.compare_cv import main, sign_test
    assert math.isclose(sign_test(13, 15), 2 * (1 + 15 + 105) / 2 ** 15)
    assert sign_test(5, 10) == 1.0
    for name, shift in (("a", 0.0), ("b", 0.01)):
        d = tmp_path / name
        d.mkdir()
        for f in range(2):
            ids = [f"case_{f}{j}" for j in range(3)]
            rows = [dict(id=i, dice=0.9 + 0.01 * j + (shift if i != "case_00" else -5 * shift), hd95_mm=10, assd_mm=2,
                         precision=0.9, recall=0.9, spleen_in_liver_ml=0.0, device="cpu") for j, i in enumerate(ids)]
            if name == "b":
                rows = rows[::-1]                                  # order must not matter
            with open(d / f"fold{f}_metrics.csv", "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
    diff = main([str(tmp_path / "a"), str(tmp_path / "b"), "--folds", "2", "--without", "case_00"])
    assert math.isclose(diff["case_00"], -0.05) and all(math.isclose(diff[i], 0.01) for i in diff if i != "case_00")
    assert "better on 5 of 6" in capsys.readouterr().out


def test_organ_confusion_table():
    """Reference x prediction volumes in mL, with organs painted over the liver in CHAOS label order."""
    import numpy as np
    from training.srma.organ_confusion import confusion_ml, predicted_labels
    ref = np.array([[0, 1, 1, 4, 4, 2]])
    pred = predicted_labels(np.array([[0, 1, 1, 1, 0, 0]]), {"spleen": np.array([[0, 0, 0, 0, 1, 0]]),
                                                              "right_kidney": np.zeros((1, 6))}, ref.shape)
    assert pred.tolist() == [[0, 1, 1, 1, 4, 0]]
    t = confusion_ml(ref, pred, 0.5)
    assert t.shape == (5, 5) and t[1, 1] == 1.0 and t[4, 1] == 0.5 and t[4, 4] == 0.5 and t[2, 0] == 0.5
    assert t.sum() == 3.0


def test_compile_around_keeps_the_opaque_call_and_the_gradients(monkeypatch):
    """training.loop.compile_around: the step compiled by torch.compile (here dynamo's eager backend, which
    traces without generating code: this CPU's inductor cannot build SRMA-Mamba, and aot_eager imports
    inductor modules that an ASCII locale cannot read, as a clean-clone run showed) gives eager's loss and
    gradients, the listed function stays a call of its own (compiler-disabled, wrapped once however often
    it is listed), and graph_check.check_candidate_loss, which bench_train_step.py --compare compile runs
    before timing on the GPU, sees a 1 % change of the loss."""
    import types
    from training.loop import compile_around
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from graph_check import check_candidate_loss
    calls = []

    def scan(t):                       # stands for ssm_kernels.cross_selective_scan: Python dynamo must not trace
        calls.append(tuple(t.shape))
        return torch.cumsum(t, dim=-1)
    fake = types.ModuleType("fake_model")
    fake.scan = scan
    monkeypatch.setitem(sys.modules, "fake_model", fake)

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(6, 6), torch.nn.Linear(6, 3)

        def forward(self, x):
            return self.b(torch.nn.functional.layer_norm(fake.scan(self.a(x)).relu(), (6,)))

    def loss_of(model, x):
        return (model(x) ** 2).mean()
    torch.manual_seed(0)
    x = torch.randn(5, 6)
    comp = {}

    def compiled(model, x):
        if model not in comp:
            comp[model] = compile_around(lambda t: loss_of(model, t), [(fake, "scan")], backend="eager")
        return comp[model](x)
    out = check_candidate_loss(Toy, loss_of, compiled, (x,), "compiled")
    assert out["rel_l2_grad_defaults_vs_candidate"] < 1e-6 and abs(out["loss_candidate"] - out["loss_defaults"]) < 1e-6
    assert getattr(fake.scan, "_compile_opaque", False) and calls     # wrapped, and still called
    wrapped = fake.scan
    compile_around(lambda t: t, [(fake, "scan")], backend="eager")
    assert fake.scan is wrapped                                       # not wrapped twice
    moved = check_candidate_loss(Toy, loss_of, lambda m, t: 1.01 * loss_of(m, t), (x,), "scaled")
    assert moved["rel_l2_grad_defaults_vs_candidate"] == pytest.approx(0.01, rel=1e-3)


def test_bench_train_step_ops_check_swaps_the_model_ops(monkeypatch, capsys):
    """bench_train_step.py --compare ops (its check only, tiny model, CPU): the 'before' variant really runs the
    ops of before session 24 (PyTorch's scattering upsampling backward, SS2D's projections as convolutions;
    each alone and both: its gradients differ from the model's by rounding, not by zero), agrees with the model
    to float32 rounding, and the model's own ops are back afterwards. `ln` (PyTorch's layer norm instead of
    ssm_kernels.layer_norm) and `dwconv` (PyTorch's conv2d + SiLU instead of ssm_kernels.dwconv3x3_silu) are
    PyTorch's on the CPU either way: there the check is that they ran, bit for bit."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_train_step
    import SRMASegmenterLib.model as srma_model
    calls = []
    plain_ln = bench_train_step.torch_layer_norm
    plain_dw = bench_train_step.torch_dwconv_silu
    monkeypatch.setattr(bench_train_step, "torch_layer_norm", lambda *a, **k: calls.append(1) or plain_ln(*a, **k))
    monkeypatch.setattr(bench_train_step, "torch_dwconv_silu", lambda *a: calls.append(2) or plain_dw(*a))
    own = srma_model._upsample, srma_model.SS2D.projections, srma_model._layer_norm, srma_model._dwconv_silu
    for revert in (["upsample"], ["proj"], ["upsample", "proj"], ["ln"], ["dwconv"], ["pad"], ["xgrad"]):
        calls.clear()
        bench_train_step.main(["--device", "cpu", "--dims", "8", "--patch", "32", "32", "16", "--compare", "ops",
                               "--chunks", "0", "--revert", *revert])
        check = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        if revert == ["ln"]:
            assert check["rel_l2_grad_defaults_vs_candidate"] == 0.0 and calls.count(1) >= 4 * 4 + 4 + 4
            assert not calls.count(2)
        elif revert == ["dwconv"]:   # 10 SABMamba blocks of 3 SS2D each, in every forward of the check
            assert check["rel_l2_grad_defaults_vs_candidate"] == 0.0 and calls.count(2) >= 30
            assert not calls.count(1)
        elif revert == ["pad"]:      # the dt rank is padded on the GPU only: on the CPU both variants are one
            assert check["rel_l2_grad_defaults_vs_candidate"] == 0.0 and not calls
        elif revert == ["xgrad"]:    # matmul instead of bmm: the same sums, maybe in another order
            assert check["rel_l2_grad_defaults_vs_candidate"] < 1e-5 and not calls
        else:
            assert 0 < check["rel_l2_grad_defaults_vs_candidate"] < 1e-4, revert
            assert not calls
        assert check["rel_l2_grad_defaults_vs_defaults"] == 0.0    # the CPU step is deterministic
        assert (srma_model._upsample, srma_model.SS2D.projections, srma_model._layer_norm,
                srma_model._dwconv_silu) == own and srma_model.PAD_DT_RANK is None and srma_model.X_PROJ_BMM is True
