"""Correctness of every backend against the float64 reference, on fresh random inputs each run."""

import os
import pytest
import torch

from conftest import compile_for_hopper, device_for, rel_err
from ssm_kernels import (cross_merge, cross_scan, cross_selective_scan, cross_selective_scan_ref,
                         selective_scan_fn, selective_scan_ref)

TOL = {torch.float32: 2e-5, torch.float64: 1e-10, torch.float16: 1e-2, torch.bfloat16: 1e-2}
GRAD_TOL = {torch.float32: 1e-4, torch.float64: 1e-10, torch.float16: 2e-2, torch.bfloat16: 3e-2}


def make_inputs(batch, dim, L, N, groups, dtype, device, with_d=True, with_z=True, with_bias=True, seed=None,
                softplus=True):
    """Random scan inputs. delta is drawn as the pre-softplus value (either sign) for calls with
    delta_softplus=True; for calls without it (softplus=False) it is the step itself, so positive, as the
    scan's contract has it: a negative step makes exp(delta A) > 1 and the state grow over the sequence,
    an ill-conditioned draw no real model feeds (seen in CI: dA of 1.8e6 with 1.35e-4 float32 error at
    L = 141, against 3e-8 for the same draw with positive steps)."""
    seed = seed if seed is not None else torch.seed() % (2**31)
    print(f"make_inputs seed={seed}")  # shown by pytest on failure, so a failing draw can be replayed
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale)
    bc = (batch, N, L) if groups is None else (batch, groups, N, L)
    t = dict(
        u=r(batch, dim, L), delta=r(batch, dim, L, scale=0.5), A=-(torch.rand(dim, N, generator=g) * 2 + 0.05),
        B=r(*bc), C=r(*bc), D=r(dim) if with_d else None, z=r(batch, dim, L) if with_z else None,
        delta_bias=r(dim, scale=0.3) if with_bias else None,
    )
    if not softplus:
        t["delta"] = t["delta"].abs()
    big = ("u", "delta", "B", "C", "z")
    return {k: (None if v is None else v.to(device=device, dtype=dtype if k in big else torch.float32))
            for k, v in t.items()}


SHAPES = [  # batch, dim, L, N, groups
    (2, 8, 37, 1, None), (1, 16, 1, 4, None), (2, 8, 130, 16, None), (1, 32, 70, 1, 4),
    (2, 16, 45, 4, 2), (1, 4, 3, 16, 4),
]
OPTIONS = [  # with D, z, bias, softplus, last state
    (True, True, True, True, True), (False, False, False, False, False), (True, False, True, True, False),
    (False, True, False, True, True),
]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, [x for x in s if x is not None])))
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "".join("DZbsl"[i] if v else "-" for i, v in enumerate(o)))
def test_forward_fp32(backend, shape, opts):
    dev = device_for(backend)
    batch, dim, L, N, G = shape
    wd, wz, wb, sp, last = opts
    x = make_inputs(batch, dim, L, N, G, torch.float32, dev, wd, wz, wb, softplus=sp)
    ref = selective_scan_ref(**x, delta_softplus=sp, return_last_state=last)
    out = selective_scan_fn(**x, delta_softplus=sp, return_last_state=last, backend=backend)
    if last:
        assert out[1].shape == (batch, dim, N)
        assert rel_err(out[1], ref[1]) < TOL[torch.float32]
        out, ref = out[0], ref[0]
    assert out.shape == (batch, dim, L) and out.dtype == torch.float32
    assert rel_err(out, ref) < TOL[torch.float32]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("output_fp32", [False, True])
def test_forward_half(backend, dtype, output_fp32):
    dev = device_for(backend)
    x = make_inputs(2, 16, 77, 4, 2, dtype, dev)
    ref = selective_scan_ref(**x, delta_softplus=True)
    out = selective_scan_fn(**x, delta_softplus=True, output_fp32=output_fp32, backend=backend)
    assert out.dtype == (torch.float32 if output_fp32 else dtype)
    assert rel_err(out, ref) < TOL[dtype]


def _grads(fn, x, seed):
    leaves = {k: (v.detach().clone().requires_grad_() if v is not None else None) for k, v in x.items()}
    out = fn(leaves)
    # the upstream gradient is exactly representable in the output's dtype, so that a bf16 output
    # and the float64 reference see the same one
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(next(iter(x.values())).dtype).double().to(out.device)
    (out.double() * g).sum().backward()
    return {k: v.grad for k, v in leaves.items() if v is not None}


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("shape", SHAPES[:5], ids=lambda s: "x".join(map(str, [x for x in s if x is not None])))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_backward(backend, shape, dtype):
    dev = device_for(backend)
    batch, dim, L, N, G = shape
    x = make_inputs(batch, dim, L, N, G, dtype, dev)
    gr = _grads(lambda t: selective_scan_ref(**t, delta_softplus=True), x, 7)
    gb = _grads(lambda t: selective_scan_fn(**t, delta_softplus=True, backend=backend), x, 7)
    assert set(gr) == set(gb) == {"u", "delta", "A", "B", "C", "D", "z", "delta_bias"}
    for k in gr:
        assert gb[k].shape == x[k].shape, k
        assert rel_err(gb[k], gr[k]) < GRAD_TOL[dtype], k


def _grads_of(fn, x, g):
    leaves = {k: (v.detach().clone().requires_grad_() if v is not None else None) for k, v in x.items()}
    (fn(leaves).float() * g).sum().backward()
    return {k: v.grad for k, v in leaves.items() if v is not None}


def _spy_forward(monkeypatch, record):
    """A list that gets record(save, result) of every call of the Triton launcher's forward from here on
    (result: out, last state, saved states, meta; meta says which kernels and layout ran)."""
    from ssm_kernels import triton_launch
    seen, real = [], triton_launch.forward

    def spy(*args, save):
        r = real(*args, save=save)
        seen.append(record(save, r))
        return r
    monkeypatch.setattr(triton_launch, "forward", spy)
    return seen


# The backward stores du, ddelta and dz in their inputs' dtype itself (no float32 buffer cast afterwards): a
# half-precision run must give exactly the float32 run's gradients of the same values, rounded as .to()
# rounds them. The kernel reads every input into float32, so the two runs compute the same float32 sums;
# any other rounding in the store (truncation, a second rounding) shows here bit for bit. du of the
# four-direction scan is summed by float32 atomics (their order is free on a GPU) and then cast: not compared.
# Triton's CPU interpreter truncates float32 -> bfloat16 casts (triton 3.6: interpreter.cast_impl converts
# without a rounding mode), where the GPU rounds to nearest even: there bf16 is held to one unit in the
# last place of the rounded value and to agreeing with truncation exactly.
@pytest.mark.parametrize("case", ["plain", "cross-transpose", "cross-strided"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_gradients_are_the_float32_ones_rounded(monkeypatch, case, dtype):
    dev = device_for("triton")
    if case == "plain":
        x = make_inputs(2, 8, 45, 1, None, dtype, dev)
        fn = lambda t: selective_scan_fn(**t, delta_softplus=True, backend="triton")  # noqa: E731
        exact = ("u", "delta", "z")
    else:
        monkeypatch.setenv("SSM_CROSS_LAYOUT", case.split("-")[1])
        x = cross_inputs(2, 4, 6, 5, 1, dev)
        x = {k: (v.to(dtype) if k in ("x", "delta", "B", "C") else v) for k, v in x.items()}
        fn = lambda t: cross_selective_scan(**t, backend="triton")  # noqa: E731
        exact = ("delta",)
    g = torch.randn(fn(x).shape, generator=torch.Generator().manual_seed(5)).to(dtype).float().to(dev)
    half = _grads_of(fn, x, g)
    full = _grads_of(fn, {k: (v.float() if v is not None else None) for k, v in x.items()}, g)
    interpreted_bf16 = dev.type == "cpu" and dtype == torch.bfloat16
    for k in exact:
        assert half[k].dtype == dtype, k
        assert torch.isfinite(full[k]).all(), k
        want = full[k].to(dtype)
        if interpreted_bf16:
            truncated = (full[k].float().view(torch.int32) & ~0xFFFF).view(torch.float32).to(dtype)
            assert torch.equal(half[k], truncated), k
            ulp = torch.finfo(dtype).eps * want.float().abs().clamp(min=torch.finfo(dtype).tiny)
            assert ((half[k].float() - want.float()).abs() <= ulp).all(), k
        else:
            assert torch.equal(half[k], want), (k, (half[k].float() - want.float()).abs().max())


def test_torch_gradcheck_float64():
    x = make_inputs(1, 4, 9, 2, 2, torch.float64, torch.device("cpu"))
    x = {k: v.double() for k, v in x.items()}
    names = list(x)

    def f(*vals):
        return selective_scan_fn(**dict(zip(names, vals)), delta_softplus=True, backend="torch")

    assert torch.autograd.gradcheck(f, tuple(v.requires_grad_() for v in x.values()))


def test_cross_scan_merge_roundtrip():
    x = torch.randn(2, 3, 4, 5)
    xs = cross_scan(x)
    assert xs.shape == (2, 4, 3, 20)
    assert torch.equal(xs[:, 1, :, 0:4], x[:, :, :, 0])  # column-major: first column first
    assert torch.equal(xs[:, 2], xs[:, 0].flip(-1))
    # merging four copies of the scan of x gives back 4 x
    assert torch.allclose(cross_merge(xs, 4, 5), 4 * x.reshape(2, 3, 20))


def cross_inputs(b, d, h, w, N, dev):
    """Inputs of the four-direction scan on a (h, w) map, fresh random each run."""
    g = torch.Generator().manual_seed(torch.seed() % (2**31))
    x = dict(x=torch.randn(b, d, h, w, generator=g), delta=torch.randn(b, 4, d, h, w, generator=g) * 0.5,
             A=-(torch.rand(4 * d, N, generator=g) + 0.05), B=torch.randn(b, 4, N, h, w, generator=g),
             C=torch.randn(b, 4, N, h, w, generator=g), D=torch.randn(4 * d, generator=g),
             delta_bias=torch.randn(4 * d, generator=g) * 0.3)
    return {k: v.to(dev) for k, v in x.items()}


@pytest.mark.parametrize("backend", ["torch", "triton", "triton-strided"])
@pytest.mark.parametrize("hw,N", [((5, 7), 1), ((8, 3), 4), ((1, 6), 1)])
def test_cross_selective_scan(monkeypatch, backend, hw, N):
    """Both layouts of the Triton four-direction scan: rows of a transposed copy, and strided reads (the default)."""
    monkeypatch.setenv("SSM_CROSS_LAYOUT", "strided" if backend == "triton-strided" else "transpose")
    backend = "triton" if backend.startswith("triton") else backend
    dev = device_for(backend)
    h, w = hw
    b, d = 2, 8
    x = cross_inputs(b, d, h, w, N, dev)
    gr = _grads(lambda t: cross_selective_scan_ref(**t), x, 3)
    gb = _grads(lambda t: cross_selective_scan(**t, backend=backend), x, 3)
    ref = cross_selective_scan_ref(**x)
    out = cross_selective_scan(**x, backend=backend)
    assert out.shape == (b, d, h, w) and out.dtype == torch.float32
    assert rel_err(out, ref) < 2e-5
    for k in gr:
        assert rel_err(gb[k], gr[k]) < 1e-4, k


def test_nan_never_passes():
    x = make_inputs(1, 4, 10, 1, None, torch.float32, torch.device("cpu"))
    ref = selective_scan_ref(**x)
    bad = ref.clone()
    bad[0, 0, 3] = float("nan")
    with pytest.raises(AssertionError):
        rel_err(bad, ref)


@pytest.mark.parametrize("kwargs,match", [
    (dict(u=torch.randn(2, 4)), "u must have 3 dims"),
    (dict(delta=torch.randn(1, 4, 9)), "delta must have shape"),
    (dict(A=torch.randn(3, 2)), "A must be"),
    (dict(B=torch.randn(1, 3, 2, 10)), "G dividing dim"),
    (dict(u=torch.randn(1, 10, 4).transpose(1, 2)), "contiguous"),
    (dict(u=torch.randint(0, 3, (1, 4, 10))), "float32"),
    (dict(D=torch.randn(5)), "D must have shape"),
    (dict(backend="cuda-magic"), "unknown selective-scan backend"),
])
def test_bad_inputs(kwargs, match):
    x = make_inputs(1, 4, 10, 2, None, torch.float32, torch.device("cpu"), seed=0)
    x.update(kwargs)
    with pytest.raises((ValueError, TypeError)) as e:
        selective_scan_fn(**x)
    assert match in str(e.value)


def test_backend_choice(monkeypatch):
    from ssm_kernels import resolve_backend
    monkeypatch.delenv("SSM_KERNELS_BACKEND", raising=False)
    assert resolve_backend(None, torch.device("cpu")) == "torch"
    monkeypatch.setenv("SSM_KERNELS_BACKEND", "ref")
    assert resolve_backend(None, torch.device("cpu")) == "ref"
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="CUDA tensors"):
        resolve_backend("triton", torch.device("cpu"))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_ultrascanunit_call(backend):
    """The call UltraScanNet makes: N = 8, one 7 x 7 window of tokens, D, delta bias + softplus, no z;
    forward in fp32 and bf16, gradients of every input against the reference's autograd."""
    dev = device_for(backend)
    x = make_inputs(3, 24, 49, 8, None, torch.float32, dev, with_d=True, with_z=False, with_bias=True)
    ref = selective_scan_ref(**x, delta_softplus=True)
    out = selective_scan_fn(**x, delta_softplus=True, backend=backend)
    assert rel_err(out, ref) < TOL[torch.float32]
    xb = {k: (v.to(torch.bfloat16) if k in ("u", "delta", "B", "C") else v) for k, v in x.items()}
    outb = selective_scan_fn(**xb, delta_softplus=True, backend=backend)
    assert outb.dtype == torch.bfloat16 and rel_err(outb.float(), ref) < TOL[torch.bfloat16] * 2
    names = ("u", "delta", "A", "B", "C", "D", "delta_bias")
    leaves = {k: x[k].detach().double().cpu().requires_grad_(True) for k in names}
    mine = {k: x[k].detach().clone().requires_grad_(True) for k in names}
    w = torch.randn(3, 24, 49, dtype=torch.float64)
    (selective_scan_ref(**leaves, delta_softplus=True) * w).sum().backward()
    (selective_scan_fn(**mine, delta_softplus=True, backend=backend) * w.to(dev, torch.float32)).sum().backward()
    for k in names:
        assert rel_err(mine[k].grad.double().cpu(), leaves[k].grad) < GRAD_TOL[torch.float32], k


@pytest.mark.parametrize("hw,N,opts", [((5, 7), 1, (True, True, True)), ((9, 4), 3, (False, False, False)),
                                        ((16, 16), 1, (True, False, True)), ((1, 40), 2, (False, True, True))])
def test_cross_scan_inference_path_equals_the_reference_in_float64(hw, N, opts):
    """The no-autograd torch path gathers each direction by index instead of copying four sequences:
    same numbers as the spelled-out reference, in float64, with chunk padding (L not a multiple of 16)."""
    from ssm_kernels.torch_scan import cross_selective_scan_inference, direction_index
    h, w = hw
    b, d = 2, 6
    wd, wb, sp = opts
    g = torch.Generator().manual_seed(torch.seed() % (2**31))
    x = dict(x=torch.randn(b, d, h, w, generator=g, dtype=torch.float64),
             delta=torch.randn(b, 4, d, h, w, generator=g, dtype=torch.float64) * 0.5,
             A=-(torch.rand(4 * d, N, generator=g, dtype=torch.float64) + 0.05),
             B=torch.randn(b, 4, N, h, w, generator=g, dtype=torch.float64),
             C=torch.randn(b, 4, N, h, w, generator=g, dtype=torch.float64),
             D=torch.randn(4 * d, generator=g, dtype=torch.float64) if wd else None,
             delta_bias=torch.randn(4 * d, generator=g, dtype=torch.float64) * 0.3 if wb else None)
    ref = cross_selective_scan_ref(**x, delta_softplus=sp)
    out = cross_selective_scan_inference(**x, delta_softplus=sp)
    assert out.dtype == torch.float64 and rel_err(out, ref) < 1e-12
    with torch.no_grad():                                      # the public entry takes this path in float32
        pub = cross_selective_scan(**{k: (v.float() if v is not None else None) for k, v in x.items()},
                                   delta_softplus=sp, backend="torch")
    assert pub.dtype == torch.float32 and rel_err(pub, ref) < 2e-5
    seqs = cross_scan(torch.arange(h * w, dtype=torch.float64).view(1, 1, h, w))[0, :, 0]
    for k in range(4):                                         # the index is cross_scan's order
        assert torch.equal(direction_index(k, h, w).double(), seqs[k])


# The chunked scan: a sequence split into segments across programs (two passes and a carry loop).
# 16-step tiles make the short test sequences many tiles long; SSM_SEGMENTS forces the split that the
# GPU heuristic only takes for long sequences with few channels. Poisoned buffers (conftest) make a
# segment pair or partial gradient that is never written fail the test.
@pytest.mark.parametrize("segments,expect", [(2, 2), (4, 3), (9, 9)])
@pytest.mark.parametrize("shape,opts", [((2, 8, 130, 4, 2), (True, True, True, True)),
                                        ((1, 4, 141, 1, None), (False, False, False, False))],
                         ids=["N4-G2-Dzb", "N1-plain"])
def test_segmented_scan_forward_and_gradients(monkeypatch, segments, expect, shape, opts):
    from ssm_kernels import triton_launch
    dev = device_for("triton")
    monkeypatch.setenv("SSM_SCANN", "0")   # the general kernels (d_state >= 2 plain: else triton_scann)
    monkeypatch.setenv("SSM_BLOCK_L", "16")
    monkeypatch.setenv("SSM_SEGMENTS", str(segments))
    batch, dim, L, N, G = shape
    wd, wz, wb, sp = opts
    x = make_inputs(batch, dim, L, N, G, torch.float32, dev, wd, wz, wb, softplus=sp)
    ref, ref_last = selective_scan_ref(**x, delta_softplus=sp, return_last_state=True)
    out, last, _, meta = triton_launch.forward(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"],
                                               x["delta_bias"], sp, None, torch.float32, save=False)
    assert meta["n_chunks"] == 9 and meta["n_seg"] == expect  # 130 or 141 steps in 16-step tiles
    assert rel_err(out, ref) < TOL[torch.float32]
    assert rel_err(last, ref_last) < TOL[torch.float32]
    gr = _grads(lambda t: selective_scan_ref(**t, delta_softplus=sp), x, 5)
    gb = _grads(lambda t: selective_scan_fn(**t, delta_softplus=sp, backend="triton"), x, 5)
    for k in gr:
        assert rel_err(gb[k], gr[k]) < GRAD_TOL[torch.float32], k


@pytest.mark.parametrize("layout", ["transpose", "strided"])
def test_segmented_cross_scan(monkeypatch, layout):
    dev = device_for("triton")
    monkeypatch.setenv("SSM_CROSS_LAYOUT", layout)
    monkeypatch.setenv("SSM_BLOCK_L", "16")
    monkeypatch.setenv("SSM_SEGMENTS", "3")
    b, d, h, w, N = 2, 4, 8, 5, 1  # 40 steps: three tiles, one per segment, in each of the four directions
    x = cross_inputs(b, d, h, w, N, dev)
    gr = _grads(lambda t: cross_selective_scan_ref(**t), x, 3)
    gb = _grads(lambda t: cross_selective_scan(**t, backend="triton"), x, 3)
    assert rel_err(cross_selective_scan(**x, backend="triton"), cross_selective_scan_ref(**x)) < 2e-5
    for k in gr:
        assert rel_err(gb[k], gr[k]) < 1e-4, k


@pytest.mark.parametrize("fwd_seg, bwd_seg", [(1, 3), (3, 1), (2, 5)])
def test_backward_splits_on_its_own(monkeypatch, fwd_seg, bwd_seg):
    """SSM_BWD_SEGMENTS splits the backward alone: gradients equal the reference's whatever split the forward
    that saved the states used (plain and four-direction scans)."""
    from ssm_kernels import triton_launch
    dev = device_for("triton")
    monkeypatch.setenv("SSM_SCANN", "0")   # the general kernels (d_state >= 2 plain: else triton_scann)
    monkeypatch.setenv("SSM_BLOCK_L", "16")
    monkeypatch.setenv("SSM_SEGMENTS", str(fwd_seg))
    monkeypatch.setenv("SSM_BWD_SEGMENTS", str(bwd_seg))
    seen, real = [], triton_launch._segments

    def recording(*a, **k):  # (backward?, n_seg) of every launch plan
        r = real(*a, **k)
        seen.append((k.get("backward", False), r[0]))
        return r
    monkeypatch.setattr(triton_launch, "_segments", recording)
    x = make_inputs(1, 4, 141, 1, 1, torch.float32, dev, True, True, True, softplus=True)
    gr = _grads(lambda t: selective_scan_ref(**t, delta_softplus=True), x, 5)
    gb = _grads(lambda t: selective_scan_fn(**t, delta_softplus=True, backend="triton"), x, 5)
    for k in gr:
        assert rel_err(gb[k], gr[k]) < GRAD_TOL[torch.float32], k
    assert (False, fwd_seg) in seen and (True, bwd_seg) in seen  # each pass ran the split it was given
    c = cross_inputs(2, 4, 8, 5, 1, dev)
    gr = _grads(lambda t: cross_selective_scan_ref(**t), c, 3)
    gb = _grads(lambda t: cross_selective_scan(**t, backend="triton"), c, 3)
    for k in gr:
        assert rel_err(gb[k], gr[k]) < 1e-4, k


def test_backward_segment_settings_fall_back_to_the_shared_ones(monkeypatch):
    from ssm_kernels.triton_launch import _segments
    cpu = torch.device("cpu")
    for k in ("SSM_SEGMENTS", "SSM_BWD_SEGMENTS"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SSM_SEGMENTS", "4")
    assert _segments(16, 96, cpu)[0] == 4 and _segments(16, 96, cpu, backward=True)[0] == 4
    monkeypatch.setenv("SSM_BWD_SEGMENTS", "6")
    assert _segments(16, 96, cpu)[0] == 4 and _segments(16, 96, cpu, backward=True)[0] == 6


def test_segment_count_heuristic(monkeypatch):
    from ssm_kernels.triton_launch import _segments, plan_segments
    # split only a grid with fewer programs than SMs, then to ~16 programs per SM, >= 2 tiles a segment
    assert plan_segments(programs=128, n_chunks=392, sms=132) == 17
    assert plan_segments(programs=384, n_chunks=392, sms=132) == 1
    assert plan_segments(programs=4, n_chunks=10, sms=132) == 5
    monkeypatch.delenv("SSM_SEGMENTS", raising=False)
    assert _segments(16, 96, torch.device("cpu")) == (1, 96)  # serial off the GPU unless asked
    monkeypatch.setenv("SSM_SEGMENTS", "7")
    n, tps = _segments(16, 96, torch.device("cpu"))
    assert (n, tps) == (7, 14) and (n - 1) * tps < 96 <= n * tps  # no empty segment
    monkeypatch.setenv("SSM_SEGMENTS", "500")
    assert _segments(16, 96, torch.device("cpu")) == (96, 1)


# The backward's two ways to the adjoint's decay one step on (SSM_BWD_SHIFT), each against the float64
# reference: serial and split into segments, the four-direction scan, a wider backward channel block than
# the forward's, backward tiles a quarter of the forward's (the forward saves the state at each one's
# start; 130 steps leave the last forward tile partly past the end), and decays that underflow in float32
# (exp(delta * A) below 1e-38: DIVIDE's clamp, and the carries across tiles and segments, must not turn
# them into inf or NaN). On a GPU tl.exp is the hardware's approximate exp2 (a few units in the last place):
# with those decays dA, summed over terms that are products of them, came 1.4e-4 from the float64 reference
# in 2 of 14 H100 runs of the underflow cases (fresh random inputs each; session 29), over the 1e-4 that
# holds everywhere else; the underflow case on a GPU is held to 3e-4.
@pytest.mark.parametrize("shift", ["reload", "divide"])
@pytest.mark.parametrize("case", ["serial", "segments", "cross-segments", "cross-strided-segments", "wide-bwd-block",
                                  "short-bwd-tiles", "cross-short-bwd-tiles", "underflow"])
def test_backward_shift_variants(monkeypatch, shift, case):
    dev = device_for("triton")
    monkeypatch.setenv("SSM_SCANN", "0")   # the general kernels (d_state >= 2 plain: else triton_scann)
    monkeypatch.setenv("SSM_BWD_SHIFT", shift)
    monkeypatch.setenv("SSM_BLOCK_L", "64" if "short-bwd-tiles" in case else "16")
    monkeypatch.setenv("SSM_BWD_BLOCK_L", "16")
    monkeypatch.setenv("SSM_SEGMENTS", "3" if "segments" in case or case == "underflow" else "1")
    monkeypatch.setenv("SSM_CROSS_LAYOUT", "strided" if "strided" in case else "transpose")
    if case.startswith("cross"):
        x = cross_inputs(2, 4, 8, 5, 1, dev)
        gr = _grads(lambda t: cross_selective_scan_ref(**t), x, 3)
        gb = _grads(lambda t: cross_selective_scan(**t, backend="triton"), x, 3)
    else:
        shape = (2, 8, 61, 1, None) if case == "serial" else (2, 8, 130, 4, 2)
        x = make_inputs(*shape, torch.float32, dev)
        if case == "wide-bwd-block":  # forward one channel a program, backward four (within a group of 4)
            monkeypatch.setenv("SSM_BLOCK_D", "1")
            monkeypatch.setenv("SSM_BWD_BLOCK_D", "8")
        if case == "underflow":  # delta * A down to about -200 on a third of the steps
            x["A"] = x["A"] * 40.0
            x["delta"] = torch.where(torch.rand_like(x["delta"]) < 0.33, x["delta"].abs() + 2.0, x["delta"])
        gr = _grads(lambda t: selective_scan_ref(**t, delta_softplus=True), x, 7)
        gb = _grads(lambda t: selective_scan_fn(**t, delta_softplus=True, backend="triton"), x, 7)
    tol = 3e-4 if case == "underflow" and dev.type == "cuda" else GRAD_TOL[torch.float32]
    for k in gr:
        assert rel_err(gb[k], gr[k]) < tol, (k, rel_err(gb[k], gr[k]))


def test_cross_layout_choice(monkeypatch):
    from ssm_kernels.triton_launch import cross_layout
    monkeypatch.delenv("SSM_CROSS_LAYOUT", raising=False)
    assert cross_layout() == "transpose"            # a forward alone (inference, replayed from a CUDA graph)
    assert cross_layout(save=True) == "transpose"   # a backward follows (training)
    monkeypatch.setenv("SSM_CROSS_LAYOUT", "strided")
    assert cross_layout() == "strided" and cross_layout(save=True) == "strided"   # the variable overrides both
    monkeypatch.setenv("SSM_CROSS_LAYOUT", "diagonal")
    with pytest.raises(ValueError, match="SSM_CROSS_LAYOUT"):
        cross_layout()


@pytest.mark.parametrize("layout", ["", "strided"])
def test_forward_alone_saves_nothing(monkeypatch, layout):
    """Under torch.no_grad (inference: the parameters still require gradients) the Triton scan keeps no
    states for a backward; with autograd on it saves them; both read the layout asked for (default: the
    transposed one) and give the reference's output."""
    seen = _spy_forward(monkeypatch, lambda save, r: (save, r[3]["layout"], r[2].numel()))
    monkeypatch.setenv("SSM_CROSS_LAYOUT", layout)
    dev = device_for("triton")
    x = cross_inputs(1, 4, 6, 5, 1, dev)
    x["A"].requires_grad_(True)                       # a parameter, as in a model
    ref = cross_selective_scan_ref(**{k: v.detach() for k, v in x.items()})
    with torch.no_grad():
        y0 = cross_selective_scan(**x, backend="triton")
    y1 = cross_selective_scan(**x, backend="triton")
    assert seen[0][:2] == (False, layout or "transpose") and seen[0][2] == 0
    assert seen[1][:2] == (True, layout or "transpose") and seen[1][2] > 0
    assert rel_err(y0, ref) < 2e-5 and rel_err(y1.detach(), ref) < 2e-5


def test_backward_block_and_shift_choice(monkeypatch):
    from ssm_kernels.triton_launch import _bwd_blocks, _bwd_tile
    from ssm_kernels.triton_scan import SHIFTS
    meta = dict(bd=2, nw=4, bn=1)
    monkeypatch.delenv("SSM_BWD_BLOCK_D", raising=False)
    monkeypatch.delenv("SSM_BWD_SHIFT", raising=False)
    assert _bwd_blocks(384, 96, "plain", meta) == (2, 4, SHIFTS["divide"])  # the forward's block unless asked
    # the measured defaults: d_state 1-2, divide; wider states keep reload (not timed on a GPU)
    assert _bwd_blocks(384, 96, "plain", dict(meta, bn=16))[2] == SHIFTS["reload"]
    monkeypatch.delenv("SSM_BWD_BLOCK_L", raising=False)
    assert _bwd_tile(1024, 1, "strided") == 256 and _bwd_tile(1024, 2, "plain") == 512  # quarter / half tile
    assert _bwd_tile(1024, 1, "transpose") == 512  # the transposed four-direction scan reads like the plain one
    assert _bwd_tile(128, 16, "plain") == 128 and _bwd_tile(256, 4, "strided") == 256  # wider states: the forward's
    monkeypatch.setenv("SSM_BWD_BLOCK_L", "300")
    assert _bwd_tile(1024, 1, "strided") == 512 and _bwd_tile(256, 4, "plain") == 256  # a power of 2 dividing it
    monkeypatch.setenv("SSM_BWD_BLOCK_L", "4")
    assert _bwd_tile(1024, 1, "plain") == 16
    monkeypatch.setenv("SSM_BWD_BLOCK_D", "64")
    assert _bwd_blocks(384, 96, "plain", meta)[0] == 32  # never straddles a group of B and C (96 = 32 x 3)
    assert _bwd_blocks(24, 24, "transpose", meta)[0] == 32  # the four-direction scan has one group per direction
    monkeypatch.setenv("SSM_BWD_SHIFT", "sideways")
    with pytest.raises(ValueError, match="SSM_BWD_SHIFT"):
        _bwd_blocks(384, 96, "plain", meta)


# The interpreter runs code that the GPU compiler may reject (or that spills it to death): compile the
# kernels for sm_90a here, with the ptxas in Triton's wheel, for the default layouts and the candidates of
# kernels/benchmarks/sweep_backward.py. In a subprocess: under TRITON_INTERPRET=1 the kernels are
# interpreter objects that cannot be compiled.
_COMPILE_CHECK = """
import sys
from ptxas_report import USES, ptxas_info
from ssm_kernels.triton_scan import SHIFTS, _scan_bwd_kernel, _scan_fwd_kernel
flags = USES[sys.argv[1]]
for bd, bn, bl, sub in ((2, 1, 1024, 256), (1, 16, 128, 32)):
    print("fwd", bd, bn, bl, sub, ptxas_info(_scan_fwd_kernel, dict(flags, SAVE=True, STORE_LAST=True, LOCAL=False,
          BLOCK_D=bd, BLOCK_N=bn, BLOCK_L=bl, SUB=sub), 4))
    for shift in SHIFTS.values():
        for local in (False, True):
            print("bwd", shift, local, bd, bn, sub, ptxas_info(_scan_bwd_kernel, dict(flags, LOCAL=local, SHIFT=shift,
                  BLOCK_D=bd, BLOCK_N=bn, BLOCK_L=sub), 4))
"""


@pytest.mark.parametrize("use", ["plain", "cross", "cross-strided"])
def test_kernels_compile_for_hopper(use):
    import re
    out = compile_for_hopper(_COMPILE_CHECK, use)
    regs = [int(m) for m in re.findall(r"\((\d+), \d+, \d+, \d+\)", out)]
    assert len(regs) == 10 and all(0 < x <= 255 for x in regs), out


# The one-wide-state kernels (triton_scan1.py; SSM_SCAN1, the default for d_state = 1 in memory order) and the
# general ones, each against the float64 reference: the plain scan (z, D, bias; grouped B and C), the
# transposed four-direction scan (directions 2 and 3 run REV, each second launch adds to the first's output),
# split into segments (the carries composed in each direction's order), backward tiles a quarter of the
# forward's (states saved at each, from the end of the tile when REV), a channel block wider than the last
# one's channels, and sequences that end inside a tile. A spy checks which kernels ran. "pipelined": the tile
# loop asked for two stages (SSM_SCAN1_STAGES) still gives the reference's values; the interpreter runs the
# loop as written, so what the pipeline compiles to is checked by the sm_90a compile test below.
@pytest.mark.parametrize("scan1", ["0", "1"])
@pytest.mark.parametrize("case", ["plain", "plain-grouped-segments", "cross", "cross-segments",
                                  "cross-short-bwd-tiles", "cross-wide-block-segments", "cross-pipelined-segments"])
def test_one_wide_state_kernels(monkeypatch, scan1, case):
    dev = device_for("triton")
    monkeypatch.setenv("SSM_SCAN1", scan1)
    monkeypatch.setenv("SSM_CROSS_LAYOUT", "transpose")
    monkeypatch.setenv("SSM_BLOCK_L", "64" if "short-bwd-tiles" in case else "16")
    monkeypatch.setenv("SSM_BWD_BLOCK_L", "16")
    monkeypatch.setenv("SSM_SEGMENTS", "3" if "segments" in case else "1")
    if "wide-block" in case:
        monkeypatch.setenv("SSM_BLOCK_D", "4")
    monkeypatch.setenv("SSM_SCAN1_STAGES", "2" if "pipelined" in case else "1")
    seen = _spy_forward(monkeypatch, lambda save, r: bool(r[3].get("scan1")))
    if case.startswith("cross"):
        x = cross_inputs(2, 6 if "wide-block" in case else 4, 8, 5 if "short" not in case else 9, 1, dev)
        gr = _grads(lambda t: cross_selective_scan_ref(**t), x, 3)
        gb = _grads(lambda t: cross_selective_scan(**t, backend="triton"), x, 3)
        out, ref = cross_selective_scan(**x, backend="triton"), cross_selective_scan_ref(**x)
        tol = 1e-4
    else:
        x = make_inputs(2, 8, 61, 1, 2 if "grouped" in case else None, torch.float32, dev)
        gr = _grads(lambda t: selective_scan_ref(**t, delta_softplus=True), x, 7)
        gb = _grads(lambda t: selective_scan_fn(**t, delta_softplus=True, backend="triton"), x, 7)
        out = selective_scan_fn(**x, delta_softplus=True, backend="triton")
        ref = selective_scan_ref(**x, delta_softplus=True)
        tol = GRAD_TOL[torch.float32]
    assert rel_err(out, ref) < 2e-5
    for k in gr:
        assert rel_err(gb[k], gr[k]) < tol, (k, rel_err(gb[k], gr[k]))
    assert seen and all(s == (scan1 == "1") for s in seen)


def test_one_wide_state_choice(monkeypatch):
    """SSM_SCAN1 picks the kernels for d_state 1 read in memory order only (the strided four-direction layout
    and wider states keep the general ones); the split policy reproduces the sweep's best measured splits."""
    from ssm_kernels.triton_launch import (SCAN1_SEG_BELOW_PER_SM, SCAN1_SEG_PER_SM, SCAN1_SEG_PER_SM_FULL,
                                           plan_segments, use_scan1)
    monkeypatch.delenv("SSM_SCAN1", raising=False)
    assert use_scan1(1, "plain") and use_scan1(1, "transpose")
    assert not use_scan1(1, "strided") and not use_scan1(2, "transpose") and not use_scan1(16, "plain")
    monkeypatch.setenv("SSM_SCAN1", "0")
    assert not use_scan1(1, "transpose")
    monkeypatch.setenv("SSM_SCAN1", "yes")
    with pytest.raises(ValueError, match="SSM_SCAN1"):
        use_scan1(1, "plain")
    from ssm_kernels.triton_launch import SCAN1_BWD_STAGES, _scan1_stages
    monkeypatch.delenv("SSM_SCAN1_STAGES", raising=False)
    monkeypatch.delenv("SSM_SCAN1_BWD_STAGES", raising=False)
    assert _scan1_stages() == 1 and _scan1_stages(backward=True) == SCAN1_BWD_STAGES == 3   # as timed (SS2D)
    assert _scan1_stages(backward=True, cross=False) == 1       # the plain scan's backward: not timed pipelined
    monkeypatch.setenv("SSM_SCAN1_STAGES", "3")
    assert _scan1_stages() == 3 and _scan1_stages(backward=True) == 3   # both passes
    monkeypatch.setenv("SSM_SCAN1_BWD_STAGES", "2")
    assert _scan1_stages() == 3 and _scan1_stages(backward=True) == 2   # the backward's own
    full = dict(per_sm=SCAN1_SEG_PER_SM_FULL, below_per_sm=SCAN1_SEG_BELOW_PER_SM)
    assert plan_segments(192, 392, 132, **full) == 3     # stage 0 of the 224 step: 2 x 96 channels a launch
    assert plan_segments(384, 49, 132, **full) == 2      # (2, 192, 56, 896)
    assert plan_segments(64, 392, 132, per_sm=SCAN1_SEG_PER_SM, below_per_sm=SCAN1_SEG_BELOW_PER_SM) == 33


_COMPILE_CHECK1 = """
from ptxas_report import ptxas_info
from ssm_kernels.triton_scan1 import _scan1_bwd_kernel, _scan1_fwd_kernel
for cross in (True, False):
    base = dict(KP=4 if cross else 1, CROSS=cross, HAS_D=True, HAS_Z=not cross, HAS_BIAS=True, SOFTPLUS=True,
                SEGMENTED=True, STAGES=1)
    for rev in (False, True):
        for local in (False, True):
            print("fwd", cross, rev, local, ptxas_info(_scan1_fwd_kernel, dict(base, REV=rev, ACC=rev, SAVE=True,
                  STORE_LAST=True, LOCAL=local, BLOCK_D=1, BLOCK_L=1024, SUB=512), 4))
            print("bwd", cross, rev, local, ptxas_info(_scan1_bwd_kernel, dict(base, REV=rev, ACC=rev, LOCAL=local,
                  BLOCK_D=1, BLOCK_L=512), 4))
for fn, c, st in ((_scan1_fwd_kernel, dict(SAVE=True, STORE_LAST=True, BLOCK_L=1024, SUB=512), 2),
                  (_scan1_bwd_kernel, dict(BLOCK_L=512), 3)):   # the pipelined tile loop (the backward's default)
    print("stages", fn.__name__, ptxas_info(fn, dict(base, REV=False, ACC=True, LOCAL=False, BLOCK_D=1, **c,
          STAGES=st), 4))
"""


def test_one_wide_state_kernels_compile_for_hopper():
    """At the defaults (one channel, tiles 1024 / 512, 4 warps) every variant compiles for sm_90a without
    spilling, and so does the tile loop pipelined (the last two: the forward in two stages, the backward in
    its default three)."""
    import re
    out = compile_for_hopper(_COMPILE_CHECK1)
    got = [tuple(int(v) for v in m) for m in re.findall(r"\((\d+), (\d+), (\d+), \d+\)", out)]
    assert len(got) == 18, out
    assert all(0 < r <= 255 and st == 0 and ld == 0 for r, st, ld in got), out


# The state-at-a-time kernels (triton_scann.py; SSM_SCANN) for d_state >= 2 in the plain scan, against the
# float64 reference: every option on and off, grouped and ungrouped B and C, states not a power of 2, a channel
# block of several channels, backward tiles shorter than the forward's (states saved at each), a sequence that
# ends inside a tile, and the tile loop pipelined. A spy checks that these kernels ran.
@pytest.mark.parametrize("case", ["N4-grouped-all-options", "N16-no-options", "N3-block4-short-bwd-tiles",
                                  "N8-half", "N5-pipelined"])
def test_state_at_a_time_kernels(monkeypatch, case):
    dev = device_for("triton")
    for k in [k for k in os.environ if k.startswith("SSM_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("SSM_SCANN", "1")
    monkeypatch.setenv("SSM_BLOCK_L", "32" if "short-bwd" in case else "16")
    if "short-bwd" in case:
        monkeypatch.setenv("SSM_BWD_BLOCK_L", "16")
    if "block4" in case:
        monkeypatch.setenv("SSM_BLOCK_D", "4")
    if "pipelined" in case:
        monkeypatch.setenv("SSM_SCANN_STAGES", "2")
        monkeypatch.setenv("SSM_SCANN_STATE_STAGES", "2")
    seen = _spy_forward(monkeypatch, lambda save, r: bool(r[3].get("scann")))
    N = int(case.split("-")[0][1:])
    opts = (False,) * 4 if "no-options" in case else (True, True, True, True)
    wd, wz, wb, sp = opts
    dtype = torch.bfloat16 if "half" in case else torch.float32
    x = make_inputs(2, 8, 61, N, 2 if "grouped" in case else None, dtype, dev, wd, wz, wb, softplus=sp)
    out, last = selective_scan_fn(**x, delta_softplus=sp, return_last_state=True, backend="triton")
    x64 = {k: (None if v is None else v.double()) for k, v in x.items()}
    ref, ref_last = selective_scan_ref(**x64, delta_softplus=sp, return_last_state=True)
    assert rel_err(out, ref) < TOL[dtype] and rel_err(last, ref_last) < TOL[dtype]
    if dtype == torch.float32:
        gr = _grads(lambda t: selective_scan_ref(**t, delta_softplus=sp), x, 7)
        gb = _grads(lambda t: selective_scan_fn(**t, delta_softplus=sp, backend="triton"), x, 7)
        for k in gr:
            assert rel_err(gb[k], gr[k]) < GRAD_TOL[dtype], (k, rel_err(gb[k], gr[k]))
    else:   # half inputs: the kernels' gradients are the float32 path's, rounded to the inputs' dtype
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(dev)
        x32 = {k: (None if v is None else v.float()) for k, v in x.items()}
        gh = _grads_of(lambda t: selective_scan_fn(**t, delta_softplus=sp, backend="triton"), x, g)
        gf = _grads_of(lambda t: selective_scan_fn(**t, delta_softplus=sp, backend="triton"), x32, g)
        for k in gh:
            assert gh[k].dtype == x[k].dtype, k
            assert rel_err(gh[k].float(), gf[k]) < GRAD_TOL[dtype], (k, rel_err(gh[k].float(), gf[k]))
    assert seen and all(seen)


def test_state_at_a_time_choice(monkeypatch):
    """SSM_SCANN picks the state-at-a-time kernels for d_state >= 2 in the plain scan only; d_state 1 keeps the
    one-wide-state kernels, the four-direction scan the general ones; a bad value is refused."""
    from ssm_kernels.triton_launch import use_scann
    monkeypatch.setenv("SSM_SCANN", "1")
    assert use_scann(2, "plain") and use_scann(16, "plain")
    assert not use_scann(1, "plain") and not use_scann(4, "transpose") and not use_scann(4, "strided")
    monkeypatch.setenv("SSM_SCANN", "0")
    assert not use_scann(16, "plain")
    monkeypatch.setenv("SSM_SCANN", "on")
    with pytest.raises(ValueError, match="SSM_SCANN"):
        use_scann(16, "plain")


_COMPILE_CHECKN = """
from ptxas_report import ptxas_info
from ssm_kernels.triton_launch import SCANN_BLOCK
from ssm_kernels.triton_scann import _scann_bwd_kernel, _scann_fwd_kernel
bd, bl = SCANN_BLOCK
for N in (8, 16):
    base = dict(N=N, HAS_D=True, HAS_Z=False, HAS_BIAS=True, SOFTPLUS=True, STAGES=1, BLOCK_D=bd, BLOCK_N=N, BLOCK_L=bl)
    for ns in (1, 2):   # the state loop as it is, and pipelined (SSM_SCANN_STATE_STAGES)
        print("fwd", N, ns, ptxas_info(_scann_fwd_kernel, dict(base, SAVE=True, SUB=bl, NSTAGES=ns), 4))
        print("bwd", N, ns, ptxas_info(_scann_bwd_kernel, dict(base, NSTAGES=ns), 4))
"""


def test_state_at_a_time_kernels_compile_for_hopper():
    """At the default channel block and tile, both kernels compile for sm_90a without spilling at d_state 8
    and 16 (the state loop is not unrolled, so the registers do not grow with N), as UltraScanNet calls them
    (D and the delta bias, no z: with z the backward spilled 28 bytes at 168 registers, Triton 3.6)."""
    import re
    out = compile_for_hopper(_COMPILE_CHECKN)
    got = [tuple(int(v) for v in m) for m in re.findall(r"\((\d+), (\d+), (\d+), \d+\)", out)]
    assert len(got) == 8, out
    assert all(0 < r <= 255 and st == 0 and ld == 0 for r, st, ld in got), out
