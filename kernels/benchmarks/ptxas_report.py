"""Registers, spills and shared memory of the scan kernels on a Hopper GPU, without one.

Triton compiles the kernels ahead of time for sm_90a here (its own ptxas ships in the wheel), and
`ptxas -v` reports what each configuration costs a thread: a kernel at the 255-register cap runs at most two
128-thread programs per SM, and spilled registers go to local memory. This prunes the GPU sweeps
(sweep_backward.py, sweep_segments.py) and explains their rows; it does not time anything.

    python kernels/benchmarks/ptxas_report.py [--json report.json]
    python kernels/benchmarks/ptxas_report.py --dwconv   # the depthwise convolution's three kernels instead
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ssm_kernels.triton_scan import SHIFTS, _scan_bwd_kernel, _scan_fwd_kernel

TARGET = GPUTarget("cuda", 90, 32)
# the two uses: the plain scan with D and a delta bias (bench_scan.py), and the four-direction scan of SS2D
USES = {
    "plain": dict(KP=1, KD=1, CROSS=False, COLS=False, HAS_D=True, HAS_Z=False, HAS_BIAS=True, SOFTPLUS=True, SEGMENTED=False),
    "cross": dict(KP=4, KD=2, CROSS=True, COLS=False, HAS_D=True, HAS_Z=False, HAS_BIAS=True, SOFTPLUS=True,
                  SEGMENTED=False),  # the transposed layout's second launch (KD=2 != KP)
    "cross-strided": dict(KP=4, KD=4, CROSS=True, COLS=True, HAS_D=True, HAS_Z=False, HAS_BIAS=True, SOFTPLUS=True,
                          SEGMENTED=False),
}
# (N, BLOCK_N, [(BLOCK_D, BLOCK_L, warps), ...]); the first of each list is today's default
LAYOUTS = [
    (1, 1, [(2, 1024, 4), (2, 1024, 8), (1, 1024, 4), (2, 512, 4), (4, 512, 8), (2, 256, 4), (4, 256, 4),
            (2, 128, 4), (4, 1024, 8)]),
    (16, 16, [(1, 128, 4), (1, 128, 8), (2, 64, 4), (4, 32, 4), (4, 64, 8), (8, 32, 8), (8, 16, 4)]),
]


def ptxas_info(fn, consts, num_warps, ptr_types=None):
    """(registers, spill store bytes, spill load bytes, shared bytes) of one compiled configuration; pointers
    are fp32 unless ptr_types names another element type ({"x_ptr": "*bf16"}): the compiled code, and so
    its registers, depends on it (the depthwise forward: 126 registers at fp32, 195 at bf16)."""
    ptr_types = ptr_types or {}
    sig = {n: ("constexpr" if n in consts else ptr_types.get(n, "*fp32") if n.endswith("_ptr") else "i32")
           for n in fn.arg_names}
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=TARGET,
                       options=dict(num_warps=num_warps))
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(k.asm["ptx"])
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    try:
        r = subprocess.run([ptxas, f"-arch=sm_{TARGET.arch}a", "-v", f.name, "-o", os.devnull],
                           capture_output=True, text=True, check=True)
    finally:
        os.unlink(f.name)
    regs = int(re.search(r"Used (\d+) registers", r.stderr).group(1))
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", r.stderr)
    return regs, int(spill.group(1)), int(spill.group(2)), k.metadata.shared


def programs_per_sm(regs, warps):
    return min(65536 // (-(-regs // 8) * 8 * 32 * warps), 64 // warps)  # registers go out in eights


def scan_rows():
    rows = []
    print(f"{'use':<7}{'N':>3}{'kernel':<18}{'BLOCK_D':>8}{'BLOCK_L':>8}{'warps':>6}{'regs':>6}{'spill st/ld B':>15}"
          f"{'smem B':>8}{'progs/SM':>9}")
    for use, flags in USES.items():
        for N, bn, layouts in LAYOUTS:
            for bd, bl, nw in layouts:
                kernels = [("fwd", _scan_fwd_kernel, dict(SAVE=True, STORE_LAST=True, LOCAL=False, SUB=bl))]
                if bl >= 256:  # the forward saving states for backward tiles a quarter of its own
                    kernels.append(("fwd saves bl/4", _scan_fwd_kernel,
                                    dict(SAVE=True, STORE_LAST=True, LOCAL=False, SUB=bl // 4)))
                kernels += [(f"bwd {name}", _scan_bwd_kernel, dict(LOCAL=False, SHIFT=v)) for name, v in SHIFTS.items()]
                for kname, fn, extra in kernels:
                    consts = dict(flags, **extra, BLOCK_D=bd, BLOCK_N=bn, BLOCK_L=bl)
                    regs, st, ld, smem = ptxas_info(fn, consts, nw)
                    row = dict(use=use, N=N, kernel=kname, BLOCK_D=bd, BLOCK_L=bl, warps=nw, registers=regs,
                               spill_store_bytes=st, spill_load_bytes=ld, shared_bytes=smem,
                               programs_per_sm=programs_per_sm(regs, nw))
                    rows.append(row)
                    print(f"{use:<7}{N:>3} {kname:<17}{bd:>8}{bl:>8}{nw:>6}{regs:>6}{f'{st}/{ld}':>15}{smem:>8}"
                          f"{row['programs_per_sm']:>9}", flush=True)
    return rows


# the depthwise convolution's (BLOCK_C, BLOCK_W, warps) tried, 8 rows a program; the last is the default
DW_LAYOUTS = [(32, 64, 4), (32, 32, 4), (16, 64, 4), (32, 32, 8), (64, 32, 8), (32, 64, 8), (16, 32, 4)]
# the training step's dtypes: the maps and their gradients in bf16 (autocast), the weight and the
# pre-activation's gradient in fp32
DW_BF16 = {"x_ptr": "*bf16", "y_ptr": "*bf16", "gy_ptr": "*bf16", "gx_ptr": "*bf16"}


def dwconv_rows():
    from ssm_kernels.triton_depthwise_conv import _dw_bwd_input_kernel, _dw_bwd_pre_kernel, _dw_fwd_kernel
    rows = []
    print(f"{'kernel':<22}{'BLOCK_C':>8}{'BLOCK_W':>8}{'warps':>6}{'regs':>6}{'spill st/ld B':>15}{'progs/SM':>9}")
    for bc, bw, nw in DW_LAYOUTS:
        for name, fn in (("forward", _dw_fwd_kernel), ("backward: pre + weight", _dw_bwd_pre_kernel),
                         ("backward: input", _dw_bwd_input_kernel)):
            regs, st, ld, smem = ptxas_info(fn, dict(R=8, BLOCK_C=bc, BLOCK_W=bw), nw, DW_BF16)
            row = dict(kernel=name, BLOCK_C=bc, BLOCK_W=bw, warps=nw, registers=regs, spill_store_bytes=st,
                       spill_load_bytes=ld, shared_bytes=smem, programs_per_sm=programs_per_sm(regs, nw))
            rows.append(row)
            print(f"{name:<22}{bc:>8}{bw:>8}{nw:>6}{regs:>6}{f'{st}/{ld}':>15}{row['programs_per_sm']:>9}", flush=True)
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--json")
    p.add_argument("--dwconv", action="store_true", help="ssm_kernels.dwconv3x3_silu's kernels instead of the scan's")
    a = p.parse_args()
    rows = dwconv_rows() if a.dwconv else scan_rows()
    if a.json:
        with open(a.json, "w") as f:
            extra = dict(pointers=DW_BF16) if a.dwconv else {}
            json.dump(dict(target=f"sm_{TARGET.arch}a", triton=triton.__version__, **extra, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
