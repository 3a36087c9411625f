#!/usr/bin/env bash
# Build mamba_ssm's CUDA selective scan (the peer in kernels/benchmarks/bench_scan.py) from its source
# distribution, for sm_90 (H100/H200) only so the build takes minutes, not an hour.
#   here:   curl -o .whl/mamba_ssm-2.3.2.post1.tar.gz https://files.pythonhosted.org/packages/af/48/aa7bec0efc7453fa0512276c0069c854bf684219050294266534bfef34bb/mamba_ssm-2.3.2.post1.tar.gz
#           (sha256 104cc47e9101e5401a675fa2b784f2952b9b037f3b1dd83b5ac544394e95d028; `pip download` fails here:
#           it builds the sdist's metadata, which imports torch, in an isolated environment without it)
#   GPU:    bash benchmarks/build_mamba_ssm.sh .whl/mamba_ssm-2.3.2.post1.tar.gz /tmp/mb
#           export PYTHONPATH=$PYTHONPATH:$(ls -d /tmp/mb/mamba_ssm-*)
set -euo pipefail
tarball=${1:?path to mamba_ssm sdist}
dest=${2:-/tmp/mamba_build}
mkdir -p "$dest"
tar xzf "$tarball" -C "$dest"
cd "$dest"/mamba_ssm-*/
python3 - <<'PY'
import re
s = open("setup.py").read()
# drop every other architecture: its "-gencode" was just appended, so pop it back off
s = re.sub(r'cc_flag\.append\("arch=compute_(?!90,)\d+,code=sm_\d+"\)', "cc_flag.pop()", s)
open("setup.py", "w").write(s)
PY
grep -c 'compute_90' setup.py
MAMBA_FORCE_BUILD=TRUE MAX_JOBS=${MAX_JOBS:-16} python3 setup.py build_ext --inplace
