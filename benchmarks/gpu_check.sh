#!/usr/bin/env bash
# The GPU checks of issues 3 and 5, as one script for a machine with a CUDA GPU and PyTorch:
#   1. B1-B3 rendered on the GPU (whole CLI process and steady state, float32),
#   2. the golden suite's parity with -device cuda -dtype float64 (the suite's compare.py),
#   3. the API and gradient tests with NB_TEST_DEVICE=cuda,
#   4. the compiled path (-compile): B1-B3 steady state and tests/test_compiled.py on cuda.
# usage (repository root):  [PARTS="1 2 3 4"] benchmarks/gpu_check.sh [GOLDEN_DIR] [OUT_DIR]
# The C program's times come from a CPU run of benchmarks/run.py --c-bin ... on the CPU machine.
set -u
GOLDEN=${1:-../shared/golden}
OUT=${2:-gpu_check_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export NB_GOLDEN="$(cd "$GOLDEN" && pwd)"       # the tests' golden folder
PY=${PYTHON:-python3}
PARTS=${PARTS:-1 2 3 4}
part() { case " $PARTS " in *" $1 "*) return 0 ;; esac; return 1; }
nvidia-smi -L
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"

if part 4; then
  echo "== 4. compiled path on the GPU (tests in the background)"
  NB_TEST_DEVICE=cuda $PY -m pytest -q -p no:cacheprovider tests/test_compiled.py > "$OUT/cuda_compiled_tests.log" 2>&1 &
  $PY benchmarks/run.py --device cuda --compile --no-cli --cases B1,B2,B3 --repeat 5 \
      --json "$OUT/gpu_bench_compiled.json" 2>"$OUT/gpu_bench_compiled.err" | tee "$OUT/gpu_bench_compiled.txt"
  wait
  tail -4 "$OUT/cuda_compiled_tests.log"
fi
part 1 || part 2 || part 3 || exit 0

echo "== 1. benchmarks B1-B3 on the GPU"
part 1 && $PY benchmarks/run.py --device cuda --cases B1,B2,B3 --repeat 3 --json "$OUT/gpu_bench.json" 2>"$OUT/gpu_bench.err"
part 1 && tail -3 "$OUT/gpu_bench.err"

if part 2 || part 3; then
echo "== 2. golden parity, -device cuda -dtype float64 (4 shards in parallel) and 3. tests, at the same time"
part 3 && NB_TEST_DEVICE=cuda $PY -m pytest -q -p no:cacheprovider tests/test_gradients.py tests/test_api.py \
    > "$OUT/cuda_tests.log" 2>&1 &
$PY - "$GOLDEN" > "$OUT/shards.txt" <<'PYEOF'
import json, sys
names = sorted(json.load(open(sys.argv[1] + "/cases.json")))
for i in range(4):
    print(",".join(names[i::4]))
PYEOF
i=0
part 2 && while read -r shard; do
  $PY "$GOLDEN/compare.py" "$GOLDEN" "$PY -m nanobragg_torch -dtype float64 -device cuda" --only "$shard" \
      > "$OUT/parity_$i.log" 2>&1 &
  i=$((i + 1))
done < "$OUT/shards.txt"
wait
grep -h "parity:" "$OUT"/parity_*.log
grep -h -i "fail" "$OUT"/parity_*.log | head -20

fi
if part 3; then
  echo "== 3. API and gradient tests on cuda"
  tail -4 "$OUT/cuda_tests.log"
fi
