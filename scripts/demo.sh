#!/usr/bin/env bash
# The modelcast demo, run by `scripts/dev.sh demo` after the build.
#
# The model-package path (synthesize a Llama model in the Hugging Face format, prepare it,
# verify every slice, show that a flipped byte is caught and named), then a scale-out on a
# cluster in this machine: a coordinator and four agents on loopback (no root needed), the
# model on agent-0's SSD, scaled from 1 copy to 4, with the operation's timeline; then a load
# spike replayed against modelcast and against local loading, with TTFT and GPU time compared.
set -euo pipefail
BUILD="${1:?usage: demo.sh BUILD_DIR}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MC="$BUILD/bin/modelcast"
WORK="$BUILD/demo"
rm -rf "$WORK"
mkdir -p "$WORK"

step() { printf '\n\033[1m== %s\033[0m\n$ %s\n' "$1" "${*:2}"; "${@:2}"; }

step "1. synthesize a ~100 MB Llama model (HF format: config.json + safetensors)" \
  "$MC" synth --preset small --seed 1 --out "$WORK/small-hf"
step "2. what the checkpoint holds" "$MC" inspect "$WORK/small-hf"
step "3. prepare it: 4 blocks of layers, 4 MiB checksummed slices, 4 KiB-aligned block files" \
  "$MC" prepare "$WORK/small-hf" "$WORK/small-pkg" --name llama-small --blocks 4 --slice-mib 4
step "4. the package" "$MC" inspect "$WORK/small-pkg"
ls -l "$WORK/small-pkg"
step "5. verify every slice checksum" "$MC" verify "$WORK/small-pkg"

cp -r "$WORK/small-pkg" "$WORK/damaged-pkg"
# Flip one byte in the middle of block 2's file.
size=$(stat -c %s "$WORK/damaged-pkg/block-0002.bin")
printf '\xff' | dd of="$WORK/damaged-pkg/block-0002.bin" bs=1 seek=$((size / 2 + 12345)) conv=notrunc status=none
printf '\n\033[1m== 6. a copy with one flipped byte: verify names the slice and fails\033[0m\n$ %s\n' "$MC verify $WORK/damaged-pkg"
if "$MC" verify "$WORK/damaged-pkg"; then
  echo "demo: verify did not catch the flipped byte" >&2
  exit 1
fi

# ---- the cluster: cluster-configs/local.yaml (a coordinator and agent-0..3 on 127.0.0.1) ----
CLUSTER="$WORK/cluster"
mkdir -p "$CLUSTER"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$CLUSTER/token"
export MODELCAST_TOKEN_FILE="$CLUSTER/token" MODELCAST_COORDINATOR=127.0.0.1:7300
sed -e "s|/tmp/modelcast-local/coordinator|$CLUSTER/coordinator|; s|/tmp/modelcast-local/token|$CLUSTER/token|" \
  "$ROOT/cluster-configs/local.yaml" > "$CLUSTER/cluster.yaml"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
"$BUILD/bin/modelcast-coordinator" --config "$CLUSTER/cluster.yaml" > "$CLUSTER/coordinator.out" 2> "$CLUSTER/coordinator.log" &
PIDS+=($!)
step "7. put the model on agent-0's SSD (through its store: host pool, checked, written behind)" \
  "$MC" store import "$WORK/small-pkg" --ssd-dir "$CLUSTER/agent-0"
for i in 0 1 2 3; do
  sed -e "s|@NODE@|agent-$i|; s|@PORT@|$((7400 + i))|; s|@SSD@|$CLUSTER/agent-$i|; s|@TOKEN_FILE@|$CLUSTER/token|" \
    "$ROOT/cluster-configs/local-agent.yaml.in" > "$CLUSTER/agent-$i.yaml"
  "$BUILD/bin/modelcast-agent" --config "$CLUSTER/agent-$i.yaml" > "$CLUSTER/agent-$i.out" 2> "$CLUSTER/agent-$i.log" &
  PIDS+=($!)
done
for _ in $(seq 100); do
  "$MC" cluster status --json 2>/dev/null | grep -q '"alive":true.*"alive":true.*"alive":true.*"alive":true' && break
  sleep 0.1
done
step "8. register the model with the coordinator" "$MC" models --register "$WORK/small-pkg"
step "9. the cluster: four agents up, the model on agent-0's SSD" "$MC" cluster status
step "10. the coordinator's plan for 3 more replicas on this cluster (nothing moves)" \
  "$MC" plan --dry-run llama-small -n 3 --ticks 6
step "11. scale llama-small from 1 copy to 4 (agent-0 sends, agents 1-3 receive and forward)" \
  "$MC" scale-out llama-small -n 3 --wait
step "12. every agent now holds it; three instances" "$MC" models
step "13. release one replica (it stays warm in host memory)" "$MC" scale-in llama-small -n 1 --wait
step "14. the instances left" "$MC" instances llama-small
cleanup
PIDS=()

# ---- a load spike, end to end (bench/loadspike): the same step in load, once scaled by
# modelcast (multicast + execute-while-load) and once by every node loading its own SSD copy
# (ServerlessLLM-style), each on a fresh loopback cluster of 5 nodes (node-1 the head; workers'
# SSDs emulated at 3 MB/s; the router's engines paced like an accelerator, 150 ms a step). ----
step "15. a load spike: modelcast against local loading (about 2 minutes)" \
  /usr/bin/python3 "$ROOT/bench/loadspike/loadspike.py" box --loopback --nodes 5 --min-nodes 1 --duration 36 \
  --rate 1.5 --keep-alive 10 --modes modelcast,local --work "$WORK/loadspike" --out "$WORK/loadspike/report"
printf '\n\033[1mdemo done.\033[0m Files are in %s (logs in %s; the spike'"'"'s report and pictures in %s)\n' \
  "$WORK" "$CLUSTER" "$WORK/loadspike/report"
