#!/usr/bin/env bash
# One GPU lease, one call: what this project needs measured on a GPU, most valuable first, each
# step time-boxed so that the whole fits one command of the device tool (10 minutes at most).
#
# Prepare here (a machine with pip and the registries):   make device-wheels
# Then one call of the device tool, from the repository root:
#   run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=590)
# What it measures lands in $OUT (the tool brings it back); commit it under reports/gpu/.
#
# The device image has Python 3.12 with torch, pandas, pyyaml and pytest, but not the
# environment's packages (minigrid, gymnasium and their needs): `make device-wheels` downloads
# them as wheels into .whl/, and step 0 installs them into /tmp/site. No network there.
#
# Steps (each skipped, saying so, when too little of the budget is left):
#   1. the CUDA tests (tests/test_multirun.py, whose CUDA-graph test skips without a GPU);
#   2. IQL throughput on CUDA, eager stack vs one run at a time (python -m benchmarks.iql_throughput);
#   3. the learning question no CPU budget answers: sparse, oracle and filtered BC, 5 training
#      seeds each, trained for as many updates as LEARN_LIMIT seconds allow on the validation
#      split (python -m experiments.learning --time-limit-s), evaluated every EVAL_EVERY updates and where
#      it stops (one evaluation, 6,000 CPU-stepped episodes, takes a minute or two);
#   4. throughput with torch.compile and CUDA graphs (compiling can take minutes: last).
#
# GPU_SESSION_SMOKE=1 runs steps 1 and 3 at toy size on the CPU (tests/test_gpu_session.py does).
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
BUDGET_S=${BUDGET_S:-560}
OUT=${OUT:-/tmp/gpu_session_out}
mkdir -p "$OUT"
LOG="$OUT/session.log"
export PYTHONUNBUFFERED=1 PYGAME_HIDE_SUPPORT_PROMPT=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY=${PYTHON:-python3}

say() { echo "[gpu_session $(($(date +%s) - START))s] $*" | tee -a "$LOG"; }
left() { echo $((BUDGET_S - ($(date +%s) - START))); }
# step NAME CAP_S MIN_S COMMAND...: runs COMMAND under timeout min(CAP_S, what is left - 5),
# or skips it when less than MIN_S would be left.
step() {
  local name=$1 cap=$2 need=$3; shift 3
  local limit; limit=$(left); limit=$((limit - 5)); [ "$limit" -gt "$cap" ] && limit=$cap
  if [ "$limit" -lt "$need" ]; then say "SKIP $name: ${limit}s left, needs ${need}s"; return 0; fi
  say "START $name (limit ${limit}s)"
  timeout "$limit" "$@" >>"$OUT/$name.log" 2>&1
  local rc=$?
  say "END $name rc=$rc"
}

if [ "${GPU_SESSION_SMOKE:-0}" = 1 ]; then
  DEVICE=cpu; RUNS=2; STEPS=3; LEARN_STEPS=4; EVAL_EVERY=2; EPISODES=1; SEEDS="100"; LEARN_LIMIT=0
  DATA_ARGS=(--dataset "episodes_per_k=4,ks=[1]"); KS="1"; VARIANT="batch_size=8,hidden_dim=16"
  PYTEST_K=(-k "cuda_graphs_flag")
else
  DEVICE=cuda; RUNS=41; STEPS=50; LEARN_STEPS=200000; EVAL_EVERY=${EVAL_EVERY:-20000}; EPISODES=50
  SEEDS="100 101 102 103 104"; LEARN_LIMIT=${LEARN_LIMIT:-200}; DATA_ARGS=(); KS="1 2 3 4"; VARIANT="device=cuda"
  PYTEST_K=()
fi

# 0. Packages the image lacks, the machine, and the dataset the benchmark reads (data/).
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >>"$LOG" 2>&1 && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{ command -v nvidia-smi >/dev/null && nvidia-smi; $PY -c "import torch, minigrid, sys; print(sys.version); print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } >"$OUT/machine.txt" 2>&1
say "machine: $(tail -1 "$OUT/machine.txt")"
if [ "${GPU_SESSION_SMOKE:-0}" != 1 ] && [ ! -f data/manifest.json ]; then
  step collect 120 30 $PY -m rgvlm.data collect
fi

# 1. CUDA tests.
step cuda_tests 120 30 $PY -m pytest -q -p no:cacheprovider tests/test_multirun.py "${PYTEST_K[@]}"

# 2. Throughput, eager.
if [ -f data/manifest.json ]; then
  step throughput 90 30 $PY -m benchmarks.iql_throughput --device "$DEVICE" --runs "$RUNS" --steps "$STEPS" \
    --out "$OUT/iql_throughput_$DEVICE.json"
else
  say "SKIP throughput: no data/ (smoke run)"
fi

# 3. Many updates on the validation split: does the oracle's lead over sparse open with training?
step learning 330 60 $PY -m experiments.learning --name "gpu_updates_$DEVICE" --out "$OUT" \
  --data-root /tmp/gpu_session_data "${DATA_ARGS[@]}" --reward-sets sparse oracle bc_success --seeds $SEEDS \
  --variant "$VARIANT" --steps "$LEARN_STEPS" --eval-every "$EVAL_EVERY" --time-limit-s "$LEARN_LIMIT" \
  --ks $KS --episodes "$EPISODES" --temperatures 0.5

# 4. Throughput with torch.compile (and CUDA graphs on a GPU).
if [ -f data/manifest.json ] && [ "$DEVICE" = cuda ]; then
  step throughput_compiled 200 60 $PY -m benchmarks.iql_throughput --device cuda --runs "$RUNS" --steps "$STEPS" \
    --compile --chunk-sizes --out "$OUT/iql_throughput_cuda_compiled.json"
fi
say "done in $(($(date +%s) - START))s; files: $(ls "$OUT" | tr '\n' ' ')"
