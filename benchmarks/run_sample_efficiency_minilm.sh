#!/usr/bin/env bash
# The committed sample-efficiency results: MiniLM (from its PyPI package) on the GLUE tasks with
# local train files, 150 steps of 32 mixed examples per run (≈10 passes over 5×100 examples,
# ≈2 over 5×500), one validation at the end. Resumable: rerun to continue an interrupted grid.
#   bash benchmarks/run_sample_efficiency_minilm.sh DATA_DIR   (the folder holding glue/: docs/data.md)
# Uses $PYTHON (default: the project's .venv if present, else python). With two runs sharing a
# small machine, OMP_NUM_THREADS=1 keeps them from oversubscribing the cores.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${1:?usage: bash benchmarks/run_sample_efficiency_minilm.sh DATA_DIR}
OUT=results/sample_efficiency
if [[ -z "${PYTHON:-}" ]]; then PYTHON=python; [[ -x .venv/bin/python ]] && PYTHON=.venv/bin/python; fi
RUN_ARGS=(-- "--data.data_dir=$DATA_DIR" --trainer.max_steps=150 --trainer.val_check_interval=150)
for seed in 0 1 2; do
  "$PYTHON" benchmarks/sample_efficiency.py --config configs/glue_local_minilm.yaml \
    --methods adapter hyperformer hyperdecoder pha --n-train 100 500 --seeds "$seed" --output-dir "$OUT" "${RUN_ARGS[@]}"
  "$PYTHON" benchmarks/sample_efficiency.py --config configs/glue_local_minilm.yaml \
    --methods pha_no_ir pha_no_pro pha_no_contrastive --n-train 100 --seeds "$seed" --output-dir "$OUT" "${RUN_ARGS[@]}"
done
