cd /work/grid35
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1 PYTHONPATH=/work/grid35
PY=/work/main/.venv/bin/python
P="--trainer.max_steps=1000 --trainer.val_check_interval=100 --model.optim.warmup_steps=100"
B=results/mechanisms/baselines
SE="$PY benchmarks/sample_efficiency.py --config configs/glue_local_minilm.yaml --n-train 500"
if [ "$1" = 1 ]; then
  $SE --methods pha_quiet --seeds 1 2 --output-dir results/mechanisms --screen-against results/converged -- --data.data_dir=/work/shared/data $P >> results/mechanisms/lane500_seeds.out 2>&1
  $SE --methods pha_lora --seeds 0 1 2 --output-dir $B -- --data.data_dir=/work/shared/data $P >> $B/lane500_1.out 2>&1
  $SE --methods lora --seeds 0 1 2 --output-dir $B -- --data.data_dir=/work/shared/data $P >> $B/lane500_1.out 2>&1
else
  $SE --methods pha --seeds 0 1 2 --output-dir $B -- --data.data_dir=/work/shared/data $P >> $B/lane500_2.out 2>&1
  $SE --methods adapter --seeds 0 1 2 --output-dir $B -- --data.data_dir=/work/shared/data $P >> $B/lane500_2.out 2>&1
fi
