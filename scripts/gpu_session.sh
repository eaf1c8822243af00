#!/usr/bin/env bash
# GPU measurements in one command, for a lent GPU machine (the device tool). From this machine:
#   bash scripts/gpu_wheels.sh        # once: builds .gpu-wheels/ (about 10 MB)
#   device run, carry [".gpu-wheels"], command "bash scripts/gpu_session.sh STEP..."
# STEP: tests kernels engines train filter generate (or all), and example / example-compile: `bench example` against diffusers'
# train_instruct_pix2pix.py, which must be copied to .example/ here and carried (it is not ours to commit; the
# device also needs the `datasets` package). Each result lands in $OUT (the device tool brings it
# back) as bench JSON; copy the files into bench/results/ and run `python scripts/perf_table.py`.
# A device call may run 10 minutes: split the steps over calls if needed (engines and train take the longest).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/relight-gpu-out}
mkdir -p "$OUT"
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(all)
[ "${steps[0]}" = all ] && steps=(tests kernels engines train filter generate)

if [ -z "${SKIP_INSTALL:-}" ]; then
  # --no-deps: keep the image's own torch/CUDA stack; the wheels hold only what it lacks.
  "$PY" -m pip install -q --no-deps --no-index .gpu-wheels/*.whl || exit 2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 RELIGHT_NO_PROGRESS=1
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
gpu=$("$PY" -c "import torch,re; print(re.sub(r'[^a-z0-9]+','-',torch.cuda.get_device_name(0).lower()).strip('-') if torch.cuda.is_available() else 'cpu')")
rs() { "$PY" -m relight_stream.cli --device "${DEVICE:-cuda}" "$@"; }
status=0
for step in "${steps[@]}"; do
  echo "=== $step ($(date -u +%H:%M:%S))"
  case "$step" in
    tests)    "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/unit/test_kernels_gpu.py tests/unit/test_xp.py \
                tests/unit/test_engines_compile.py tests/unit/test_filter_photometric.py tests/unit/test_train_bench.py \
                tests/unit/test_decode_dali.py tests/integration/test_train_e2e.py \
                2>&1 | tail -15 | tee "$OUT/gpu-tests-$gpu.txt" ;;
    kernels)  rs bench kernels ${TINY:+--tiny} --out "$OUT/kernels-full-cupy-$gpu.json" ;;
    engines)  rs bench engines ${TINY:+--tiny} --compare eager,compile --precision bf16 --batch-sizes "${BATCHES:-1,8,32}" \
                --out "$OUT/engines-full-eager-vs-compile-bf16-$gpu.json" ;;
    train)    rs bench train ${TINY:+--tiny} --precision bf16 --out "$OUT/train-full-bf16-$gpu.json" ;;
    filter)   rs bench filter ${TINY:+--tiny} --out "$OUT/filter-full-$gpu.json" ;;
    example|example-compile)  # two device calls: eager rows, then the compiled row (each about 6-8 minutes)
              b=eager; [ "$step" = example-compile ] && b=compile
              if [ ! -f .example/train_instruct_pix2pix.py ] || ! "$PY" -c "import datasets" 2>/dev/null; then
                echo "$step: needs .example/train_instruct_pix2pix.py (carried) and the datasets package"; false
              else rs bench example ${TINY:+--tiny} --example-script .example/train_instruct_pix2pix.py --precision bf16 \
                --backend $b --out "$OUT/example-$b-bf16-$gpu.json"; fi ;;
    generate) rs bench generate ${TINY:+--tiny} --backend neural --out "$OUT/generate-neural-$gpu.json" ;;
    *) echo "unknown step $step"; status=2 ;;
  esac
  rc=$?; [ $rc -ne 0 ] && { echo "step $step exited $rc"; status=1; }
done
ls -la "$OUT"
exit $status
