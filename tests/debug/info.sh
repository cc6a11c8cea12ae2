#!/bin/sh
# COLLX_DEBUG=INFO: every rank of a job started by collx-run says, once, how its
# communicator was built (launch, transport to each peer, cost model) and, for the call
# shape it runs, which algorithm ran and why; without COLLX_DEBUG nothing is said.
#   sh info.sh COLLX_RUN HELLO_ALLREDUCE
set -u
run=$1 hello=$2
out=$(mktemp) && trap 'rm -f "$out"' EXIT
fail() { echo "FAIL: $*"; cat "$out"; exit 1; }
count() { grep -c -- "$1" "$out"; }

for transport in shm tcp; do
  COLLX_DEBUG=INFO COLLX_TRANSPORT=$transport "$run" -n 3 --timeout 60 -- "$hello" >"$out" 2>&1 ||
    fail "the job failed over $transport"
  for r in 0 1 2; do
    grep -q "collx INFO rank $r/3 on host .*, launched by collx-run/torchrun: $transport to every peer.*; cost model: alpha .* ns, beta .* MB/s, gamma .* MB/s (rank 0's; here " "$out" ||
      fail "rank $r did not say how its communicator over $transport was built"
    grep -q "collx INFO rank $r/3: all_reduce(f32, count=1000, in place) runs [a-z_]*, the automatic choice (predicted [0-9]* us)" "$out" ||
      fail "rank $r did not say which algorithm its all-reduce ran over $transport"
  done
  [ "$(count 'collx INFO')" -eq 6 ] || fail "$(count 'collx INFO') INFO lines over $transport, expected 6: one of each per rank"
done
COLLX_TRANSPORT=tcp COLLX_DEBUG=INFO COLLX_ALGO=rd "$run" -n 3 --timeout 60 -- "$hello" >"$out" 2>&1 || fail "the job failed"
[ "$(count 'runs rd, as asked')" -eq 3 ] || fail "a forced algorithm was not said to be forced"
"$run" -n 3 --timeout 60 -- "$hello" >"$out" 2>&1 || fail "the job failed"
[ "$(count 'collx INFO')" -eq 0 ] || fail "INFO lines without COLLX_DEBUG"
echo "PASS"
