#!/usr/bin/env bash
# The 18-task grid of issue 31 (results/many_tasks): configs/many_tasks_minilm.yaml (MiniLM, the
# converged protocol: 1000 steps of 32, a validation every 100 steps on <= 300 examples per task,
# the best validation checkpoint tested on every whole test split) at n_train 100. Each method's
# rate is chosen on the validation average at seed 0 (task_adapter among 1e-4 and 3e-4, the rates
# around its converged choice; every other method among 3e-4 and 1e-3), then seeds 1 and 2 run at
# that rate. Resumable: rerun the same command after an interruption.
#   bash benchmarks/run_many_tasks_minilm.sh DATA_DIR METHOD [METHOD ...]
# One invocation is one lane; two lanes side by side on a 2-core machine:
#   bash benchmarks/run_many_tasks_minilm.sh <data dir> pha pha_lora &
#   bash benchmarks/run_many_tasks_minilm.sh <data dir> adapter task_adapter lora &
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=$1; shift
OUT=${OUT:-results/many_tasks}
if [[ -z "${PYTHON:-}" ]]; then PYTHON=python; [[ -x .venv/bin/python ]] && PYTHON=.venv/bin/python; fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# tuning of every method of the lane first (seed 0), then the seeds: seed outermost
for method in "$@"; do
  lrs="3e-4 1e-3"; [[ $method == task_adapter ]] && lrs="1e-4 3e-4"
  # shellcheck disable=SC2086
  "$PYTHON" benchmarks/sample_efficiency.py --config configs/many_tasks_minilm.yaml --methods "$method" \
    --tune-lr $lrs --n-train 100 --seeds 0 --output-dir "$OUT" -- "--data.data_dir=$DATA_DIR"
done
"$PYTHON" benchmarks/sample_efficiency.py --config configs/many_tasks_minilm.yaml --methods "$@" \
  --n-train 100 --seeds 0 1 2 --output-dir "$OUT" -- "--data.data_dir=$DATA_DIR"
