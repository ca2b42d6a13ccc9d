#!/usr/bin/env bash
# The converged sample-efficiency grid (benchmarks/README.md, "The converged protocol"): MiniLM on the five
# local GLUE tasks; every method's learning rate chosen on the validation average at n_train 100,
# seed 0, among LRS; then n_train 100 and 500 × seeds 0-2 with that rate; 1000 steps of 32, a
# validation every 100 steps (on a fixed subset), the best validation checkpoint tested on the
# whole test split. Resumable: rerun the same command after an interruption.
#   bash benchmarks/run_converged_minilm.sh DATA_DIR METHOD [METHOD ...]
# One invocation is one lane; run two lanes side by side on a 2-core machine, e.g.
#   bash benchmarks/run_converged_minilm.sh <data dir> pha task_adapter hyperdecoder &
#   bash benchmarks/run_converged_minilm.sh <data dir> adapter hyperformer &
# then, once PHA's and the adapter's rates are chosen, the ablations and the shared label-word
# output layer (at n_train 100; they take their base method's rate):
#   bash benchmarks/run_converged_minilm.sh <data dir> pha_no_ir pha_no_pro pha_no_contrastive adapter+label_words pha+label_words
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=$1; shift
OUT=${OUT:-results/converged}
LRS=${LRS:-"3e-4 1e-3"}
if [[ -z "${PYTHON:-}" ]]; then PYTHON=python; [[ -x .venv/bin/python ]] && PYTHON=.venv/bin/python; fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
RUN_ARGS=(-- "--data.data_dir=$DATA_DIR" --trainer.max_steps=1000 --trainer.val_check_interval=100 --model.optim.warmup_steps=100)
tuned=(); plain=()
# PHA's variants (sample_efficiency.PHA_VARIANTS) and the +label_words variants take their base
# method's rate and run at n_train 100 only; every other method (pha_lora included) is tuned
for method in "$@"; do
  case $method in
    pha_no_ir | pha_no_pro | pha_no_contrastive | pha_pro_infonce | *+*) plain+=("$method") ;;
    *) tuned+=("$method") ;;
  esac
done
for method in "${tuned[@]}"; do
  # shellcheck disable=SC2086
  "$PYTHON" benchmarks/sample_efficiency.py --config configs/glue_local_minilm.yaml --methods "$method" \
    --tune-lr $LRS --n-train 100 500 --seeds 0 1 2 --output-dir "$OUT" "${RUN_ARGS[@]}"
done
if (( ${#plain[@]} )); then
  "$PYTHON" benchmarks/sample_efficiency.py --config configs/glue_local_minilm.yaml --methods "${plain[@]}" \
    --n-train 100 --seeds 0 1 2 --output-dir "$OUT" "${RUN_ARGS[@]}"
fi
