#!/bin/bash
# A job under collx-run while a stranger keeps knocking on its store (MASTER_PORT) with
# garbage and with a wrong token: every knock must be refused and logged, and the job
# must still complete and check its results.
#   stranger.sh COLLX_RUN MP_WORKER
set -u
run=$1 worker=$2
# A port nobody answers on (collx-run would pick one itself, but the knocker must know it),
# below Linux's ephemeral range (32768 up): a port there can be taken by another test's
# outgoing connection, which no connect() sees, and rank 0's listen then fails (seen once
# under ASan with tests running beside it).
for _ in 1 2 3 4 5 6 7 8 9 10; do
  port=$((20000 + RANDOM % 12000))
  { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null || break
  exec 3>&-
done
out=$(mktemp)
trap 'rm -f "$out"; kill "$knocker" 2>/dev/null' EXIT
(
  end=$((SECONDS + 20))
  while [ $SECONDS -lt $end ]; do
    # Garbage, then a well-formed hello with a wrong token ("CLST", length 5, "guess").
    { exec 3<>"/dev/tcp/127.0.0.1/$port" && printf 'GET / HTTP/1.0\r\n\r\n' >&3 && exec 3>&-; } 2>/dev/null
    { exec 3<>"/dev/tcp/127.0.0.1/$port" && printf 'CLST\005\000\000\000guess' >&3 && exec 3>&-; } 2>/dev/null
    sleep 0.02
  done
) &
knocker=$!
MASTER_PORT=$port COLLX_TRANSPORT=tcp timeout 120 "$run" -n 3 -- "$worker" collectives 1 >"$out" 2>&1
rc=$?
cat "$out"
[ "$rc" -eq 0 ] || { echo "FAIL: the job exited with $rc"; exit 1; }
[ "$(grep -c 'OK [0-9]* cases' "$out")" -eq 3 ] || { echo "FAIL: not every rank reported OK"; exit 1; }
grep -q 'the store refused .*: not a collx store client' "$out" || { echo "FAIL: garbage was not refused and logged"; exit 1; }
grep -q 'the store refused .*: wrong job token' "$out" || { echo "FAIL: a wrong token was not refused and logged"; exit 1; }
echo "PASS (the job completed; $(grep -c 'the store refused' "$out") knocks refused)"
