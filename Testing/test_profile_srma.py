"""benchmarks/profile_srma.py groups a profiled step's kernels (issue 13, item 5): each kernel's self time is
counted once, in the group its name says, so that two scan layouts' profiles can be compared group by group."""
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from profile_srma import group_of, kernel_groups  # noqa: E402


def test_kernel_names_fall_in_their_groups():
    """Names as the CUDA profiler reports them on an H100 (scan kernels are ssm_kernels' Triton names)."""
    cases = {
        "_scan_fwd_kernel": "scan forward",
        "_scan_bwd_kernel": "scan backward",
        "_scan1_fwd_kernel": "scan forward",   # ssm_kernels.triton_scan1 (d_state 1, the training default)
        "_scan1_bwd_kernel": "scan backward",
        "_ln_fwd_kernel": "layer norm",        # ssm_kernels.layer_norm
        "_ln_bwd_kernel": "layer norm",
        "_dw_fwd_kernel": "convolution",       # ssm_kernels.dwconv3x3_silu (with its SiLU)
        "_dw_bwd_pre_kernel": "convolution",
        "_dw_bwd_input_kernel": "convolution",
        "_transpose_kernel": "copies, casts and layout conversions",   # ssm_kernels.triton_transpose
        "void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<float, float>(int, float, ...)":
            "layer norm",
        "void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl_nocast<at::native::"
        "direct_copy_kernel_cuda(at::TensorIteratorBase&)::{lambda()#3}>": "copies, casts and layout conversions",
        "void cudnn::engines_precompiled::nchwToNhwcKernel<__nv_bfloat16, ...>": "copies, casts and layout conversions",
        "sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64": "convolution",
        "void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl(...)>": "elementwise",
        "void at::native::(anonymous namespace)::upsample_trilinear3d_out_frame<float, float>": "upsampling",
        "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, ...>>": "reductions",
        "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<...FusedAdamMathFunctor...>":
            "optimizer",
        "aten::mm": "matrix multiply",
        "some_unknown_kernel": "other",
    }
    for name, group in cases.items():
        assert group_of(name) == group, (name, group_of(name), group)


def test_groups_sum_self_times_once_largest_first():
    ev = [SimpleNamespace(key="_scan_bwd_kernel", self_device_time_total=3000.0, count=6),
          SimpleNamespace(key="_scan_fwd_kernel", self_device_time_total=1500.0, count=6),
          SimpleNamespace(key="void at::native::vectorized_layer_norm_kernel", self_device_time_total=500.0,
                          count=10),
          SimpleNamespace(key="direct_copy_kernel_cuda", self_device_time_total=250.0, count=4),
          SimpleNamespace(key="cudaLaunchKernel", self_device_time_total=0.0, count=99)]   # host-side: no device time
    groups, rows = kernel_groups(ev, cuda=True)
    assert groups == {"scan backward": 3.0, "scan forward": 1.5, "layer norm": 0.5,
                      "copies, casts and layout conversions": 0.25}
    assert list(groups) == ["scan backward", "scan forward", "layer norm", "copies, casts and layout conversions"]
    assert [r[0] for r in rows][:2] == ["_scan_bwd_kernel", "_scan_fwd_kernel"] and len(rows) == 4
    cpu = [SimpleNamespace(key="aten::copy_", self_cpu_time_total=2000.0, count=3)]
    assert kernel_groups(cpu, cuda=False)[0] == {"copies, casts and layout conversions": 2.0}


def test_by_source_charges_operators_to_the_model_functions_that_called_them():
    """profile_srma --by-source on the CPU (tiny model, one step): each operator's time is charged to the
    project function on its Python stack (class-qualified: 'model.py: SS2D.forward') or, in the backward, to
    its autograd node; Python frames stay out of the kernel groups."""
    from profile_srma import main
    res = main(["--device", "cpu", "--dims", "8", "--patch", "32", "32", "16", "--steps", "1", "--by-source",
                "--top", "200"])
    srcs = {r["source"] for r in res["sources"]}
    assert "model.py: SS2D.forward" in srcs and "model.py: GSC.forward" in srcs
    assert any(s.startswith("backward: ") for s in srcs)
    ss2d = [r for r in res["sources"] if r["source"] == "model.py: SS2D.projections"]
    assert any(r["op"] == "aten::mm" or r["op"] == "aten::bmm" for r in ss2d)   # its projections, as matmuls
    assert all(r["ms"] > 0 and r["kernels"] > 0 for r in res["sources"])
    assert not any(".py(" in k["name"] for k in res["kernels"])


def test_bench_dwconv_records_every_ss2d_map_of_a_forward():
    """benchmarks/bench_dwconv.py times the depthwise convolution on the maps one forward gives it: all 30 SS2D
    calls of the model (10 ABSS blocks x 3 planes), each a channels-last (2, h, w, c) map that flattens one
    stage's whole grid (h * w voxels), and the model's own function is restored after."""
    import torch
    import SRMASegmenterLib.model as model_mod
    from bench_dwconv import record_maps
    before = model_mod._dwconv_silu
    maps = record_maps((32, 32, 16), 8, torch.device("cpu"))
    assert model_mod._dwconv_silu is before
    assert sum(maps.values()) == 30
    grids = ((16, 16, 8), (8, 8, 4), (4, 4, 2), (2, 2, 1))    # the four stages' grids at a 32 x 32 x 16 patch
    planes = {a * b * c for a, b, c in grids}                   # each ABSS plane covers its whole grid
    for (b, h, w, c), calls in maps.items():
        assert b == 2 and calls > 0 and h * w in planes and c % 8 == 0
