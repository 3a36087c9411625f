#!/usr/bin/env bash
# The accuracy runs of one GPU lease (2 GPUs), started in the background so that they outlive the
# 10-minute call limit; every step writes under $W (outside the checkout, kept while the machine is).
#
#   scripts/device_train.sh liver MINUTES        # carry .carry/chaos .carry/imagenet2 .whl
#   scripts/device_train.sh ultrasound MINUTES   # carry .carry/busi .carry/busi-masks .carry/imagenet01 .whl
#   scripts/device_train.sh liver-steps "S0 S1 S2 S3 S4 SALL" ARGS...  # the same 6 runs, fixed steps, extra args
#   FOLDS="0 1 2" NGPU=1 scripts/device_train.sh liver-steps "S0 S1 S2" ARGS...  # a subset of the runs, one GPU
#   scripts/device_train.sh status
#   scripts/device_train.sh run liver|us NAME ARGS...  # one background training run, named, with its own args
#   scripts/device_train.sh collect SECONDS            # wait for the runs (at most SECONDS), then copy to $OUT
#   scripts/device_train.sh kernels SECONDS            # the scan's backward sweep + the step with its best (issue 13)
#   scripts/device_train.sh layout SECONDS             # the SS2D scan's transposed layout vs strided, kernel + step
#   scripts/device_train.sh compile SECONDS            # the step with forward + loss by torch.compile vs not (issue 13)
#   scripts/device_train.sh us-heatmaps A B [SIZE]     # pointing game of the us-variants pair A+B (the runtime's class)
#                                                      # and their logits at SIZE with and without the mirror
#                                                      # (US_HEAT_FOLDS="3 4": those folds only)
#   scripts/device_train.sh profile SECONDS            # the step's device time by kernel group, both SS2D layouts (issue 13)
#   scripts/device_train.sh bwdsplit SECONDS           # the step with the backward alone split (SSM_BWD_SEG_*) vs defaults
#   scripts/device_train.sh us-sizes "224 288 320" RUN...  # out-of-fold logits of us-variants runs at whole-image sizes
#   DW_TILES="default 8,16,32,4" DW_ALSO=F scripts/device_train.sh dwconv SECONDS  # the depthwise conv alone
#   scripts/device_train.sh kenv SECONDS SSM_X=V...       # the step with these kernel settings vs the defaults
#   scripts/device_train.sh stages SECONDS             # the scan's pipelined / long tiles swept, the step with the best
#   scripts/device_train.sh scann SECONDS              # the state-at-a-time kernels (d_state >= 2) swept finer
#   scripts/device_train.sh peer SECONDS               # mamba_ssm built (outlives the call), then the scan table beside
#                                                      # it and the forward per patch; call again while it builds
#   scripts/device_train.sh ops SECONDS                # the step with the model's ops vs PyTorch's (ln, upsample, proj)
#   scripts/device_train.sh watch SECONDS [liver|us]   # wait while training runs (of that kind) live, at most SECONDS;
#                                                      # print their logs (`watch 420 us`, then us-heatmaps, while the liver trains)
#   EXPORT_FOLDS=1 ...liver-steps...   # also export each CV fold's weights (for CPU analysis of its held-out cases);
#                                      # a call brings back about 64 MB: two folds' shards per collect, copy the rest after
# .whl (git-ignored) holds what the device image lacks, built here once per checkout:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 -d .whl monai==1.6.1 efficientnet-lite-pytorch==0.1.0   (1.7 MB; pure Python)
# What a call brings back lands in /work/.device/N, which a later session's downloads reuse: copy it out
# (fold weights included) before relying on it; session 19's fold networks were lost that way.
#
# liver: the 5-class SRMA-Mamba recipe on the 5 folds of splits/chaos_t2_5fold.json and the shipped
# model (every case but case_20), 6 runs side by side (3 per GPU), each ending its schedule at MINUTES.
# ultrasound: ImageNet EfficientNet-Lite0/1/2 teachers on the 5 folds of splits/busi_5fold.json; the
# size with the best mean CV accuracy is kept; then UltraScanNet distilled from the fold's teacher with
# the lesion-outline loss on each fold, and the teacher + student on all 624 images (exported).
# A lost lease loses every run on it (no checkpoint fits through $OUT): start a CV in one call and poll
# with calls that follow each other at once (the machine goes back 30 s after a call returns); use
# --max-minutes so that every run ends inside the lease, whatever its step rate. Seen: 1 of 4 call
# boundaries lost the machine in session 7 (18 minutes of runs gone), 1 of 1 in session 6; plan runs
# that end inside one or two calls. A fresh machine spends ~80 s compiling the Triton kernels on the first
# step. One H200: 1 run alone 4.4-6.4 steps/s, 2 runs 3.9 each, 3 runs 2.66 each (batch 2, eager step);
# with the step as a CUDA graph (session 13): 1 run alone 9.9 steps/s (H100: 9.1-9.4), 2 runs 4.5 each: one run per lease.
# pgrep -f / pkill -f PATTERN also match the shell of the call that runs them (its command line holds
# PATTERN): write the pattern with a bracket, e.g. pkill -f 'fold [4]', or the call kills / waits on itself.
set -uo pipefail
W=${W:-/root/w}
mode=$1
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 PYTHONUTF8=1   # UTF-8: inductor reads its templates with the locale
wait_runs() {   # SECONDS [liver|us]: until no training run (of that kind) is alive, or SECONDS have passed
  local end=$(( $(date +%s) + $1 )) pat="[t]raining\.[a-z]*\.train"
  case ${2:-} in liver) pat="[t]raining\.srma\.train" ;; us) pat="[t]raining\.ultrascan\.train" ;; esac
  while pgrep -f "$pat" > /dev/null && [ "$(date +%s)" -lt "$end" ]; do sleep 5; done
}
setup() {
  mkdir -p "$W/data" "$W/runs"
  if [ ! -d /tmp/site/monai ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  fi
  rsync -a --exclude .carry --exclude .whl --exclude .git ./ "$W/code/" 2>/dev/null || \
    (mkdir -p "$W/code" && tar --exclude=./.carry --exclude=./.whl --exclude=./.git -cf - . | tar -xf - -C "$W/code")
  export PYTHONPATH=/tmp/site:$W/code:$W/code/SRMASegmenter:$W/code/UltraScanClassifier:$W/code/SlicerAICommon:$W/code/kernels
  # Triton's compiled kernels from an earlier lease (`watch` brings them back as $OUT/triton_cache.tgz; copy it
  # to .carry/triton_cache.tgz and carry it: 6.5 MB packed, 39 MB unpacked): a fresh machine compiles them
  # again otherwise, part of the two minutes before a liver run's 25th step. Triton keys each entry by the
  # kernel's source and its own version, so a stale cache is ignored, not used wrongly.
  if [ -f .carry/triton_cache.tgz ] && [ ! -d "$W/triton-cache" ]; then tar -xzf .carry/triton_cache.tgz -C "$W"; fi
  mkdir -p "$W/triton-cache"; export TRITON_CACHE_DIR=$W/triton-cache
}

# The 5 CV folds of splits/chaos_t2_5fold.json and the shipped model (every case but case_20), side by side
# on NGPU GPUs (default 2); run i gets the schedule flags ${sched[i]}, every run the extra flags "$@".
liver_runs() {
  [ -d "$W/data/chaos-mr-t2" ] || cp -r .carry/chaos "$W/data/chaos-mr-t2"
  cd "$W/code" || exit 1
  local i=0 f d extra
  for f in ${FOLDS:-0 1 2 3 4 all}; do
    d=$W/runs/liver/fold$f; mkdir -p "$d"
    extra=(--split splits/chaos_t2_5fold.json --fold "$f")
    [ -n "${EXPORT_FOLDS:-}" ] && extra+=(--export "$d/model")        # fold weights too (3 shards, 36 MB)
    [ "$f" = all ] && extra=(--fold all --hold-out case_20 --export "$W/runs/liver/model")
    # shellcheck disable=SC2086 # the schedule is a list of flags
    CUDA_VISIBLE_DEVICES=$((i % ${NGPU:-2})) setsid nohup python3 -m training.srma.train --data "$W/data/chaos-mr-t2" \
      --out "$d" ${sched[$i]} --batch-size 2 --log-every 25 "${extra[@]}" "$@" > "$d/log.txt" 2>&1 < /dev/null &
    i=$((i + 1))
  done
  sleep 75; tail -n 3 "$W"/runs/liver/fold*/log.txt; nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv
}

case $mode in
liver)
  MIN=$2
  setup
  mkdir -p "$W/imagenet"; cp .carry/imagenet2/* "$W/imagenet/"
  sched=(); for i in 0 1 2 3 4 5; do sched+=("--steps 20000 --max-minutes $MIN"); done
  liver_runs
  ;;
liver-steps)   # "S0 S1 S2 S3 S4 SALL" EXTRA...: the 6 liver runs with a fixed step count each (no time budget)
  read -r -a S <<< "$2"; shift 2
  setup
  sched=(); for n in "${S[@]}"; do sched+=("--steps $n"); done
  liver_runs "$@"
  ;;
us-variants)   # NAME "ARGS" [NAME "ARGS" ...]: Lite0 teacher-recipe variants, 5 folds + all images each, side by side
               # carry .carry/busi .carry/imagenet0 .whl [.carry/busi-masks: pointing game, --mask-weight W]
               # (another size: carry .carry/imagenet2 and pass "--model efficientnet_lite2" in ARGS)
  shift
  setup
  [ -d "$W/data/busi" ] || cp -r .carry/busi "$W/data/busi"
  mkdir -p "$W/imagenet"; for c in .carry/imagenet*; do [ -d "$c" ] && cp "$c"/* "$W/imagenet/"; done
  export EFFICIENTNET_LITE_DIR=$W/imagenet
  teach=(--model efficientnet_lite0 --epochs 60 --warmup-epochs 3 --cooldown-epochs 0 --lr 5e-4 --min-lr 5e-6
         --warmup-lr 5e-7 --weight-decay 0.05 --aug scratch --tta-flip --eval-every 1000)
  if [ -d .carry/busi-masks ]; then   # outlines carried: heatmap scores for every run, and --mask-weight can use them
    [ -d "$W/data/busi-masks" ] || cp -r .carry/busi-masks "$W/data/busi-masks"
    teach+=(--masks "$W/data/busi-masks")
  fi
  cd "$W/code"
  while [ $# -ge 2 ]; do
    name=$1; read -r -a va <<< "$2"; shift 2
    for f in ${US_FOLDS:-0 1 2 3 4 all}; do   # US_FOLDS="0 1 2 3 4": the CV without the all-images run
      d=$W/runs/us/$name/fold$f; mkdir -p "$d"
      sp=(--split splits/busi_5fold.json); [ $f = all ] && sp=()
      setsid nohup python3 -m training.ultrascan.train --data "$W/data/busi" "${sp[@]}" --fold $f --out "$d" \
        "${teach[@]}" "${va[@]}" > "$d/log.txt" 2>&1 < /dev/null &
    done
  done
  sleep 60; tail -qn 1 "$W"/runs/us/*/fold*/log.txt | cut -c1-150; nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv
  ;;
us-heatmaps)   # A B [CLASSIFY_SIZE]: the pointing game of the seed pair A+B (us-variants runs of one split) per fold,
               # the maps explaining the class the runtime shows (mirror-averaged logits at CLASSIFY_SIZE, default
               # 288), from the classifying forward and the 320 px one; into $OUT (carry .carry/busi-masks)
  A=$2; B=$3; CS=${4:-288}
  setup
  [ -d "$W/data/busi-masks" ] || cp -r .carry/busi-masks "$W/data/busi-masks"
  cd "$W/code" || exit 1
  runs=(); for k in ${US_HEAT_FOLDS:-0 1 2 3 4}; do runs+=("$W/runs/us/$A/fold$k+$W/runs/us/$B/fold$k"); done
  python3 -m training.ultrascan.heatmap_methods "${runs[@]}" --data "$W/data/busi" --masks "$W/data/busi-masks" \
    --classify-size "$CS" --sizes "$CS" 320 --json "$OUT/heatmaps_${A}_${B}_$CS.json" > "$OUT/heatmaps_${A}_${B}_$CS.txt" 2>&1
  tail -n 14 "$OUT/heatmaps_${A}_${B}_$CS.txt"   # $OUT names: letters, digits, '.', '_', '-' only
  # and the out-of-fold logits at CLASSIFY_SIZE with and without the mirror (what dropping it would cost)
  for fl in flip noflip; do
    python3 -m training.ultrascan.input_sizes "$W/runs/us/$A" "$W/runs/us/$B" --data "$W/data/busi" --sizes "$CS" \
      --out "$W/logits_$fl" $([ $fl = noflip ] && echo --no-flip) | tail -n 4
  done
  (cd "$W" && tar -czf "$OUT/logits_${A}_${B}_$CS.tgz" logits_flip logits_noflip)
  ;;
us-sizes)   # "SIZES" RUN [RUN ...]: each us-variants run's out-of-fold logits with the whole image at each size
            # (mirror-averaged, as the runtime), per run and size; into $OUT/logits_sizes.tgz, for
            # `training.ultrascan.evaluate` / `input_sizes --tabulate` on the CPU (a size other than Lite0's)
  read -r -a SZ <<< "$2"; shift 2
  setup
  [ -d "$W/data/busi" ] || cp -r .carry/busi "$W/data/busi"
  cd "$W/code" || exit 1
  runs=(); for r in "$@"; do runs+=("$W/runs/us/$r"); done
  python3 -m training.ultrascan.input_sizes "${runs[@]}" --data "$W/data/busi" --sizes "${SZ[@]}" \
    --out "$W/logits_sizes" | tail -n 12
  (cd "$W" && tar -czf "$OUT/logits_sizes.tgz" logits_sizes)
  ;;
ultrasound)
  MIN=$2
  setup
  cp -r .carry/busi "$W/data/busi"; cp -r .carry/busi-masks "$W/data/busi-masks"; mkdir -p "$W/imagenet"
  cp .carry/imagenet01/* "$W/imagenet/"
  cp scripts/device_train.sh "$W/device_train.sh"
  cd "$W/code"
  setsid nohup bash "$W/device_train.sh" ultrasound-bg "$MIN" > "$W/runs/ultrasound.log" 2>&1 < /dev/null &
  sleep 60; cat "$W/runs/ultrasound.log"; nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv
  ;;
ultrasound-bg)   # runs in the background from $W/code
  MIN=$2
  export PYTHONPATH=/tmp/site:$W/code:$W/code/SRMASegmenter:$W/code/UltraScanClassifier:$W/code/SlicerAICommon:$W/code/kernels
  export EFFICIENTNET_LITE_DIR=$W/imagenet
  t_start=$(date +%s)
  D=$W/data/busi; M=$W/data/busi-masks; R=$W/runs/us
  common=(--data "$D" --split splits/busi_5fold.json --masks "$M" --eval-every 1000)
  teach=(--epochs 60 --warmup-epochs 3 --cooldown-epochs 0 --lr 5e-4 --min-lr 5e-6 --warmup-lr 5e-7
         --weight-decay 0.05 --aug scratch --tta-flip)
  pids=(); i=0
  for v in 0 1 2; do for f in 0 1 2 3 4; do
    d=$R/teacher_lite$v/fold$f; mkdir -p "$d"
    CUDA_VISIBLE_DEVICES=$((i % 2)) python3 -m training.ultrascan.train "${common[@]}" --fold $f \
      --model efficientnet_lite$v --out "$d" "${teach[@]}" > "$d/log.txt" 2>&1 &
    pids+=($!); i=$((i + 1))
  done; done
  for p in "${pids[@]}"; do wait "$p"; done
  echo "teachers done after $(( $(date +%s) - t_start )) s"
  best=$(python3 - "$R" <<'EOF'
import json, sys, glob, numpy as np
r = {}
for v in (0, 1, 2):
    acc = [json.load(open(f))["val"]["accuracy"] for f in sorted(glob.glob(f"{sys.argv[1]}/teacher_lite{v}/fold*/summary.json"))]
    if len(acc) == 5:
        r[v] = float(np.mean(acc))
print(json.dumps(r), file=sys.stderr)
print(max(r, key=r.get))
EOF
)
  echo "teacher size by CV: efficientnet_lite$best"
  left=$(( MIN * 60 - ($(date +%s) - t_start) - 60 ))
  student=(--epochs 300 --warmup-epochs 10 --cooldown-epochs 10 --lr 4e-4 --warmup-lr 4e-7 --min-lr 4e-6
           --weight-decay 0.05 --aug distill --mask-weight 0.5 --teacher-model efficientnet_lite$best)
  d=$R/teacher_lite$best/foldall; mkdir -p "$d"
  CUDA_VISIBLE_DEVICES=1 python3 -m training.ultrascan.train --data "$D" --fold all --model efficientnet_lite$best \
    --out "$d" "${teach[@]}" > "$d/log.txt" 2>&1 &
  tpid=$!
  pids=()
  for f in 0 1 2 3 4; do
    d=$R/student/fold$f; mkdir -p "$d"
    CUDA_VISIBLE_DEVICES=$((f % 2)) python3 -m training.ultrascan.train "${common[@]}" --fold $f --out "$d" \
      --teacher "$R/teacher_lite$best/fold$f/final.safetensors" "${student[@]}" --time-budget "$left" \
      > "$d/log.txt" 2>&1 &
    pids+=($!)
  done
  wait $tpid
  left=$(( MIN * 60 - ($(date +%s) - t_start) - 60 ))
  d=$R/student/foldall; mkdir -p "$d"
  CUDA_VISIBLE_DEVICES=1 python3 -m training.ultrascan.train --data "$D" --fold all --out "$d" \
    --teacher "$R/teacher_lite$best/foldall/final.safetensors" "${student[@]}" --masks "$M" --time-budget "$left" \
    --export "$R/model" > "$d/log.txt" 2>&1 &
  pids+=($!)
  for p in "${pids[@]}"; do wait "$p"; done
  echo "all done after $(( $(date +%s) - t_start )) s"
  ;;
kernels)   # SECONDS: issue 13's scan measurements in the foreground, before any training on this machine:
           # the backward sweep (SRMA-Mamba's SS2D shapes, then the plain N = 1 shapes, fp32), then the
           # training step with the sweep's best SS2D configuration against the defaults. Into $OUT.
  setup
  cd "$W/code" || exit 1
  export PYTHONPATH=$PYTHONPATH:$W/code/kernels/benchmarks
  (cd kernels/benchmarks && timeout $(( $2 * 2 / 3 )) python3 sweep_backward.py --only ss2d --only n1 --quick \
    --json "$OUT/sweep_backward.json" > "$OUT/sweep_backward.txt" 2>&1)
  tail -n 25 "$OUT/sweep_backward.txt"
  read -r -a kenv <<< "$(sed -n 's/^KERNEL_ENV //p' "$OUT/sweep_backward.txt")"
  if [ ${#kenv[@]} -gt 0 ]; then
    timeout $(( $2 / 3 )) python3 benchmarks/bench_train_step.py --compare kernels --kernel-env "${kenv[@]}" \
      --chunks 3 --json "$OUT/step_kernels.json" > "$OUT/step_kernels.txt" 2>&1
    tail -n 12 "$OUT/step_kernels.txt"
  fi
  ;;
layout)    # SECONDS: the SS2D scan's transposed layout against the strided default (issue 13), in the
           # foreground before any training: the training step at the trainer's patch first (its check of
           # loss and gradients, then the timing; a fresh machine spends ~80 s compiling), then the kernel
           # shapes, then the step at 224 x 224 x 64. Into $OUT. Session 18: 260 s timed the kernels only.
  setup
  cd "$W/code" || exit 1
  t=$2
  timeout $(( t * 9 / 20 )) python3 benchmarks/bench_train_step.py --compare kernels --kernel-env SSM_CROSS_LAYOUT=transpose \
    --chunks 3 --json "$OUT/step_layout_128.json" > "$OUT/step_layout_128.txt" 2>&1; tail -n 8 "$OUT/step_layout_128.txt"
  timeout $(( t / 5 )) python3 kernels/benchmarks/bench_cross_layout.py --json "$OUT/cross_layout.json" 2>&1 | tail -n 4
  timeout $(( t * 7 / 20 )) python3 benchmarks/bench_train_step.py --compare kernels --kernel-env SSM_CROSS_LAYOUT=transpose \
    --patch 224 224 64 --steps 8 --chunks 2 --json "$OUT/step_layout_224.json" > "$OUT/step_layout_224.txt" 2>&1
  tail -n 8 "$OUT/step_layout_224.txt"
  ;;
compile)   # SECONDS: the training step with forward + loss compiled by torch.compile against the same uncompiled
           # (issue 13, item 5), both as CUDA graphs, after the loss / gradient check; the trainer's patch, then
           # 224 x 224 x 64. Into $OUT. Inductor compiles in the warm-up (minutes on a fresh machine).
  setup
  cd "$W/code" || exit 1
  t=$2; [ "${3:-}" = 128 ] || t=$(( t / 2 ))   # `compile SECONDS 128`: the trainer's patch only, all the time
  timeout $t python3 benchmarks/bench_train_step.py --compare compile --chunks 3 \
    --json "$OUT/step_compile_128.json" > "$OUT/step_compile_128.txt" 2>&1; tail -n 9 "$OUT/step_compile_128.txt"
  [ "${3:-}" = 128 ] && exit 0
  timeout $t python3 benchmarks/bench_train_step.py --compare compile --patch 224 224 64 --steps 8 --chunks 2 \
    --json "$OUT/step_compile_224.json" > "$OUT/step_compile_224.txt" 2>&1; tail -n 9 "$OUT/step_compile_224.txt"
  ;;
profile)   # SECONDS: where the training step's device time goes, by kernel group and by the model function that
           # launched it (--by-source: which permute, cast or copy costs what), with the transposed SS2D layout
           # (the training default) and the strided one, at the trainer's patch and at 224 x 224 x 64 (issue 13:
           # why the layout that runs the scans 1.3-2.7x faster moved the step by 3 % at most). Into $OUT.
  setup
  cd "$W/code" || exit 1
  # PROFILE_LAYOUTS="transpose" / PROFILE_PATCHES="224x224x64": a subset (the first run also compiles the Triton
  # kernels, so it gets 3/10 of the time; the others share the rest)
  read -ra lays <<< "${PROFILE_LAYOUTS:-transpose strided}"; read -ra patches <<< "${PROFILE_PATCHES:-128x128x48 224x224x64}"
  n=$(( ${#lays[@]} * ${#patches[@]} )); share=$(( $2 * 3 / 10 )); [ $n = 1 ] && share=$2
  for p in "${patches[@]}"; do patch=${p//x/ }; for lay in "${lays[@]}"; do
    tag=${patch// /x}_$lay
    SSM_CROSS_LAYOUT=$lay timeout $share python3 benchmarks/profile_srma.py --patch $patch --by-source \
      --json "$OUT/profile_$tag.json" > "$OUT/profile_$tag.txt" 2>&1
    grep -v '^USDT' "$OUT/profile_$tag.txt" | head -n 16
    share=$(( $2 * 7 / 10 / (n > 1 ? n - 1 : 1) ))
  done; done
  ;;
bwdsplit)  # SECONDS: the training step (a CUDA graph, the trainer's patch) with the backward alone split into
           # segments below 4 programs per SM, ~4 per SM (SSM_BWD_SEG_*), against the defaults (neither pass
           # split at the liver model's grids); loss and gradients checked first. Into $OUT (issue 13).
  setup
  cd "$W/code" || exit 1
  timeout "$2" python3 benchmarks/bench_train_step.py --compare kernels --kernel-env SSM_BWD_SEG_BELOW_PER_SM=4 \
    SSM_BWD_SEG_PER_SM=4 --chunks 3 --json "$OUT/step_bwdsplit.json" > "$OUT/step_bwdsplit.txt" 2>&1
  tail -n 12 "$OUT/step_bwdsplit.txt"
  ;;
ops)       # SECONDS: the training step (a CUDA graph) with the model's ops against PyTorch's of before: all
           # reverted, then each alone (`ln`: PyTorch's layer norm instead of ssm_kernels.layer_norm, session 25;
           # `upsample`: the scattering upsampling backward; `proj`: SS2D's projections as 1 x 1 convolutions,
           # session 24), at the trainer's patch; all at 224 x 224 x 64. Loss and gradients checked first.
           # Before them: the layer norm's tests on the GPU and its own benchmark. JSON into $OUT (a call brings
           # back 8 files at most), tables printed (issue 13, item 5). OPS_REVERTS="ln,proj" picks the 128 runs,
           # OPS_224=0 skips the 224 one, OPS_TESTS="tests/a.py tests/b.py" the kernel tests, OPS_LNBENCH=0 skips
           # the layer norm's own benchmark; `dwconv` (session 26) reverts SS2D's convolution + SiLU, `pad` its
           # dt rank padding.
  t_end=$(( $(date +%s) + $2 ))
  setup
  cd "$W/code" || exit 1
  if python3 -c "import pytest" 2> /dev/null; then
    # OPS_TESTS: the kernel tests run first (default the layer norm's)
    (cd kernels && timeout 150 python3 -m pytest -q -x ${OPS_TESTS:-tests/test_layer_norm.py} -p no:cacheprovider 2>&1 | tail -n 3)
  else echo "pytest not installed here: the layer norm's GPU check is the benchmark's comparison below"; fi
  [ "${OPS_LNBENCH:-1}" = 0 ] || timeout 120 python3 kernels/benchmarks/bench_layer_norm.py --json "$OUT/bench_ln_128.json"
  IFS=, read -ra reverts <<< "${OPS_REVERTS:-upsample proj ln,ln,upsample,proj}"   # which, comma-separated
  # the time left shared out among the step runs (the 224 run, if any, counted as two): a fixed $2 / 7 timed
  # out every run on a fresh machine in session 26, whose first steps compile the kernels
  n_runs=$(( ${#reverts[@]} + ( ${OPS_224:-1} == 0 ? 0 : 2 ) ))
  for rv in "${reverts[@]}"; do
    tag=${rv// /_}
    each=$(( (t_end - $(date +%s)) / n_runs )); n_runs=$(( n_runs > 1 ? n_runs - 1 : 1 ))
    timeout $each python3 benchmarks/bench_train_step.py --compare ops --revert $rv --chunks 3 \
      --json "$OUT/step_ops_128_$tag.json" > "$W/step_ops_128_$tag.txt" 2>&1; grep -a "^check\|^|\|steps/s" "$W/step_ops_128_$tag.txt"
  done
  [ "${OPS_224:-1}" = 0 ] && exit 0
  timeout $(( t_end - $(date +%s) )) python3 benchmarks/bench_train_step.py --compare ops --patch 224 224 64 --steps 8 --chunks 2 \
    --json "$OUT/step_ops_224.json" > "$W/step_ops_224.txt" 2>&1; grep -a "^check\|^|\|steps/s" "$W/step_ops_224.txt"
  ;;
dwconv)    # SECONDS: SS2D's depthwise convolution alone (benchmarks/bench_dwconv.py) on one step's maps at
           # 224 x 224 x 64, then at the trainer's patch: PyTorch's path, the Triton kernels at the tiles of
           # DW_TILES, and DW_ALSO (files: earlier triton_depthwise_conv.py versions, carried) beside. Into $OUT.
  # DW_ALSO's paths are taken from the checkout, before the cd: setup copies the code without .carry, so a
  # relative .carry/... path does not exist under $W/code (session 28's first sweep lost its candidates so)
  also=(); for f in ${DW_ALSO:-}; do also+=("$(realpath -m "$f")"); done
  [ ${#also[@]} -gt 0 ] && also=(--also "${also[@]}")
  setup
  cd "$W/code" || exit 1
  read -ra tiles <<< "${DW_TILES:-default}"
  for p in "224 224 64" "128 128 48"; do tag=${p// /x}
    timeout $(( $2 / 2 )) python3 benchmarks/bench_dwconv.py --patch $p --tiles "${tiles[@]}" "${also[@]}" \
      --json "$OUT/bench_dwconv_$tag.json" > "$OUT/bench_dwconv_$tag.txt" 2>&1; tail -n $(( ${#tiles[@]} + 5 )) "$OUT/bench_dwconv_$tag.txt"
  done
  ;;
stages)    # SECONDS: the one-wide-state kernels' tile loop pipelined and their tiles lengthened (sweep_backward.py
           # --stages, the 224 step's maps in bf16), then the step at 224 x 224 x 64 with the sweep's best against
           # the defaults, if the best is not the defaults (issue 13; session 30's next lease). Into $OUT.
  t_end=$(( $(date +%s) + $2 ))
  setup
  cd "$W/code" || exit 1
  (cd kernels/benchmarks && PYTHONPATH=$PYTHONPATH:. timeout $(( $2 * 45 / 100 )) python3 sweep_backward.py --stages \
    --json "$OUT/sweep_stages.json" > "$OUT/sweep_stages.txt" 2>&1)
  grep -v Warn "$OUT/sweep_stages.txt" | tail -n 40
  read -r -a kenv <<< "$(sed -n 's/^KERNEL_ENV //p' "$OUT/sweep_stages.txt")"
  if [ ${#kenv[@]} -gt 0 ]; then
    timeout $(( t_end - $(date +%s) )) python3 benchmarks/bench_train_step.py --compare kernels --kernel-env "${kenv[@]}" \
      --patch 224 224 64 --steps 8 --chunks 2 --json "$OUT/step_stages_224.json" > "$OUT/step_stages_224.txt" 2>&1
    tail -n 12 "$OUT/step_stages_224.txt"
  fi
  ;;
peer)      # SECONDS: the scan table beside mamba_ssm (issue 13). Its CUDA scan is built from
           # .whl/mamba_ssm-2.3.2.post1.tar.gz for sm_90 only, in the background so that the build outlives the
           # call (its time is unknown): while it builds, this waits at most SECONDS - 150 and says so; once
           # built, kernels/benchmarks/bench_scan.py, then the forward per patch (bench_srma.py --layouts) if
           # time is left. Into $OUT.
  t_end=$(( $(date +%s) + $2 ))
  setup
  if [ ! -f "$W/mb.done" ] && ! pgrep -f "[b]uild_mamba_ssm" > /dev/null; then
    MAX_JOBS=14 setsid nohup bash -c "bash benchmarks/build_mamba_ssm.sh .whl/mamba_ssm-2.3.2.post1.tar.gz $W/mb \
      > $W/mb.log 2>&1 && touch $W/mb.done" < /dev/null > /dev/null 2>&1 &
    sleep 2
  fi
  while [ ! -f "$W/mb.done" ] && pgrep -f "[b]uild_mamba_ssm" > /dev/null && [ "$(date +%s)" -lt $(( t_end - 150 )) ]; do
    sleep 10
  done
  tail -n 3 "$W/mb.log"; cp "$W/mb.log" "$OUT/build_mamba.txt"
  if [ ! -f "$W/mb.done" ]; then echo "mamba_ssm not built yet (or its build failed: build_mamba.txt); call peer again"; exit 0; fi
  cd "$W/code" || exit 1
  PYTHONPATH=$PYTHONPATH:$(ls -d "$W"/mb/mamba_ssm-*) timeout $(( t_end - $(date +%s) )) python3 kernels/benchmarks/bench_scan.py \
    --json "$OUT/bench_scan.json" > "$OUT/bench_scan.txt" 2>&1
  tail -n 45 "$OUT/bench_scan.txt"
  [ $(( t_end - $(date +%s) )) -gt 60 ] && timeout $(( t_end - $(date +%s) )) python3 benchmarks/bench_srma.py --layouts \
    strided transpose --json "$OUT/bench_srma_layouts.json" 2>&1 | grep -v Warn | tail -n 12
  ;;
scann)     # SECONDS: the state-at-a-time kernels for d_state >= 2 (issue 13): sweep_backward.py --scann --fine (their
           # state loop pipelined, longer tiles, warps, against the general kernels), bf16 and fp32. Into $OUT.
  t_end=$(( $(date +%s) + $2 ))
  setup
  cd "$W/code/kernels/benchmarks" || exit 1
  PYTHONPATH=$PYTHONPATH:. timeout $(( t_end - $(date +%s) )) python3 sweep_backward.py --scann --fine --fp32 \
    --json "$OUT/sweep_scann_fine.json" > "$OUT/sweep_scann_fine.txt" 2>&1
  grep -v Warn "$OUT/sweep_scann_fine.txt" | tail -n 30
  ;;
kenv)      # SECONDS VAR=VALUE...: the training step (a CUDA graph) with the ssm_kernels defaults against the same
           # with these SSM_* settings (e.g. SSM_TRANSPOSE=torch: the transposed layout's copies by PyTorch, as
           # before session 27), loss and gradients checked first; the trainer's patch, then 224 x 224 x 64
           # (KENV_224=0 skips it). Into $OUT.
  t_end=$(( $(date +%s) + $2 )); shift 2
  setup
  cd "$W/code" || exit 1
  tag=$(echo "$*" | tr ' =,' '_-_' | tr -cd 'A-Za-z0-9_-')
  timeout $(( (t_end - $(date +%s)) * 45 / 100 )) python3 benchmarks/bench_train_step.py --compare kernels --kernel-env "$@" \
    --chunks 3 --json "$OUT/step_${tag}_128.json" > "$OUT/step_${tag}_128.txt" 2>&1; tail -n 12 "$OUT/step_${tag}_128.txt"
  [ "${KENV_224:-1}" = 0 ] && exit 0
  timeout $(( t_end - $(date +%s) )) python3 benchmarks/bench_train_step.py --compare kernels --kernel-env "$@" \
    --patch 224 224 64 --steps 8 --chunks 2 --json "$OUT/step_${tag}_224.json" > "$OUT/step_${tag}_224.txt" 2>&1
  tail -n 12 "$OUT/step_${tag}_224.txt"
  ;;
run)   # one named run in the background; its data must have been copied by an earlier call or this one
  kind=$2; name=$3; shift 3
  setup
  if [ "$kind" = liver ]; then
    [ -d "$W/data/chaos-mr-t2" ] || cp -r .carry/chaos "$W/data/chaos-mr-t2"
    mod=training.srma.train; data=$W/data/chaos-mr-t2
  else
    [ -d "$W/data/busi" ] || cp -r .carry/busi "$W/data/busi"
    [ -d .carry/busi-masks ] && [ ! -d "$W/data/busi-masks" ] && cp -r .carry/busi-masks "$W/data/busi-masks"
    mkdir -p "$W/imagenet"; for c in .carry/imagenet*; do [ -d "$c" ] && cp "$c"/* "$W/imagenet/"; done
    export EFFICIENTNET_LITE_DIR=$W/imagenet
    mod=training.ultrascan.train; data=$W/data/busi
  fi
  d=$W/runs/$name; mkdir -p "$d"
  (cd "$W/code" && setsid nohup python3 -m $mod --data "$data" --out "$d" "$@" > "$d/log.txt" 2>&1 < /dev/null &)
  sleep 20; tail -n 3 "$d/log.txt"
  ;;
watch)   # SECONDS: keep the call (and so the machine) busy while the background runs train; chain it into the
         # call that starts them (`... liver-steps ...; scripts/device_train.sh watch 480`) and start the next
         # call at once: a gap of over 30 s between calls gives the machine back, and every run on it is lost
         # (session 21 lost a 16-minute liver run to one such gap)
  wait_runs "$2" "${3:-}"
  for f in $(find "$W/runs" -name log.txt | sort); do echo "$f: $(grep -a -v '^\[' "$f" | tail -n 1 | cut -c1-160)"; done
  # the Triton cache, for the next fresh machine: unpack into .carry/triton-cache and carry it
  if [ -d "$W/triton-cache" ] && [ -n "${OUT:-}" ]; then
    (cd "$W" && tar -czf "$OUT/triton_cache.tgz" triton-cache)
    [ "$(stat -c %s "$OUT/triton_cache.tgz")" -lt 15000000 ] || rm -f "$OUT/triton_cache.tgz"
  fi
  ;;
collect)   # wait until no training runs (or SECONDS pass), then bring logs, metrics and weights back
  wait_runs "$2"
  pgrep -fa "[t]raining\.[a-z]*\.train" | cut -c1-150
  cd "$W/runs" || exit 1
  tar -czf "$OUT/runs.tgz" --exclude='*.pt' --exclude='*.safetensors' .   # manifests (model.json) included
  # $OUT gives back at most 8 files, 2 folders down: each run's folder is flattened to one name under w/
  n=0
  for f in $(find . -name '*.safetensors' -size -16M | sort); do
    n=$((n + 1)); [ $n -le 7 ] || break
    d=$(dirname "${f#./}" | tr / _); mkdir -p "$OUT/w/$d"; cp "$f" "$OUT/w/$d/"
  done
  ls -laR "$OUT" | head -40
  ;;
status)
  for f in "$W"/runs/liver/fold*/log.txt; do echo "== $f"; tail -n 2 "$f"; done
  cat "$W/runs/ultrasound.log" 2>/dev/null
  for f in "$W"/runs/us/*/fold*/log.txt; do echo "== $f"; tail -n 1 "$f" | cut -c1-200; done
  nvidia-smi --query-gpu=index,utilization.gpu,memory.used --format=csv
  ;;
esac
