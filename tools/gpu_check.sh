#!/usr/bin/env bash
# The GPU checks and figures of asmlp-mm in one run:
#   1. the device tests on the GPU (tests/test_devices.py, tests/test_triton_kernel.py);
#   2. the speed comparison of docs/benchmarks.md on the GPU, batch 64: the shift alone,
#      AS-MLP-T vs the published way vs Swin-T in fp32, channels-last and fp16 autocast;
#   3. the backbone at a detection size (800x1216, batch 2), fp32 and fp16 autocast;
#   4. the paper's throughput protocol (benchmark.py --paper-protocol) for AS-MLP-T/S/B,
#      beside the paper's 1047/619/455 img/s;
#   5. with COMPILE=1, the same comparison under torch.compile (minutes more).
#
#   bash tools/gpu_check.sh [OUT_DIR]        # default work_dirs/gpu_check
#
# Each step writes its output (and the benchmark its JSON) to OUT_DIR and the run goes on
# after a failing step; the exit status says whether all passed. Not yet run on a GPU (a
# few minutes expected on one H100).
# Uses $PYTHON (default python3), which must have a CUDA build of torch. On an offline
# machine that lacks the OpenMMLab packages, fetch their wheels elsewhere
# (`bash tools/fetch_wheels.sh .whl`) and set WHEELS=.whl: they go to a temporary folder on
# PYTHONPATH, and nothing installed there changes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-work_dirs/gpu_check}
PY=${PYTHON:-python3}
BATCH=${BATCH:-64}
REPEATS=${REPEATS:-10}
DEVICE=${DEVICE:-cuda}  # DEVICE=cpu runs the same steps on the CPU (to try this script)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
status=0
step() {  # step NAME COMMAND...: run it, keep its output in OUT/NAME.txt
    local name=$1
    shift
    echo "== $name: $*"
    "$@" 2>&1 | tee "$OUT/$name.txt"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || { echo "== $name failed (exit $rc)"; status=1; }
}

if [ -n "${WHEELS:-}" ]; then
    SITE=$(mktemp -d)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/*.whl \
        || exit 1
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
command -v nvidia-smi >/dev/null && nvidia-smi | tee "$OUT/nvidia-smi.txt"
if [ "$DEVICE" != cpu ]; then
    "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.__version__, torch.cuda.get_device_name())" || exit 1
fi

BENCH=("$PY" tools/analysis/benchmark.py)
CONFIG=configs/asmlp/asmlp-tiny_8xb128_in1k.py
step tests "$PY" -m pytest -q -p no:cacheprovider tests/test_devices.py \
    tests/test_triton_kernel.py
step compare "${BENCH[@]}" --compare --device "$DEVICE" --batch "$BATCH" --repeats "$REPEATS" \
    --sections shift models variants --out "$OUT/compare.json"
step backbone-800x1216-fp32 "${BENCH[@]}" "$CONFIG" --part backbone --device "$DEVICE" --batch 2 \
    --shape 800 1216 --repeats "$REPEATS" --out "$OUT/backbone-800x1216-fp32.json"
step backbone-800x1216-amp "${BENCH[@]}" "$CONFIG" --part backbone --device "$DEVICE" --batch 2 \
    --shape 800 1216 --repeats "$REPEATS" --amp --out "$OUT/backbone-800x1216-amp.json"
for arch in tiny small base; do
    step "paper-throughput-$arch" "${BENCH[@]}" "configs/asmlp/asmlp-${arch}_8xb128_in1k.py" \
        --paper-protocol --device "$DEVICE" --out "$OUT/paper-throughput-$arch.json"
done
if [ "${COMPILE:-0}" = 1 ]; then
    step compile "${BENCH[@]}" --compare --device "$DEVICE" --batch "$BATCH" --repeats "$REPEATS" \
        --sections compile --out "$OUT/compile.json"
fi
result=$([ $status -eq 0 ] && echo 'all steps passed' || echo 'some steps failed')
echo "== done: $result; outputs in $OUT"
exit $status
