#!/usr/bin/env bash
# The cluster in a box's links all busy at once, the baseline a multicast is held to: in the netns
# cluster (scripts/netns-cluster.sh), every node sends to the next with iperf3 at the same time
# (a ring: each uplink and each downlink carries one flow, as in a binomial pipeline's steady
# state), against one pair alone in the same run. Prints each flow's goodput and the ratio.
#
#   bench/link_ring.sh [--nodes 9] [--rate 250mbit] [--secs 15] [--cc cubic]
#
# Needs root, iproute2 and iperf3 (scripts/dev.sh installs it). Its namespaces are prefixed `rg`
# and removed at the end; its iperf3 servers are one-off, and killed by PID if still there.
set -euo pipefail
nodes=9 rate=250mbit secs=15 cc=cubic
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) nodes="$2"; shift 2 ;;
    --rate) rate="$2"; shift 2 ;;
    --secs) secs="$2"; shift 2 ;;
    --cc) cc="$2"; shift 2 ;;
    *) echo "link_ring: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
[ "$nodes" -ge 2 ] || { echo "link_ring: --nodes must be at least 2" >&2; exit 2; }
root="$(cd "$(dirname "$0")/.." && pwd)"
cluster="$root/scripts/netns-cluster.sh"
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  "$cluster" down --prefix rg >/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
"$cluster" up "$nodes" --rate "$rate" --cc "$cc" --prefix rg >/dev/null
ip4() { echo "10.77.0.$((10 + $1))"; }
server() {  # node, port: a one-off server
  ip netns exec "rg-n$1" iperf3 -s -1 -p "$2" >/dev/null 2>&1 &
  pids+=($!)
}
server 2 15301
for i in $(seq 1 "$nodes"); do server "$i" 15300; done
sleep 1
ip netns exec rg-n1 iperf3 -c "$(ip4 2)" -p 15301 -t "$secs" -J >"$work/pair.json"
clients=()
for i in $(seq 1 "$nodes"); do
  ip netns exec "rg-n$i" iperf3 -c "$(ip4 $((i % nodes + 1)))" -p 15300 -t "$secs" -J >"$work/ring-$i.json" &
  clients+=($!)
done
for c in "${clients[@]}"; do wait "$c"; done
python3 - "$work" "$nodes" "$rate" <<'PY'
import json, sys
work, n, rate = sys.argv[1], int(sys.argv[2]), sys.argv[3]
got = lambda f: json.load(open(f))["end"]["sum_received"]["bits_per_second"]
pair = got(work + "/pair.json")
ring = [got("%s/ring-%d.json" % (work, i)) for i in range(1, n + 1)]
print("links shaped to %s; one pair alone: %.1f Mbit/s" % (rate, pair / 1e6))
print("%d flows at once (node i -> i+1), Mbit/s: %s" % (n, " ".join("%.1f" % (x / 1e6) for x in ring)))
print("ring / pair: mean %.3f, min %.3f" % (sum(ring) / n / pair, min(ring) / pair))
PY
