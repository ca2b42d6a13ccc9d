cd /work/grid35
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1 PYTHONPATH=/work/grid35
PY=/work/main/.venv/bin/python
P="--trainer.max_steps=1000 --trainer.val_check_interval=100 --model.optim.warmup_steps=100"
B=results/mechanisms/baselines
if [ "$1" = 1 ]; then
  $PY benchmarks/sample_efficiency.py --config configs/glue_local_minilm.yaml --methods pha_quiet --n-train 100 --seeds 1 2 --output-dir results/mechanisms --screen-against results/converged -- --data.data_dir=/work/shared/data $P >> results/mechanisms/lane_seeds.out 2>&1
  $PY benchmarks/sample_efficiency.py --config configs/glue_local_minilm.yaml --methods adapter lora --n-train 100 --seeds 0 1 2 --output-dir $B -- --data.data_dir=/work/shared/data $P >> $B/lane1.out 2>&1
else
  $PY benchmarks/sample_efficiency.py --config configs/glue_local_minilm.yaml --methods pha pha_lora --n-train 100 --seeds 0 1 2 --output-dir $B -- --data.data_dir=/work/shared/data $P >> $B/lane2.out 2>&1
fi
