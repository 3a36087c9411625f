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


def rel_err(out, ref):
    out, ref = out.double().cpu(), ref.double().cpu()
    assert torch.isfinite(out).all(), "non-finite values in the output"
    den = ref.norm()
    num = (out - ref).norm()
    return float(num / den) if den > 0 else float(num)
