"""ssm_kernels: the selective-scan (S6) runtime shared by SRMA-Mamba and UltraScanNet.

- selective_scan_fn: mamba_ssm's selective_scan_fn, with backends "triton" (CUDA, or CPU under
  TRITON_INTERPRET=1), "torch" (vectorised, CPU and fallback) and "ref" (float64 loop).
- cross_selective_scan: VMamba's four-direction SS2D scan fused into one kernel.
- cross_scan / cross_merge: the stand-alone direction transforms.
- selective_scan_ref / cross_selective_scan_ref: float64 definitions for tests.
- layer_norm: layer norm over channels for many short rows (channels-first or -last in and out, the
  output's dtype chosen), Triton with a torch fallback; layer_norm_ref its float64 definition.
- dwconv3x3_silu: depthwise 3 x 3 convolution + SiLU from a channels-last map to a channels-first one
  (SS2D's step before its scan), Triton with a torch fallback; dwconv3x3_silu_ref its float64 definition.
"""
from .interface import (BACKENDS, ENV_BACKEND, cross_merge, cross_scan, cross_selective_scan,
                        resolve_backend, selective_scan_fn, triton_available)
from .depthwise_conv import dwconv3x3_silu, dwconv3x3_silu_ref
from .layer_norm import layer_norm, layer_norm_ref
from .reference import cross_selective_scan_ref, selective_scan_ref

__all__ = ["selective_scan_fn", "selective_scan_ref", "cross_selective_scan", "cross_selective_scan_ref",
           "cross_scan", "cross_merge", "layer_norm", "layer_norm_ref", "dwconv3x3_silu", "dwconv3x3_silu_ref", "resolve_backend", "triton_available", "BACKENDS", "ENV_BACKEND"]
__version__ = "0.1.0"
