#!/bin/sh
# One collx_torch test: run.sh LAUNCH RUN NP SCENARIO
#   LAUNCH    collx-run's path, or "by-hand": the ranks started here with torchrun's
#             environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and nothing else
#   SCENARIO  ops | ddp | subgroup | mismatch | kill (torch_worker.py)
# Environment: COLLX_TORCH_DIR (where collx_torch's module is), PYTHON (/usr/bin/python3),
# COLLX_TRANSPORT passes through. Checks what every rank printed, and that nothing hung.
set -u
launch=$1 np=$2 scenario=$3
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-/usr/bin/python3}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
export COLLX_TORCH_TEST_TIMEOUT=${COLLX_TORCH_TEST_TIMEOUT:-20}
start=$(date +%s)
if [ "$launch" = by-hand ]; then
  port=$($py -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  pids=""
  r=0
  while [ $r -lt "$np" ]; do
    RANK=$r WORLD_SIZE=$np MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
      timeout 200 "$py" "$here/torch_worker.py" "$scenario" >>"$out" 2>&1 &
    pids="$pids $!"
    r=$((r + 1))
  done
  rc=0
  for p in $pids; do wait "$p" || rc=$?; done
else
  timeout 200 "$launch" -n "$np" -- "$py" "$here/torch_worker.py" "$scenario" >"$out" 2>&1
  rc=$?
fi
elapsed=$(($(date +%s) - start))
grep -v -e 'UserWarning' -e 'warnings.warn' "$out"
fail() { echo "FAIL: $*"; exit 1; }
[ "$rc" -ne 124 ] || fail "the job hung (killed by timeout after ${elapsed}s)"
count() { grep -c "$1" "$out"; }
case $scenario in
  mismatch)
    [ "$(count 'RAISED')" -eq "$np" ] || fail "$(count 'RAISED') of $np ranks raised"
    [ "$(count 'RAISED.*called all_reduce(f32, sum, count=[56]')" -eq "$np" ] || fail "not every rank named the mismatch"
    [ "$elapsed" -lt "$COLLX_TORCH_TEST_TIMEOUT" ] || fail "took ${elapsed}s, past the group's timeout"
    ;;
  kill)
    [ "$(count 'RAISED')" -eq $((np - 1)) ] || fail "$(count 'RAISED') of $((np - 1)) surviving ranks raised"
    [ "$elapsed" -lt "$COLLX_TORCH_TEST_TIMEOUT" ] || fail "took ${elapsed}s, past the group's timeout"
    ;;
  *)
    [ "$rc" -eq 0 ] || fail "exit status $rc"
    [ "$(count "OK $scenario")" -eq "$np" ] || fail "$(count "OK $scenario") of $np ranks reported OK"
    ;;
esac
echo "PASS ($scenario, $np ranks, ${elapsed}s)"
