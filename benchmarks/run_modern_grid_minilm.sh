#!/usr/bin/env bash
# The multi-task methods users pick today against PHA (issue 51, results/modern): peft's Poly and MHR,
# AdapterHub's MTL-LoRA, a LoRA per task and Arrow's routing over those LoRAs (no task label), with
# PHA, PHA-LoRA and the shared adapter rerun at the same commit. The converged protocol: MiniLM,
# 1000 steps of 32, a validation every 100 steps on a fixed subset, the best validation checkpoint
# tested on every whole test split. Each method's rate is chosen on the validation average at seed 0
# of the setting's own n_train among LRS, with edge checks until the choice is bracketed
# (sample_efficiency.py --bracket); then seeds 1 and 2 at that rate. Arrow trains nothing: each of
# its rows evaluates the task_lora run of the same cell (trained first if missing), so arrow must be
# in task_lora's lane. Resumable: rerun the same command after an interruption.
#   bash benchmarks/run_modern_grid_minilm.sh DATA_DIR SETTING METHOD [METHOD ...]
# SETTING: glue100 or glue500 (the five local GLUE tasks, configs/glue_local_minilm.yaml, n_train
# 100 or 500), many100 (the 18-task mix, configs/many_tasks_minilm.yaml, n_train 100); rows go to
# results/modern/<SETTING>/runs.jsonl. Two lanes side by side on a 2-core machine, e.g.
#   bash benchmarks/run_modern_grid_minilm.sh <data dir> glue100 task_lora arrow poly pha &
#   bash benchmarks/run_modern_grid_minilm.sh <data dir> glue100 mhr mtl_lora pha_lora adapter &
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=$1; SETTING=$2; shift 2
case $SETTING in
  glue100) CONFIG=configs/glue_local_minilm.yaml; N_TRAIN=100 ;;
  glue500) CONFIG=configs/glue_local_minilm.yaml; N_TRAIN=500 ;;
  many100) CONFIG=configs/many_tasks_minilm.yaml; N_TRAIN=100 ;;
  *) echo "unknown SETTING '$SETTING'; valid: glue100 glue500 many100" >&2; exit 2 ;;
esac
(( $# )) || { echo "give at least one METHOD (e.g. task_lora arrow poly mhr mtl_lora pha pha_lora adapter)" >&2; exit 2; }
if [[ " $* " == *" arrow "* && " $* " != *" task_lora "* ]]; then
  echo "arrow evaluates task_lora's runs: put task_lora in the same lane (two lanes would train them twice)" >&2; exit 2
fi
OUT=${OUT:-results/modern/$SETTING}
LRS=${LRS:-"3e-4 1e-3"}
if [[ -z "${PYTHON:-}" ]]; then PYTHON=python; [[ -x .venv/bin/python ]] && PYTHON=.venv/bin/python; fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
RUN_ARGS=(-- "--data.data_dir=$DATA_DIR" --trainer.max_steps=1000 --trainer.val_check_interval=100 --model.optim.warmup_steps=100 ${EXTRA_ARGS:-})
# tuning of every method of the lane first (seed 0), then the seeds: seed outermost
for method in "$@"; do
  # shellcheck disable=SC2086
  "$PYTHON" benchmarks/sample_efficiency.py --config "$CONFIG" --methods "$method" --tune-lr $LRS --bracket \
    --tune-n-train "$N_TRAIN" --tune-seed 0 --n-train "$N_TRAIN" --seeds 0 --output-dir "$OUT" "${RUN_ARGS[@]}"
done
"$PYTHON" benchmarks/sample_efficiency.py --config "$CONFIG" --methods "$@" \
  --n-train "$N_TRAIN" --seeds 0 1 2 --output-dir "$OUT" "${RUN_ARGS[@]}"
