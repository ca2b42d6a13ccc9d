#!/usr/bin/env bash
# Screening of PHA's generator mechanisms (issue 35; benchmarks/README.md, "Screening the generator's
# mechanisms"): each VARIANT (sample_efficiency.MECHANISMS, the override files configs/methods/<VARIANT>.yaml)
# at n_train 100 and 500, seed 0, with the converged protocol (run_converged_minilm.sh) and PHA's
# converged learning rate (REFERENCE/chosen_lr.json, never tuned again); selection and the
# screening read validation only (screening.md, beside PHA's and PHA-LoRA's rows of REFERENCE).
# Resumable: rerun the same command after an interruption. Arguments after `--` go to every `pha fit`
# (after the protocol's, so they override it: e.g. a smoke run with --trainer.max_steps=20); N_TRAIN
# and OUT change the sizes and the output folder.
#   bash benchmarks/run_mechanisms_minilm.sh DATA_DIR VARIANT [VARIANT ...] [-- PHA_FIT_ARGS ...]
# e.g. two lanes on a 2-core machine:
#   bash benchmarks/run_mechanisms_minilm.sh <data dir> pha_zero_scale pha_bounded pha_zero_scale_task &
#   bash benchmarks/run_mechanisms_minilm.sh <data dir> pha_apart pha_quiet pha_mechanisms &
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=$1; shift
variants=(); while (( $# )) && [[ $1 != -- ]]; do variants+=("$1"); shift; done
(( $# )) && shift  # the `--`
OUT=${OUT:-results/mechanisms}
REFERENCE=${REFERENCE:-results/converged}
N_TRAIN=${N_TRAIN:-"100 500"}
if [[ -z "${PYTHON:-}" ]]; then PYTHON=python; [[ -x .venv/bin/python ]] && PYTHON=.venv/bin/python; fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT"
# every mechanism takes PHA's rate (sample_efficiency.lr_for): PHA's converged choice, copied once
[[ -f $OUT/chosen_lr.json ]] || "$PYTHON" -c \
  'import json, sys; print(json.dumps({"pha": json.load(open(sys.argv[1]))["pha"]}, indent=1))' \
  "$REFERENCE/chosen_lr.json" > "$OUT/chosen_lr.json"
# shellcheck disable=SC2086
"$PYTHON" benchmarks/sample_efficiency.py --config configs/glue_local_minilm.yaml --methods "${variants[@]}" \
  --n-train $N_TRAIN --seeds 0 --output-dir "$OUT" --screen-against "$REFERENCE" -- "--data.data_dir=$DATA_DIR" \
  --trainer.max_steps=1000 --trainer.val_check_interval=100 --model.optim.warmup_steps=100 "$@"
