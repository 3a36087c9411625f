import os

import pytest
import torch

# a missed store must show up as NaN, never as a stale value that happens to be right
os.environ.setdefault("SSM_KERNELS_POISON", "1")


def device_for(backend: str) -> torch.device:
    """Triton runs on the GPU when there is one, else on the CPU through its interpreter."""
    if backend == "triton":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
            pytest.skip("no GPU and TRITON_INTERPRET is not set: the Triton kernels cannot run here")
        try:
            import triton  # noqa: F401
        except ImportError:
            pytest.skip("triton is not installed")
    return torch.device("cpu")


def rel_err(out, ref, floor_rms=1e-2):
    """Relative error ||out - ref|| / ||ref||, with the reference's RMS floored at `floor_rms`.

    The inputs are O(1), so a correct output is O(1) unless its terms cancel: with L = 1 and N = 4 the output
    is delta * u * sum_n B_n C_n, and a draw where that sum is 1e-4 makes plain relative error measure float32
    rounding of the cancelled terms (seen in CI: 3.7e-5 on values of 1e-4, absolute error 2e-8). The floor
    turns such cancellation into an absolute-error check at 1 % of the inputs' scale; it changes nothing for
    outputs of ordinary size.
    """
    out, ref = out.double().cpu(), ref.double().cpu()
    assert torch.isfinite(out).all(), "non-finite values in the output"
    den = torch.clamp(ref.norm(), min=floor_rms * ref.numel() ** 0.5)
    num = (out - ref).norm()
    return float(num / den) if den > 0 else float(num)


def compile_for_hopper(script: str, *args: str) -> str:
    """Run `script` (Python source that compiles kernels for sm_90a with kernels/benchmarks/ptxas_report.py and
    prints what ptxas reports) in a fresh interpreter, without TRITON_INTERPRET; return its stdout. Skips
    where Triton or the ptxas its wheel ships is missing. No GPU is needed."""
    import subprocess
    import sys
    triton = pytest.importorskip("triton")
    if not os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")):
        pytest.skip("this Triton wheel ships no ptxas")
    here = os.path.dirname(os.path.abspath(__file__))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(here, ".."), os.path.join(here, "..", "benchmarks"),
                                         env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout
