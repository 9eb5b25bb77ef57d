#!/usr/bin/env bash
# The cluster in a box: N nodes in network namespaces joined by a bridge that lives in its own
# namespace (the host's network is never touched), each node's link shaped to a fixed rate
# with tc: tbf for egress, ifb + tbf for ingress. Link bandwidth, not memory bandwidth, is
# then the constraint, as in a real cluster.
#
#   scripts/netns-cluster.sh up N [--rate 1gbit] [--queue 50ms] [--cc cubic] [--prefix mc]
#                                                                (re)create nodes 1..N
#   scripts/netns-cluster.sh down [--prefix mc]                  remove everything it made
#   scripts/netns-cluster.sh status [--prefix mc]
#   scripts/netns-cluster.sh exec I CMD... [--prefix mc]         run CMD in node I
#   scripts/netns-cluster.sh link I down|up [--prefix mc]        cut node I's link, or restore it
#   scripts/netns-cluster.sh shape I RATE [--prefix mc]          reshape node I's link (a straggler)
#
# --queue is how long a packet may wait in a shaper's queue (tbf latency): shallow queues drop
# packets when several senders converge on one node, and TCP's recovery then dominates.
#
# --cc is the nodes' TCP congestion control (net.ipv4.tcp_congestion_control, set in each node's
# namespace; default cubic, Linux's own default). Set explicitly because a new namespace takes
# the host's, which an image may have changed (this VM's is bbr): BBR paces each flow at its
# estimate of the path's rate, and a node whose sends take turns among its peers, as a
# multicast's do, then leaves a tbf-shaped link a tenth short (docs/BENCHMARKS.md, "Multicast:
# the links' congestion control").
#
# Node I is namespace <prefix>-nI with eth0 = 10.77.0.(10+I)/24 (so N <= 200). Processes
# inside must use UCX_TLS=tcp and UCX_NET_DEVICES=eth0: otherwise UCX takes shared memory,
# which crosses namespaces, and skips the shaped link. Needs root and iproute2.
set -euo pipefail

prefix=mc
rate=""
queue=50ms
cc=cubic
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rate) rate="$2"; shift 2 ;;
    --queue) queue="$2"; shift 2 ;;
    --cc) cc="$2"; shift 2 ;;
    --prefix) prefix="$2"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
set -- "${args[@]}"
cmd="${1:-}"
bridge="${prefix}-br"

die() { echo "netns-cluster: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces and tc)"
command -v ip >/dev/null || die "needs ip (iproute2)"
command -v tc >/dev/null || die "needs tc (iproute2)"

namespaces() { ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${prefix}-(br|n[0-9]+)$" || true; }

down() {
  for ns in $(namespaces); do ip netns del "$ns"; done
}

# Burst for tbf: 10 ms at the rate, at least 64 KiB (a tbf needs a burst of at least one MTU
# per timer tick to reach its rate).
burst_for() {
  local r="$1" bits
  bits=$(echo "$r" | awk '{ v=$1; u=tolower(v); n=v+0;
    if (u ~ /gbit/) n*=1e9; else if (u ~ /mbit/) n*=1e6; else if (u ~ /kbit/) n*=1e3; print int(n) }')
  local b=$((bits / 8 / 100))
  [ "$b" -lt 65536 ] && b=65536
  echo "$b"
}

# Shapes (or reshapes) node namespace $1's link to rate $2, both ways.
shape() {
  local ns="$1" r="$2" burst
  burst=$(burst_for "$r")
  tc -n "$ns" qdisc replace dev eth0 root tbf rate "$r" burst "$burst" latency "$queue"
  if ! ip -n "$ns" link show ifb0 >/dev/null 2>&1; then
    ip -n "$ns" link add ifb0 type ifb
    ip -n "$ns" link set ifb0 up
    tc -n "$ns" qdisc add dev eth0 handle ffff: ingress
    tc -n "$ns" filter add dev eth0 parent ffff: protocol all u32 match u32 0 0 action mirred egress redirect dev ifb0
  fi
  tc -n "$ns" qdisc replace dev ifb0 root tbf rate "$r" burst "$burst" latency "$queue"
}

up() {
  local n="$1"
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 200 ] || die "up needs a node count between 1 and 200, got '$n'"
  local available
  available=$(sysctl -n net.ipv4.tcp_available_congestion_control)
  [[ " $available " == *" $cc "* ]] || modprobe "tcp_$cc" 2>/dev/null || true
  available=$(sysctl -n net.ipv4.tcp_available_congestion_control)
  [[ " $available " == *" $cc "* ]] || die "--cc '$cc' is not a TCP congestion control this kernel has (it has: $available)"
  down
  ip netns add "$bridge"
  ip -n "$bridge" link set lo up
  ip -n "$bridge" link add br0 type bridge
  ip -n "$bridge" link set br0 up
  for i in $(seq 1 "$n"); do
    local ns="${prefix}-n$i"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip netns exec "$ns" sysctl -qw net.ipv4.tcp_congestion_control="$cc"
    ip -n "$bridge" link add "v$i" type veth peer name eth0 netns "$ns"
    ip -n "$bridge" link set "v$i" master br0 up
    ip -n "$ns" addr add "10.77.0.$((10 + i))/24" dev eth0
    ip -n "$ns" link set eth0 up
    [ -n "$rate" ] && shape "$ns" "$rate"
  done
  # Every node reaches every other (checked both ways for the first and last).
  if [ "$n" -gt 1 ]; then
    ip netns exec "${prefix}-n1" ping -c 1 -W 2 "10.77.0.$((10 + n))" >/dev/null || die "node 1 cannot reach node $n"
    ip netns exec "${prefix}-n$n" ping -c 1 -W 2 10.77.0.11 >/dev/null || die "node $n cannot reach node 1"
  fi
  echo "netns-cluster: $n nodes up (${prefix}-n1..${prefix}-n$n, 10.77.0.11-$((10 + n)))${rate:+, links shaped to $rate}, TCP congestion control $cc"
}

case "$cmd" in
  up) up "${2:-}" ;;
  down) down; echo "netns-cluster: down" ;;
  status)
    for ns in $(namespaces); do
      echo "== $ns"
      ip -n "$ns" -brief addr show | grep -v '^lo' || true
      tc -n "$ns" qdisc show dev eth0 2>/dev/null | head -2 || true
    done
    ;;
  link)
    [ $# -eq 3 ] && [[ "$2" =~ ^[0-9]+$ ]] && [[ "$3" =~ ^(up|down)$ ]] || die "link needs a node number and up or down"
    ip netns list | grep -q "^${prefix}-n$2\b" || die "no node $2 (namespace ${prefix}-n$2)"
    ip -n "$bridge" link set "v$2" "$3"
    ;;
  shape)
    [ $# -eq 3 ] && [[ "$2" =~ ^[0-9]+$ ]] || die "shape needs a node number and a rate"
    ns="${prefix}-n$2"
    ip netns list | grep -q "^$ns\b" || die "no node $2 (namespace $ns)"
    shape "$ns" "$3"
    ;;
  exec)
    [ $# -ge 3 ] || die "exec needs a node number and a command"
    node="$2"; shift 2
    exec ip netns exec "${prefix}-n$node" "$@"
    ;;
  *) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
