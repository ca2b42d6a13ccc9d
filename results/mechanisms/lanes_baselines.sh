# Issue 35: the baselines rerun at the candidate's commit (beeaee6), one lane per call.
# usage: bash results/mechanisms/lanes_baselines.sh N_TRAIN METHOD... (finished runs are skipped)
cd /work/grid35
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1 PYTHONPATH=/work/grid35
PY=/work/main/.venv/bin/python
N=$1; shift
B=results/mechanisms/baselines
$PY benchmarks/sample_efficiency.py --config configs/glue_local_minilm.yaml --n-train $N --methods "$@" \
  --seeds 0 1 2 --output-dir $B -- --data.data_dir=/work/shared/data \
  --trainer.max_steps=1000 --trainer.val_check_interval=100 --model.optim.warmup_steps=100 >> $B/lane_n$N.out 2>&1
