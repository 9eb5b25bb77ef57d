#!/usr/bin/env bash
# The node-killing fault scenarios of the cluster in a box, each ROUNDS times in a row (default
# 20): a receiver killed halfway, a relay killed early, one of two sources killed, the only
# source killed, a link cut and restored. Each round is the whole test: eight agents in network
# namespaces on shaped links, a ~100 MB multicast, the fault, the survivors' copies verified.
# A round fails when a survivor died unasked (fault_netns_test prints the end of its log), when
# anything hung (the test's deadlines, or this script's bound of 150 s a round), or when any
# check failed. Needs root; takes about 35 s a round on the dev VM (about an hour for 5 x 20).
#
#   scripts/fault-rounds.sh [ROUNDS] [SCENARIO...]     (after scripts/dev.sh build)
#
# Prints a table, then one JSON line; exits non-zero if any round failed. Logs of failed rounds
# are kept under build/fault-rounds/.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${MODELCAST_BUILD_DIR:-$ROOT/build}"
ROUNDS="${1:-20}"
[ $# -gt 0 ] && shift
SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -eq 0 ] && SCENARIOS=(AReceiverKilledHalfway ARelayKilledEarly OneOfTwoSourcesKilled TheOnlySourceKilled ALinkCutAndRestored)
BIN="$BUILD/bin/fault_netns_test"
[ -x "$BIN" ] || { echo "fault-rounds: $BIN is missing (scripts/dev.sh build)" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "fault-rounds: needs root (network namespaces)" >&2; exit 2; }
case "$ROUNDS" in '' | *[!0-9]*) echo "fault-rounds: ROUNDS must be a number, not '$ROUNDS'" >&2; exit 2 ;; esac

LOGS="$BUILD/fault-rounds"
mkdir -p "$LOGS"
printf '%-26s %6s %6s %8s %6s %8s\n' scenario rounds passed crashed hangs seconds
json="{\"rounds\": $ROUNDS, \"scenarios\": {"
failed_any=0
first=1
for s in "${SCENARIOS[@]}"; do
  passed=0 crashed=0 hangs=0
  start=$(date +%s)
  for ((r = 1; r <= ROUNDS; r++)); do
    log="$LOGS/$s.$r.log"
    timeout --signal=TERM --kill-after=30 150 "$BIN" --gtest_filter="FaultNetnsTest.$s" >"$log" 2>&1
    rc=$?
    if [ $rc -eq 0 ] && grep -q '^\[  PASSED  \] 1 test' "$log"; then
      passed=$((passed + 1))
      rm -f "$log"
      continue
    fi
    failed_any=1
    grep -q "died unasked" "$log" && crashed=$((crashed + 1))
    if [ $rc -eq 124 ] || [ $rc -eq 137 ] || grep -q "did not stop\|still running\|DeadlineExceeded" "$log"; then
      hangs=$((hangs + 1))
    fi
    echo "fault-rounds: $s round $r failed (exit $rc); log: $log" >&2
  done
  secs=$(($(date +%s) - start))
  printf '%-26s %6d %6d %8d %6d %8d\n' "$s" "$ROUNDS" "$passed" "$crashed" "$hangs" "$secs"
  [ $first -eq 1 ] || json+=", "
  first=0
  json+="\"$s\": {\"passed\": $passed, \"survivors_crashed\": $crashed, \"hangs\": $hangs, \"seconds\": $secs}"
done
echo "$json}}"
exit $failed_any
