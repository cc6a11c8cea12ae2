#!/bin/sh
# cluster.sh's own checks, one case per ctest test:   names.sh CASE
#   stale    names left by an earlier run that was killed (a namespace, a bridge) are
#            removed and the cluster is built: not a reason to skip
#   busy     a name whose lock a live run holds is left alone: the next one is used
#   refused  namespaces refused (root without capabilities, by setpriv): skipped (77)
#            outside CI, a failure (1) as root under CI
# Exits 77 itself where it cannot make namespaces (or, for refused, is not root).
set -u
here=$(dirname "$0")
case=$1
out=$(mktemp)
trap 'rm -f "$out"' EXIT
fail() {
  echo "--- cluster.sh said:"
  cat "$out"
  echo "FAIL ($case): $*"
  exit 1
}
left() { ip netns list 2>/dev/null | grep -c "^cx$1-"; }
# An id of its own per case, far from the $$ % 250 that runs pick unless told.
case $case in
  stale) id=247 ;;
  busy) id=245 ;;
  *) id=243 ;;
esac
[ "$(id -u)" = 0 ] || { echo "SKIPPED: not root"; exit 77; }
if [ "$case" != refused ]; then
  ip netns add "collx-probe-$$" 2>/dev/null || { echo "SKIPPED: network namespaces are refused here"; exit 77; }
  ip netns del "collx-probe-$$"
fi
run() { COLLX_NETNS_ID=$id sh "$here/cluster.sh" 1 1 1gbit 0 -- sh -c 'echo "ran in $(ip netns identify $$)"' >"$out" 2>&1; }

case $case in
stale)
  ip netns add "cx$id-h0" && ip link add "cx$id-br" type bridge || fail "cannot plant the leftovers"
  run
  rc=$?
  [ "$rc" -eq 0 ] || fail "exit status $rc with leftovers of an earlier run"
  grep -qx "\[0\] ran in cx$id-h0" "$out" || fail "the rank did not run in cx$id-h0"
  grep -q "removing cx$id-h0" "$out" || fail "the leftover was not reported"
  [ "$(left "$id")" -eq 0 ] || fail "namespaces cx$id-* are left after the run"
  ;;
busy)
  # Another run holds cx$id's lock (a live cluster): its name is not touched. The holder
  # is a sleep that keeps the locked descriptor, so killing it frees the lock at once.
  exec 8>"${TMPDIR:-/tmp}/collx-netns-cx$id.lock" && flock -n 8 || fail "cannot take the lock of cx$id"
  sleep 30 >/dev/null 2>&1 &
  holder=$!
  exec 8>&-
  ip netns add "cx$id-h0" || fail "cannot plant the live run's namespace"
  run
  rc=$?
  kill "$holder"
  still=$(left "$id")
  ip netns del "cx$id-h0" 2>/dev/null
  [ "$rc" -eq 0 ] || fail "exit status $rc"
  grep -qx "\[0\] ran in cx$((id + 1))-h0" "$out" || fail "the rank did not run in the next name, cx$((id + 1))-h0"
  [ "$still" -eq 1 ] || fail "the live run's namespace cx$id-h0 was removed"
  ;;
refused)
  command -v setpriv >/dev/null || { echo "SKIPPED: no setpriv"; exit 77; }
  CI='' setpriv --bounding-set=-all --inh-caps=-all env -u CI sh "$here/cluster.sh" 1 1 1gbit 0 -- true >"$out" 2>&1
  rc=$?
  [ "$rc" -eq 77 ] || fail "exit status $rc outside CI, expected 77 (skipped)"
  grep -q "^SKIPPED: network namespaces are refused here" "$out" || fail "no reason given for the skip"
  CI=1 setpriv --bounding-set=-all --inh-caps=-all sh "$here/cluster.sh" 1 1 1gbit 0 -- true >"$out" 2>&1
  rc=$?
  [ "$rc" -eq 1 ] || fail "exit status $rc as root under CI, expected 1"
  grep -q "^FAIL: network namespaces are refused to root under CI" "$out" || fail "no reason given for the failure"
  ;;
*) fail "unknown case" ;;
esac
echo "PASS ($case)"
