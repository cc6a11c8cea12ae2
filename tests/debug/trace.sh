#!/bin/sh
# The flight recorder across processes, and collx-doctor on what it writes: for a killed
# rank, a mismatch, a rank late past its peers' timeout and a straggler, 3 ranks under
# collx-run over TRANSPORT write their files into COLLX_TRACE_DIR and collx-doctor names
# the right rank and class; SIGUSR1 to a job stalled on purpose makes every rank write
# its file within a second, and the job goes on to finish right.
#   sh trace.sh COLLX_RUN MP_WORKER COLLX_DOCTOR TRANSPORT
set -u
run=$1 worker=$2 doctor=$3 transport=$4
slack=${COLLX_TEST_SLACK:-1}
export COLLX_TRANSPORT=$transport
work=$(mktemp -d) && trap 'rm -rf "$work"' EXIT
out=$work/out
fail() {
  echo "FAIL: $*"
  cat "$out"
  for f in "$work"/d/*.json; do [ -f "$f" ] && { echo "== $f"; cat "$f"; }; done
  exit 1
}
# job NAME EXPECT SCENARIO ARG: runs it with a fresh trace directory; EXPECT ok, failed
# or any (mp_worker's mismatch and late ranks report the error they expected and exit 0).
job() {
  rm -rf "$work/d" && mkdir "$work/d"
  COLLX_TRACE_DIR=$work/d timeout $((120 * slack)) "$run" -n 3 --timeout $((60 * slack)) -- "$worker" "$3" "$4" \
    >"$out" 2>&1
  rc=$?
  [ $rc -ne 124 ] || fail "$1: the job hung"
  case $2 in ok) [ $rc -eq 0 ] || fail "$1: the job failed" ;; failed) [ $rc -ne 0 ] || fail "$1: the job did not fail" ;; esac
  /usr/bin/env python3 "$doctor" "$work/d" >>"$out" 2>&1 || fail "$1: collx-doctor failed"
  /usr/bin/env python3 "$doctor" --json "$work/d" >"$work/verdict.json" 2>>"$out" || fail "$1: collx-doctor --json failed"
}
# verdict KEY: that key of the doctor's JSON answer.
verdict() { /usr/bin/env python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$work/verdict.json" "$1"; }
files() { ls "$work"/d/collx-trace.rank"$1".*.json 2>/dev/null | wc -l; }

job kill failed kill 2
[ "$(files 0)" -eq 1 ] && [ "$(files 1)" -eq 1 ] || fail "kill: ranks 0 and 1 did not each write their file"
[ "$(files 2)" -eq 0 ] || fail "kill: the killed rank wrote a file"
[ "$(verdict class)" = process ] && [ "$(verdict rank)" = 2 ] || fail "kill: the doctor did not name rank 2, a process"
grep -q "collx-doctor: process: a process died: rank 2 left no trace" "$out" || fail "kill: no verdict line"

job mismatch any mismatch 0
[ "$(verdict class)" = program ] || fail "mismatch: the doctor did not say program"
grep -q "at call #0 ranks 1-2 called all_reduce(f32, count=6, sum) and rank 0 called all_reduce(f32, count=5, sum)" "$out" ||
  fail "mismatch: the doctor did not say who called what"

job late any late 1
[ "$(verdict class)" = process ] && [ "$(verdict rank)" = 1 ] || fail "late: the doctor did not name rank 1"

export COLLX_TRACE_AT_EXIT=1
job straggler ok straggler 2
unset COLLX_TRACE_AT_EXIT
[ "$(verdict class)" = straggler ] && [ "$(verdict rank)" = 2 ] || fail "straggler: the doctor did not name rank 2"
grep -q "rank 2 is a straggler: it started its calls a median [0-9.]* ms after the other ranks, over [0-9]* calls" "$out" ||
  fail "straggler: no figures"

# SIGUSR1: rank 1 stalls for 4 s in its 20th send; the others wait inside their call.
rm -rf "$work/d" && mkdir "$work/d"
COLLX_TRACE_DIR=$work/d COLLX_FAULT="stall:rank=1,after=20,for=$((4 * slack))s" \
  "$run" -n 3 --timeout $((60 * slack)) -- "$worker" straggler 9 >"$out" 2>&1 &
pid=$!
sleep 2
# collx-run's children, the ranks (from /proc: procps' pgrep may not be installed).
# The parent is the second field after the command's closing parenthesis.
kids=$(for st in /proc/[0-9]*/stat; do
  [ "$(sed 's/^.*) //' "$st" 2>/dev/null | cut -d' ' -f2)" = "$pid" ] && basename "${st%/stat}"
done)
[ "$(echo "$kids" | wc -w)" -eq 3 ] || fail "SIGUSR1: not 3 ranks under collx-run ($kids)"
sent=$(date +%s%N)
kill -USR1 $kids
deadline=$((sent + 1000000000 * slack))
while [ "$(ls "$work"/d/*.json 2>/dev/null | wc -l)" -lt 3 ] && [ "$(date +%s%N)" -lt $deadline ]; do sleep 0.05; done
[ "$(ls "$work"/d/*.json 2>/dev/null | wc -l)" -eq 3 ] || fail "SIGUSR1: not every rank wrote its file within ${slack} s"
grep -l '"reason": "SIGUSR1"' "$work"/d/*.json | wc -l | grep -qx 3 || fail "SIGUSR1: the files do not say SIGUSR1"
grep -l '"state": "running"' "$work"/d/*.json | wc -l | grep -qx 3 || fail "SIGUSR1: not every rank was inside its call"
wait $pid || fail "SIGUSR1: the job did not go on to finish"
[ "$(grep -c "^\[.\] OK 200 cases" "$out")" -eq 3 ] || fail "SIGUSR1: not every rank finished right"
echo "PASS"
