#!/usr/bin/env bash
# Everything a GPU session checks, in one device call (the device tool runs it in the repo root):
#   build with the CUDA kernels, run the CUDA tests, compute-sanitizer on the kernels, the benchmarks;
#   logs go to $OUT and a short table is printed last.
# Usage (device tool): bash benchmarks/gpu_session.sh
set -uo pipefail
OUT=${OUT:-/tmp/dtc-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 DTC_CUDA=ON CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-16}
status() { printf '%-28s %s\n' "$1" "$2" >> "$OUT/summary.txt"; }
: > "$OUT/summary.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

t0=$(date +%s)
if python3 -m pip install -q --no-build-isolation --no-deps . > "$OUT/build.log" 2>&1; then
  status build "ok ($(( $(date +%s) - t0 )) s)"
else
  status build "FAILED (see build.log)"; tail -40 "$OUT/build.log"; cat "$OUT/summary.txt"; exit 1
fi
python3 -c "import dtc, json; print(json.dumps(dtc.build_info()))" | tee -a "$OUT/gpu.txt"

(cd tests && python3 -m pytest -q -p no:cacheprovider -m cuda . ) > "$OUT/cuda_tests.log" 2>&1
status "cuda tests" "$(tail -1 "$OUT/cuda_tests.log")"
(cd tests && python3 -m pytest -q -p no:cacheprovider -x -m "not slow" . ) > "$OUT/all_tests.log" 2>&1
status "all tests (not slow)" "$(tail -1 "$OUT/all_tests.log")"

# Small shapes keep the sanitizer's slowdown affordable; every kernel family runs at least once.
for bench in "warp --device cuda --size 2,3,40,56 --repeat 1" \
             "losses --device cuda --B 1 --T 2 --H 64 --W 96 --repeat 1" \
             "flow --device cuda --size 64,96 --batch 2 --repeat 1" \
             "v2i --device cuda --size 64x96 --batch 1 --d 32 --heads 4 --channels 8,16,32 --model student --model-kwargs base=4 --rounds 1"; do
  name=${bench%% *}
  if compute-sanitizer --tool memcheck --error-exitcode 3 python3 -m dtc.bench $bench > "$OUT/sanitizer_$name.log" 2>&1; then
    status "memcheck $name" "clean"
  else
    status "memcheck $name" "ERRORS or unsupported (see sanitizer_$name.log)"
  fi
done

for bench in "warp --device cuda" "losses --device cuda" "flow --device cuda" "infer --devices cuda" \
             "step --device cuda --model unet --channels-last" "metrics --repeat 20 --torch-batch 16" \
             "v2i --device cuda"; do
  name=${bench%% *}
  python3 -m dtc.bench $bench > "$OUT/bench_$name.md" 2>&1
  status "bench $name" "exit $? (bench_$name.md)"
done
cat "$OUT"/bench_*.md
echo; echo "== summary =="; cat "$OUT/summary.txt"
