#!/usr/bin/env bash
# One call on the lent GPU machine (see ../shared/docs/device-vulkan.md and tools/device/README.md):
# our benchmarks, verification and long-context runs beside the peers, all in the same call.
#   bash tools/device/run.sh PART...   parts: info bench bench-1m hybrid micro peers peers-xl verify long loads
# Expects (carried): .gl/*.deb (the Vulkan loader), .devbin/{retnet,xtask} (release builds),
# .whl/*.whl (torchscale, fla, fairscale). Writes everything under $OUT, a summary last.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
bin=.devbin
summary=()
step() { # name, command...
  local name=$1; shift
  local t0=$(date +%s)
  "$@" > "$OUT/$name.txt" 2>&1; local rc=$?
  summary+=("$name rc=$rc $(( $(date +%s) - t0 ))s")
  tail -n 40 "$OUT/$name.txt"
}
peers_setup() {
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
  export PYTHONPATH=/tmp/site
}
for part in "$@"; do
  case $part in
    info)
      step nvidia-smi nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
      step devices "$bin/retnet" devices ;;
    bench)  step bench "$bin/xtask" bench --quick ${BENCH_ARGS:-} --json "$OUT/bench.json" ;;
    bench-1m)
      # The decode latency and session memory after a 1,048,576-token chunkwise prefill (f16).
      step bench-1m "$bin/xtask" bench --quick --weights f16 --contexts 1048576 --json "$OUT/bench-1m.json" ;;
    bench-all) step bench-all "$bin/xtask" bench --json "$OUT/bench-all.json" ;;
    hybrid)
      # Hybrid checkpoints (4 of fla-1.3B's 24 layers softmax attention): decode at 1k and 64k
      # contexts, full attention (memory grows) and a 2048-token window (flat).
      step bench-hybrid "$bin/xtask" bench --quick --preset fla_hybrid_1.3b ${HYBRID_ARGS:-} --json "$OUT/bench-hybrid.json"
      step bench-hybrid-swa "$bin/xtask" bench --quick --preset fla_hybrid_1.3b_swa ${HYBRID_ARGS:-} --json "$OUT/bench-hybrid-swa.json" ;;
    micro)  step micro "$bin/xtask" bench --micro --json "$OUT/micro.json" ;;
    peers)  peers_setup; step peers python3 tools/device/peer_bench.py --quick ;;
    peers-all) peers_setup; step peers-all python3 tools/device/peer_bench.py ;;
    peers-xl)
      # The full shapes (decode b1 and b8, prefill 512/2048/8192) for retnet_xl alone: the
      # script's preset list narrowed, nothing else changed.
      peers_setup
      sed 's/\["retnet_base", "retnet_medium", "retnet_xl"\]/["retnet_xl"]/' \
        tools/device/peer_bench.py > /tmp/peer_bench_xl.py
      step peers-xl python3 /tmp/peer_bench_xl.py ;;
    verify) step verify "$bin/xtask" verify --json "$OUT/verify.json"
      echo "== verify failures"; grep -E "FAIL" "$OUT/verify.txt" | head -100 ;;
    verify-quick) step verify-quick "$bin/xtask" verify --quick --json "$OUT/verify-quick.json" ;;
    long)
      step long-1m "$bin/xtask" long-context --tokens 1000000 --cpu-tokens 100000 --json "$OUT/long-1m.json"
      step chunkwise-65536 "$bin/xtask" long-context --chunkwise-check 65536 --json "$OUT/chunkwise-65536.json" ;;
    loads)
      # Streamed loads of real-size checkpoints (random weights): fla-hub/retnet-1.3B-100B's shape
      # and torchscale's retnet_7b shape (6.7 B parameters, 13.5 GB of bf16), made here. Wall
      # time and the peak RSS of the loading process (getrusage of the child).
      # LOADS narrows the list (e.g. LOADS="7b:q4"); only the checkpoints it names are made.
      loads=${LOADS:-1.3b:f16 7b:f16 7b:int8 7b:q4}
      case " $loads" in *" 1.3b:"*)
        python3 tools/make_random_checkpoint.py /tmp/retnet-1.3b > "$OUT/make-1.3b.txt" 2>&1 ;; esac
      case " $loads" in *" 7b:"*)
        python3 tools/make_random_checkpoint.py /tmp/retnet-7b --shape torchscale-7b > "$OUT/make-7b.txt" 2>&1 ;; esac
      for load in $loads; do
        model=${load%%:*}; weights=${load##*:}
        step "load-$model-$weights" python3 -c 'import resource,subprocess,sys,time
t=time.time(); rc=subprocess.call(sys.argv[1:]); dt=time.time()-t
print(f"rc={rc} seconds={dt:.1f} peak_rss_gb={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1e6:.3f}")' \
          "$bin/retnet" logits --model "/tmp/retnet-$model" --backend gpu --weights "$weights" \
          --mode recurrent --tokens 1,2,3 --out "/tmp/logits-$model-$weights.safetensors"
      done ;;
    *) echo "unknown part $part"; exit 2 ;;
  esac
done
echo "== summary"; printf '%s\n' "${summary[@]}"
