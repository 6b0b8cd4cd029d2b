#!/usr/bin/env bash
# Our CPU engine beside torchscale 0.3.0 on the CPU, same machine, same run, the shipped model.
#
#   bash tools/cpu_bench/run.sh     # REPS=5 THREADS=2 DECODE=400 by default
#
# Builds the release CLI (or uses RETNET_BIN), makes a Python venv with PyTorch (PyPI's wheel,
# run on the CPU) and torchscale 0.3.0 unless RETNET_TS_VENV points at one, then alternates the
# two engines REPS times: ours = `retnet generate --backend cpu` (greedy, DECODE tokens after
# "\n"; prefill = a 512-byte prompt of tools/train/val_sample.txt), torchscale =
# tools/cpu_bench/torchscale_cpu.py (recurrent decode, parallel prefill), both limited to
# THREADS threads. Prints the raw lines and a table of medians with min–max, and saves them to
# $OUT (default docs/runs/cpu-bench.txt).
set -euo pipefail
cd "$(dirname "$0")/../.."
REPS=${REPS:-5}
DECODE=${DECODE:-400}
THREADS=${THREADS:-2}
OUT=${OUT:-docs/runs/cpu-bench.txt}
VENV=${RETNET_TS_VENV:-/tmp/retnet-torchscale-venv}
MODEL=models/retnet-shakespeare
PROMPT_FILE=tools/train/val_sample.txt

BIN=${RETNET_BIN:-target/release/retnet}
if [ -z "${RETNET_BIN:-}" ]; then cargo build --release -p retnet-cli >&2; fi

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch, torchscale, fairscale, safetensors" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch numpy safetensors
  "$VENV/bin/pip" install -q --no-deps torchscale==0.3.0 timm==0.6.13 einops
  "$VENV/bin/pip" install -q --no-deps --no-build-isolation fairscale==0.4.0
fi

export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
prompt=$(head -c 512 "$PROMPT_FILE")
raw=$(mktemp)
{
  echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null || echo ?) $(nproc) cores, load: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
} | tee "$raw"
for rep in $(seq 1 "$REPS"); do
  d=$("$BIN" generate --backend cpu --temperature 0 --max-tokens "$DECODE" 2>&1 >/dev/null | grep -o 'decode: [0-9]* tokens, [0-9.]* tok/s' | grep -o '[0-9.]* tok/s' | cut -d' ' -f1)
  p=$("$BIN" generate --backend cpu --temperature 0 --max-tokens 1 --prompt "$prompt" 2>&1 >/dev/null | grep -o 'prefill: [0-9]* tokens, [0-9.]* tok/s' | grep -o '[0-9.]* tok/s' | cut -d' ' -f1)
  echo "{\"engine\": \"ours\", \"rep\": $rep, \"decode_tok_s\": $d, \"prefill_tok_s\": $p, \"load\": \"$(cut -d' ' -f1 /proc/loadavg)\"}" | tee -a "$raw"
  "$VENV/bin/python" tools/cpu_bench/torchscale_cpu.py --model "$MODEL" --prompt-file "$PROMPT_FILE" \
    --threads "$THREADS" --decode "$DECODE" --reps 1 | tee -a "$raw"
done
python3 - "$raw" <<'PY' | tee -a "$raw"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
def col(engine, key):
    v = [r[key] for r in rows if r["engine"] == engine]
    return f"{statistics.median(v):,.0f} ({min(v):,.0f}–{max(v):,.0f})" if v else "–"
print()
print("| measure (tok/s, median (min–max) of %d runs) | ours, CPU engine | torchscale 0.3.0 |" % len([r for r in rows if r["engine"] == "ours"]))
print("| --- | ---: | ---: |")
decode = rows[-1].get("decode_tokens", "?") if rows else "?"
print(f"| decode, batch 1, greedy, {decode} tokens | {col('ours', 'decode_tok_s')} | {col('torchscale', 'decode_tok_s')} (recurrent form) |")
print(f"| prefill, 512 tokens | {col('ours', 'prefill_tok_s')} | {col('torchscale', 'prefill_parallel_tok_s')} (parallel form) |")
PY
mkdir -p "$(dirname "$OUT")"
cp "$raw" "$OUT"
echo "saved $OUT" >&2
