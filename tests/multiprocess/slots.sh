#!/bin/sh
# Two shm ranks set up with different slot counts (COLLX_SHM_SLOTS 4 and 5), RUNS times
# (default 20): every run, both ranks must fail with the true reason ("peer P was set up
# with different slot sizes"), never with a side effect of the other rank having failed
# first (its segment gone: "cannot open peer P's shared memory").
#   slots.sh COLLX_RUN MP_WORKER [RUNS]
set -u
run=$1 worker=$2 runs=${3:-20}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
fail() {
  echo "--- run $i:"
  cat "$out"
  echo "FAIL: $*"
  exit 1
}
export COLLX_TRANSPORT=shm COLLX_TIMEOUT=20
i=1
while [ "$i" -le "$runs" ]; do
  # shellcheck disable=SC2016  # each rank expands its own RANK
  "$run" -n 2 -- sh -c 'COLLX_SHM_SLOTS=$((4 + RANK)) exec "$0" collectives' "$worker" >"$out" 2>&1
  rc=$?
  [ "$rc" -ne 0 ] || fail "the job succeeded"
  for r in 0 1; do
    grep -q "^\[$r\] ERROR collx: shm_transport on rank $r (peer $((1 - r))): peer $((1 - r)) was set up with different slot sizes" "$out" ||
      fail "rank $r did not report the different slot sizes"
  done
  i=$((i + 1))
done
echo "PASS (both ranks named the different slot sizes in $runs of $runs runs)"
