"""Device choice and the out-of-memory fallback used by both modules."""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class DeviceError(RuntimeError):
    """The requested device does not exist here (a usage error, not a weights or model failure)."""


def resolve_device(choice: str = "auto"):
    """'auto' -> CUDA when available, else CPU; 'cuda'/'gpu' without a GPU is an error, not a silent CPU run."""
    import torch

    choice = (choice or "auto").lower()
    if choice in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise DeviceError("GPU requested but PyTorch sees no CUDA device; choose CPU or auto")
        return torch.device("cuda")
    if choice == "cpu":
        return torch.device("cpu")
    if choice != "auto":
        raise DeviceError(f"device must be auto, gpu/cuda or cpu, got {choice!r}")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def is_oom(exc: BaseException) -> bool:
    import torch
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def run_with_fallback(fn, device, batch_sizes=(4, 2, 1), notify=None):
    """Call fn(device, batch) trying smaller batches on GPU out-of-memory, then the CPU; say so via notify."""
    import torch

    tried = []
    if device.type == "cuda":
        for bs in batch_sizes:
            try:
                return fn(device, bs), device, tried
            except Exception as e:  # noqa: BLE001 - only OOM is handled, others re-raised
                if not is_oom(e):
                    raise
                torch.cuda.empty_cache()
                msg = f"GPU out of memory with {bs} windows at a time"
                tried.append(msg)
                if notify:
                    notify(msg + ("; trying fewer" if bs != batch_sizes[-1] else "; falling back to CPU"))
        device = torch.device("cpu")
    return fn(device, batch_sizes[-1]), device, tried
