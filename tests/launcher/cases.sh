#!/bin/sh
# Tests of collx-run, one case per ctest test: sh cases.sh COLLX_RUN CASE WORKDIR.
# The ranks are sh one-liners; a rank that must be stopped by the launcher runs
# `exec sleep`, so that the rank is the sleep itself and no grandchild hides from the signal.
# shellcheck disable=SC2016  # the ranks' scripts are in single quotes on purpose: the ranks expand them
set -u
run=$1
case=$2
work=$3
rm -rf "$work" && mkdir -p "$work" && cd "$work" || exit 1
unset MASTER_PORT COLLX_JOB_ID

fail() {
  echo "FAIL ($case): $*"
  echo "--- stdout of collx-run:"
  cat out 2>/dev/null
  echo "--- stderr of collx-run:"
  cat err 2>/dev/null
  exit 1
}

# Runs collx-run; sets rc and secs (whole seconds, enough to tell 1 from 30).
launch() {
  t0=$(date +%s)
  "$run" "$@" >out 2>err
  rc=$?
  secs=$(($(date +%s) - t0))
}
expect_rc() { [ "$rc" = "$1" ] || fail "exit code $rc, expected $1"; }
has_line() { grep -qxF -- "$2" "$1" || fail "$1 lacks the line '$2'"; }
has_text() { grep -qF -- "$2" "$1" || fail "$1 lacks '$2'"; }
quick() { [ "$secs" -lt 10 ] || fail "took $secs s, the job should have stopped at once"; }

# A pid that is gone or a zombie no longer runs.
alive() { [ -e "/proc/$1" ] && ! grep -q ') Z' "/proc/$1/stat" 2>/dev/null; }
ranks_gone() {
  for f in pid.*; do
    [ -s "$f" ] || continue
    ! alive "$(cat "$f")" || fail "rank $f (pid $(cat "$f")) is still running"
  done
}
# How many segments of job $1 are in /dev/shm.
segments() {
  n=0
  for f in /dev/shm/collx-"$1"-*; do [ -e "$f" ] && n=$((n + 1)); done
  echo $n
}
# Waits up to 10 s for a condition (a shell command string).
wait_for() {
  i=0
  while ! eval "$1"; do
    i=$((i + 1))
    [ $i -lt 100 ] || fail "timed out waiting for: $1"
    sleep 0.1
  done
}

case $case in
env)
  launch -n 3 sh -c 'echo "$RANK/$WORLD_SIZE $LOCAL_RANK $MASTER_ADDR"
    echo "more $LOCAL_WORLD_SIZE $GROUP_RANK $COLLX_LAUNCHER"
    echo "port $MASTER_PORT"; echo "job $COLLX_JOB_ID"'
  expect_rc 0
  for r in 0 1 2; do
    has_line out "[$r] $r/3 $r 127.0.0.1"
    has_line out "[$r] more 3 0 collx-run"
  done
  [ "$(grep -c '^\[[0-2]\] port [0-9][0-9]*$' out)" = 3 ] || fail "MASTER_PORT is not a number in every rank"
  [ "$(sed -n 's/^\[[0-2]\] port //p' out | sort -u | wc -l)" = 1 ] || fail "the ranks got different ports"
  [ "$(grep -c '^\[[0-2]\] job [a-z0-9-][a-z0-9-]*$' out)" = 3 ] || fail "COLLX_JOB_ID is not [a-z0-9-]+"
  [ "$(sed -n 's/^\[[0-2]\] job //p' out | sort -u | wc -l)" = 1 ] || fail "the ranks got different job ids"
  first=$(sed -n 's/^\[0\] job //p' out)
  launch -n 1 sh -c 'echo "$COLLX_JOB_ID"'
  [ "$(sed -n 's/^\[0\] //p' out)" != "$first" ] || fail "two launches got the same job id"
  ;;

env_preset)
  MASTER_PORT=29555 COLLX_JOB_ID=my-job-7 launch -n 2 sh -c 'echo "$MASTER_PORT $COLLX_JOB_ID"'
  expect_rc 0
  has_line out "[0] 29555 my-job-7"
  has_line out "[1] 29555 my-job-7"
  # The job id becomes part of file names in /dev/shm: nothing else may get in.
  COLLX_JOB_ID=../Bad launch -n 1 sh -c true
  expect_rc 2
  ;;

prefix)
  launch -n 4 sh -c 'i=0
    while [ $i -lt 300 ]; do echo "rank $RANK line $i abcdefghijklmnopqrstuvwxyz0123456789"; i=$((i + 1)); done
    printf "partial "; sleep 0.2; printf "line $RANK\n"; printf "no newline $RANK"'
  expect_rc 0
  # Every line is whole and carries the prefix of the rank that printed it.
  bad=$(grep -cvE '^\[([0-3])\] (rank \1 line [0-9]+ abcdefghijklmnopqrstuvwxyz0123456789|partial line \1|no newline \1)$' out)
  [ "$bad" = 0 ] || fail "$bad lines are torn or misattributed"
  [ "$(wc -l <out)" = $((4 * 302)) ] || fail "expected $((4 * 302)) lines, got $(wc -l <out)"
  for r in 0 1 2 3; do
    sed -n "s/^\[$r\] rank $r line \([0-9]*\) .*/\1/p" out >lines.$r
    seq 0 299 | cmp -s - lines.$r || fail "rank $r's lines are not all there in order"
    has_line out "[$r] partial line $r"
    has_line out "[$r] no newline $r"
  done
  ;;

stderr)
  launch -n 2 sh -c 'echo "to out $RANK"; echo "to err $RANK" >&2'
  expect_rc 0
  for r in 0 1; do
    has_line out "[$r] to out $r"
    has_line err "[$r] to err $r"
  done
  ! grep -q "to err" out || fail "stderr went to stdout"
  ;;

exit_code)
  launch -n 3 sh -c 'echo $$ >pid.$RANK; if [ $RANK = 1 ]; then sleep 0.5; exit 3; fi; exec sleep 30'
  expect_rc 1
  quick
  has_line err "collx-run: rank 1 exited with code 3; stopping the other ranks"
  ranks_gone
  ;;

survivors)
  # Rank 1 fails; the others notice half a second later and say so before they exit, as
  # collx's ranks do ("peer 1 failed", "is gone"). Their words must reach the output:
  # SIGTERM waits a short moment for them.
  launch -n 3 sh -c 'if [ $RANK = 1 ]; then sleep 0.2; exit 3; fi
    sleep 0.7; echo "rank $RANK: peer 1 is gone" >&2; exit 1'
  expect_rc 1
  quick
  has_line err "collx-run: rank 1 exited with code 3; stopping the other ranks"
  has_line err "[0] rank 0: peer 1 is gone"
  has_line err "[2] rank 2: peer 1 is gone"
  # --grace 0: stopped at once, as before there was a grace; nothing more from them.
  launch -n 3 --grace 0 sh -c 'if [ $RANK = 1 ]; then sleep 0.2; exit 3; fi
    sleep 0.7; echo "rank $RANK: peer 1 is gone" >&2; exit 1'
  expect_rc 1
  ! grep -q "peer 1 is gone" err || fail "--grace 0 still let the others report"
  ;;

signal)
  launch -n 3 sh -c 'echo $$ >pid.$RANK; if [ $RANK = 1 ]; then sleep 0.5; kill -9 $$; fi; exec sleep 30'
  expect_rc 137
  quick
  has_line err "collx-run: rank 1 exited with signal 9 (Killed); stopping the other ranks"
  ranks_gone
  ;;

shm)
  [ -d /dev/shm ] || { echo "no /dev/shm here: nothing to test"; exit 0; }
  id=launcher-test-$$
  # Another job's segment whose id merely starts the same way must survive.
  touch "/dev/shm/collx-${id}0-0"
  COLLX_JOB_ID=$id launch -n 3 sh -c 'touch /dev/shm/collx-$COLLX_JOB_ID-$RANK
    if [ $RANK = 1 ]; then sleep 0.5; kill -9 $$; fi; exec sleep 30'
  left=$(segments "$id")
  survived=no
  [ -e "/dev/shm/collx-${id}0-0" ] && survived=yes
  rm -f "/dev/shm/collx-${id}0-0" /dev/shm/collx-"$id"-*
  expect_rc 137
  [ "$left" = 0 ] || fail "$left segments of the job are left in /dev/shm"
  [ $survived = yes ] || fail "a segment of another job was removed"
  # The same with a job id that collx-run makes up.
  launch -n 2 sh -c 'echo $COLLX_JOB_ID >job; touch /dev/shm/collx-$COLLX_JOB_ID-$RANK; exit 0'
  expect_rc 0
  job=$(cat job)
  [ -n "$job" ] || fail "no job id"
  left=$(segments "$job")
  rm -f /dev/shm/collx-"$job"-*
  [ "$left" = 0 ] || fail "$left segments of job $job are left in /dev/shm"
  ;;

timeout)
  launch -n 2 --timeout 1 sh -c 'echo $$ >pid.$RANK; exec sleep 30'
  expect_rc 124
  quick
  has_text err "--timeout"
  ranks_gone
  ;;

grace)
  launch -n 2 --timeout 1 sh -c 'trap "" TERM; echo $$ >pid.$RANK; exec sleep 30'
  expect_rc 124
  quick
  [ "$secs" -ge 3 ] || fail "the ranks were killed before the 3 s grace ($secs s)"
  ranks_gone
  ;;

forward)
  "$run" -n 2 sh -c 'trap "echo rank $RANK got TERM; exit 5" TERM; echo ready
    while :; do sleep 0.1; done' >out 2>err &
  launcher=$!
  wait_for '[ "$(grep -c ready out)" = 2 ]'
  kill -TERM $launcher
  wait $launcher
  rc=$?
  expect_rc 143
  has_line out "[0] rank 0 got TERM"
  has_line out "[1] rank 1 got TERM"
  ;;

orphans)
  "$run" -n 2 sh -c 'echo $$ >pid.$RANK; exec sleep 30' >out 2>err &
  launcher=$!
  wait_for '[ -s pid.0 ] && [ -s pid.1 ]'
  kill -KILL $launcher
  wait $launcher
  wait_for '! alive "$(cat pid.0)" && ! alive "$(cat pid.1)"'
  ;;

exec_failure)
  printf '#!/nonexistent/interpreter\n' >bad && chmod +x bad
  launch -n 2 ./bad
  expect_rc 1
  # Whichever rank fails first stops the other, maybe before it tried to exec.
  grep -qxE "\[[01]\] collx-run: cannot run './bad': No such file or directory" err || fail "no rank said why"
  grep -qE '^collx-run: rank [01] exited with code 127' err || fail "no rank reported exiting with 127"
  ;;

usage)
  for args in "" "sh -c true" "-n 0 sh -c true" "-n x sh -c true" "-n 2" "-n 2 --timeout x sh" \
    "-n 2 --bogus sh" "-n" "-n2 --timeout=0 sh" "-n 2 --grace x sh" "-n 2 --grace=-1 sh" "-n 2 --grace" \
    "-n 2 no-such-program-for-collx-run"; do
    # shellcheck disable=SC2086  # word splitting is the point
    launch $args
    [ "$rc" = 2 ] || fail "'collx-run $args' exited $rc, expected 2"
    [ -s err ] || fail "'collx-run $args' said nothing"
  done
  has_text err "no-such-program-for-collx-run"
  # After the program, and after --, options belong to the program.
  launch -n 1 -- sh -c 'printf "%s\n" "$1"' sh -n
  expect_rc 0
  has_line out "[0] -n"
  launch -n2 --timeout=30 --grace=0.5 sh -c 'echo "$WORLD_SIZE"'
  expect_rc 0
  has_line out "[1] 2"
  ;;

*)
  fail "unknown case"
  ;;
esac
echo "PASS ($case)"
