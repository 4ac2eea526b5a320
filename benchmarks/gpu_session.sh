#!/usr/bin/env bash
# Everything a GPU session checks, in one device call (the device tool runs it in the repo root):
#   build with the CUDA kernels, the CUDA tests (beside the rest of the suite), compute-sanitizer on every
#   kernel family, every benchmark, and a short table last.
# Usage: here `bash benchmarks/gpu_session.sh --prepare` once, then the device tool's run with
#   command "bash benchmarks/gpu_session.sh 470", carry [".gpu-deps"], timeout_s 520.
# On the first H200 (2026-12-04): build 70-79 s, CUDA tests 66-84 s, sanitizer 25 s, benchmarks ~90 s;
# the machine's start added about 30 s.
#
# A session's device time is short (about 15 minutes, the machine's start included), so the script runs
# against a budget: each stage gets what is left (less a reserve for the table) and a stage that would not
# fit is skipped and listed, never silently dropped. Everything lands in $OUT as it goes, so a call cut
# short still brings back what finished. $OUT takes at most 8 files: summary.txt, bench.md,
# cuda_tests.log, logs.tgz (every other log) and the built extension for a second call.
#
# The machine has no registry and no Eigen headers: carry them as .gpu-deps (a prefix holding
# include/eigen3 and share/eigen3/cmake; `bash benchmarks/gpu_session.sh --prepare` makes it here).
# A second call can skip the build by carrying the extension the first call returned
# (DTC_GPU_PREBUILT=1 with python/dtc/_C*.so and python/dtc/bin/dtc-stream in place).
# DTC_GPU_STAGES picks stages (default "build probe tests sanitizer bench").
set -uo pipefail
if [ "${1:-}" = "--prepare" ]; then
  # Run here, not there: copies this machine's Eigen into .gpu-deps and keeps git from tracking it.
  rm -rf .gpu-deps && mkdir -p .gpu-deps/include .gpu-deps/share/eigen3
  cp -r /usr/include/eigen3 .gpu-deps/include/ && cp -r /usr/share/eigen3/cmake .gpu-deps/share/eigen3/
  grep -qx '/.gpu-deps/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.gpu-deps/' >> .git/info/exclude; }
  du -sh .gpu-deps; exit 0
fi
BUDGET=${1:-470}
T0=$(date +%s)
OUT=${OUT:-/tmp/dtc-gpu}
LOGS=/tmp/dtc-gpu-logs
STAGES=" ${DTC_GPU_STAGES:-build probe tests sanitizer bench} "
mkdir -p "$OUT" "$LOGS"
export PYTHONUNBUFFERED=1 DTC_CUDA=ON DTC_CUDA_ARCHS=${DTC_CUDA_ARCHS:-90} CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-16}
[ -d .gpu-deps ] && export CMAKE_PREFIX_PATH="$PWD/.gpu-deps${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
command -v nvcc > /dev/null || export PATH="/usr/local/cuda/bin:$PATH"
REPO=$PWD
: > "$OUT/summary.txt"
: > "$OUT/bench.md"

elapsed() { echo $(( $(date +%s) - T0 )); }
left() { echo $(( BUDGET - $(elapsed) )); }
status() { printf '%-30s %s\n' "$1" "$2" | tee -a "$OUT/summary.txt"; }
pack_logs() { tar -czf "$OUT/.logs.tgz" -C "$LOGS" . 2>/dev/null && mv -f "$OUT/.logs.tgz" "$OUT/logs.tgz"; }
# cap SECONDS: the time a stage may take, never past the budget less a 15 s reserve; 0 means skip.
cap() { local c=$1 l; l=$(( $(left) - 15 )); [ "$l" -lt "$c" ] && c=$l; [ "$c" -lt 10 ] && c=0; echo "$c"; }
want() { [[ "$STAGES" == *" $1 "* ]]; }

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
  nvcc --version | tail -2; python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__)"; } \
  > "$LOGS/gpu.txt" 2>&1
status gpu "$(head -1 "$LOGS/gpu.txt")"

# ---- build: installed into the machine's python (as `make install` does), unless carried in.
if [ "${DTC_GPU_PREBUILT:-0}" = 1 ]; then
  export PYTHONPATH="$REPO/python${PYTHONPATH:+:$PYTHONPATH}"
  status build "prebuilt (carried python/dtc/_C*.so)"
elif want build; then
  if [ ! -d /usr/include/eigen3 ] && [ ! -d .gpu-deps/include/eigen3 ]; then
    status build "FAILED: no Eigen headers; run 'bash benchmarks/gpu_session.sh --prepare' here and carry .gpu-deps"
    exit 1
  fi
  t=$(date +%s)
  if timeout "$(cap 300)" python3 -m pip install -v --no-build-isolation --no-deps . > "$LOGS/build.log" 2>&1; then
    status build "ok ($(( $(date +%s) - t )) s)"
    so=$(cd /tmp && python3 -c "import dtc, dtc._C as c; print(c.__file__)" 2>>"$LOGS/build.log")
    [ -n "$so" ] && cp -f "$so" "$OUT/" && cp -f "$(dirname "$so")/bin/dtc-stream" "$OUT/" 2>/dev/null
  else
    status build "FAILED after $(( $(date +%s) - t )) s (logs.tgz: build.log)"
    tail -60 "$LOGS/build.log"; pack_logs; exit 1
  fi
fi
(cd /tmp && python3 -c "import dtc, json; print(json.dumps(dtc.build_info()))") >> "$LOGS/gpu.txt" 2>&1
status build_info "$(tail -1 "$LOGS/gpu.txt")"
pack_logs

# ---- crash probe: on the first H200 run three bad-input tests segfaulted their workers instead of
# raising (CPU ops; here they raise). One call per process says which error paths crash; cuda-gdb (the
# machine has no gdb) gives the first crashing one's backtrace.
if want probe; then
  (cd /tmp && python3 "$REPO/benchmarks/gpu_crash_probe.py" --maps) > "$LOGS/probe_runtimes.log" 2>&1
  for case in $(cd /tmp && python3 "$REPO/benchmarks/gpu_crash_probe.py"); do
    (cd /tmp && timeout 60 python3 "$REPO/benchmarks/gpu_crash_probe.py" "$case") >> "$LOGS/probe.log" 2>&1
    rc=$?; echo "$case exit $rc" >> "$LOGS/probe.log"
    if [ $rc -ne 0 ] && [ ! -f "$LOGS/probe_gdb.log" ] && command -v cuda-gdb > /dev/null; then
      (cd /tmp && timeout 120 cuda-gdb -batch -ex run -ex bt -ex "info sharedlibrary" \
         --args python3 "$REPO/benchmarks/gpu_crash_probe.py" "$case") > "$LOGS/probe_gdb.log" 2>&1
    fi
  done
  status "crash probe" "$(grep -c ' exit 0$' "$LOGS/probe.log") raised, crashed: $(grep -v ' exit 0$' "$LOGS/probe.log" | grep ' exit ' | cut -d' ' -f1 | tr '\n' ' ')"
  # If no call crashes alone, the crash needs what ran before it in the process: the crashing tests'
  # files in one process, under the debugger.
  c=$(cap 150)
  if [ "$c" -gt 0 ] && command -v cuda-gdb > /dev/null; then
    (cd tests && timeout "$c" cuda-gdb -batch -ex run -ex bt --args python3 -m pytest -p no:xdist -p no:cacheprovider -x -q \
       flow/test_farneback.py losses/test_ops.py metrics/test_cpp.py) > "$LOGS/probe_files_gdb.log" 2>&1
    status "crash probe, files" "$(grep -E 'passed|failed|SIGSEGV' "$LOGS/probe_files_gdb.log" | tail -1)"
  fi
  pack_logs
fi

# ---- tests: the CUDA ones and, beside them on the other cores, the rest of the quick suite (on a
# machine with a GPU some paths pick CUDA by themselves; the first failure stops them, so that it is
# reported within the budget). pytest-timeout turns a hang into a failure.
if want tests; then
  c=$(cap 170)
  if [ "$c" -gt 0 ]; then
    xd() { python3 -c "import xdist" 2>/dev/null && echo "-n $1"; }
    to=$(python3 -c "import pytest_timeout" 2>/dev/null && echo "--timeout 150")
    # Two threads per worker, as on the 2-core CI machine: torch takes all 16 cores in every worker by
    # default, and 14 workers oversubscribed the machine 14-fold on the first run (the quick suite got
    # 16-48 % through).
    (cd tests && OMP_NUM_THREADS=2 timeout "$c" python3 -m pytest -q -p no:cacheprovider -m cuda $(xd 4) $to -rfEs . \
       > "$OUT/cuda_tests.log" 2>&1) &
    cuda_pid=$!
    (cd tests && OMP_NUM_THREADS=2 timeout "$c" python3 -m pytest -q -p no:cacheprovider -m "not slow and not cuda" $(xd 8) \
       $to -x -rfE . > "$LOGS/other_tests.log" 2>&1) &
    other_pid=$!
    wait $cuda_pid; rc=$?
    status "cuda tests" "$([ $rc = 124 ] && echo 'TIMED OUT: ')$(tail -1 "$OUT/cuda_tests.log")"
    wait $other_pid; rc=$?
    status "other tests (not slow)" "$([ $rc = 124 ] && echo 'TIMED OUT: ')$(tail -1 "$LOGS/other_tests.log")"
  else
    status "cuda tests" "skipped (budget)"
  fi
  pack_logs
fi

# ---- compute-sanitizer memcheck: every kernel family once at a small size, in one process (the
# sanitizer's start-up is paid once). Exit code 3 means it found errors.
if want sanitizer; then
  c=$(cap 150)
  if [ "$c" -gt 0 ] && command -v compute-sanitizer > /dev/null; then
    cat > "$LOGS/sanitize.py" <<'EOF'
from dtc.bench import main
runs = [
    "warp --device cuda --size 2,3,40,56 --repeat 1",
    "losses --device cuda --B 1 --T 2 --H 64 --W 96 --repeat 1",
    "flow --device cuda --size 64,96 --batch 2 --repeat 1 --opencv-batch 0",
    "v2i --device cuda --size 64x96 --batch 1 --d 32 --heads 4 --channels 8,16,32 --model student --model-kwargs base=4 --rounds 1",
    "xdim --device cuda --volume 8x32x32 --slices 4 --points 32 --channels 16,16 --infer 8x32x32 --size 32 --base 4 --rounds 1",
]
for args in runs:
    print("==", args, flush=True)
    main(args.split())
EOF
    (cd /tmp && timeout "$c" compute-sanitizer --tool memcheck --error-exitcode 3 --print-limit 50 \
       python3 "$LOGS/sanitize.py" > "$LOGS/sanitizer.log" 2>&1)
    rc=$?
    case $rc in
      0) status memcheck "clean (warp, losses, flow, v2i, xdim)";;
      3) status memcheck "ERRORS: $(grep -c '^========= Invalid\|^========= Program hit' "$LOGS/sanitizer.log") reports (logs.tgz: sanitizer.log)";;
      124) status memcheck "TIMED OUT after $c s, reached: $(grep '^==' "$LOGS/sanitizer.log" | tail -1)";;
      *) status memcheck "exit $rc (logs.tgz: sanitizer.log)";;
    esac
  else
    status memcheck "skipped ($([ "$c" -gt 0 ] && echo 'no compute-sanitizer' || echo budget))"
  fi
  pack_logs
fi

# ---- benchmarks at their standard sizes, most wanted first; each capped so one slow bench cannot eat
# the rest.
if want bench; then
  for bench in "warp --device cuda" "losses --device cuda" "flow --device cuda --opencv-batch 1" \
               "infer --devices cuda" "step --device cuda --model unet --channels-last" "v2i --device cuda" \
               "xdim --device cuda" "metrics --repeat 20 --torch-batch 16"; do
    name=${bench%% *}
    c=$(cap 60)
    if [ "$c" -eq 0 ]; then status "bench $name" "skipped (budget)"; continue; fi
    t=$(date +%s)
    { echo; echo "## python -m dtc.bench $bench"; echo; } >> "$OUT/bench.md"
    (cd /tmp && timeout "$c" python3 -m dtc.bench $bench) >> "$OUT/bench.md" 2>&1
    rc=$?
    status "bench $name" "$([ $rc = 124 ] && echo "TIMED OUT after $c s" || echo "exit $rc") ($(( $(date +%s) - t )) s)"
  done
  pack_logs
fi

echo; echo "== bench.md =="; cat "$OUT/bench.md"
echo; echo "== summary ($(elapsed) s of $BUDGET) =="; cat "$OUT/summary.txt"
