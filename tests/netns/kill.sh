#!/bin/sh
# A rank on one emulated host is SIGKILLed mid-job; every rank on every host must get
# an error, not hang, over the one communicator (shm inside a host, tcp across).
#   kill.sh HOSTS RANKS_PER_HOST MP_WORKER
set -u
hosts=$1 per=$2 worker=$3
here=$(dirname "$0")
out=$(mktemp)
trap 'rm -f "$out"' EXIT
start=$(date +%s)
COLLX_TRANSPORT=auto COLLX_CLUSTER_TIMEOUT=120 sh "$here/cluster.sh" "$hosts" "$per" 1gbit 100us -- "$worker" kill 1 >"$out" 2>&1
rc=$?
elapsed=$(($(date +%s) - start))
cat "$out"
[ "$rc" -eq 77 ] && exit 77
[ "$rc" -ne 124 ] || { echo "FAIL: the job hung"; exit 1; }
want=$((hosts * per - 1))
got=$(grep -c 'DETECTED' "$out")
grep -q 'NOT DETECTED' "$out" && { echo "FAIL: a rank did not detect the failure"; exit 1; }
[ "$got" -eq "$want" ] || { echo "FAIL: $got of $want surviving ranks detected the failure"; exit 1; }
[ "$elapsed" -lt 60 ] || { echo "FAIL: took ${elapsed}s"; exit 1; }
echo "PASS (rank 1 killed; $got ranks on $hosts hosts got an error, ${elapsed}s)"
