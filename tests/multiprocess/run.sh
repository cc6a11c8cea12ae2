#!/bin/sh
# One multi-process test: run.sh LAUNCHER WORKER TRANSPORT NP SCENARIO [ARG]
#   LAUNCHER  path to collx-run, or "mpirun:PATH" to launch with Open MPI's mpirun
#   SCENARIO  collectives | dtypes | kill | kill-broadcast | kill-alltoall | mismatch | mismatch-root |
#             mismatch-split | mismatch-send | late | abort | fault |
#             soak | models | linger (mp_worker.cpp),
#             optionally -mpi-init
#   ARG       the scenario's argument: the victim rank (default 1), or soak's call count
#   COLLX_FAULT (environment)  fault: the fault plan (collx/transport/faulty.hpp)
# Checks what every rank reported, that nothing hung, and that no shared-memory
# segment of the job is left in /dev/shm.
set -u
# Deadlines scale with COLLX_TEST_SLACK (default 1; tools/sanitize.sh raises it).
slack=${COLLX_TEST_SLACK:-1}
launcher=$1 worker=$2 transport=$3 np=$4 scenario=$5 arg=${6:-1}
# SCENARIO-mpi-init: the ranks meet through MPI (init_from_mpi) instead of the environment.
COLLX_INIT=env
case $scenario in *-mpi-init) scenario=${scenario%-mpi-init} COLLX_INIT=mpi ;; esac
# soak-N: N random collectives.
case $scenario in soak-*) arg=${scenario#soak-} scenario=soak ;; esac
export COLLX_INIT
job="t$$-$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')"
out=$(mktemp)
store=$(mktemp -d)
trap 'rm -rf "$out" "$store"' EXIT
start=$(date +%s)
export COLLX_TRANSPORT="$transport" COLLX_JOB_ID="$job"
case $launcher in
  mpirun:*)
    export OMPI_MCA_mpi_yield_when_idle=1
    # A file store of its own, removed at exit (scenarios that keep their store to the
    # end do not retire it).
    export COLLX_STORE_DIR="$store"
    set -- -x COLLX_TRANSPORT -x COLLX_JOB_ID -x COLLX_INIT -x COLLX_STORE_DIR -x OMPI_MCA_mpi_yield_when_idle
    [ -n "${COLLX_FAULT:-}" ] && set -- "$@" -x COLLX_FAULT
    [ -n "${COLLX_ALGO:-}" ] && set -- "$@" -x COLLX_ALGO
    [ -n "${COLLX_TEST_SEED:-}" ] && set -- "$@" -x COLLX_TEST_SEED
    [ -n "${COLLX_TEST_SLACK:-}" ] && set -- "$@" -x COLLX_TEST_SLACK
    timeout 240 "${launcher#mpirun:}" --allow-run-as-root --oversubscribe -np "$np" "$@" \
      "$worker" "$scenario" "$arg" >"$out" 2>&1
    ;;
  *)
    # Survivors of a failed rank get 2 s (times the slack) to report before SIGTERM.
    timeout 240 "$launcher" -n "$np" --grace $((2 * slack)) -- "$worker" "$scenario" "$arg" >"$out" 2>&1
    ;;
esac
rc=$?
elapsed=$(($(date +%s) - start))
cat "$out"
fail() { echo "FAIL: $*"; exit 1; }
[ "$rc" -ne 124 ] || fail "the job hung (killed by timeout after ${elapsed}s)"
count() { grep -c "$1" "$out"; }
ok=$(count '] OK [0-9]* cases\|^OK [0-9]* cases')
detected=$(count 'DETECTED')
case $scenario in
  collectives | dtypes | soak | models)
    [ "$rc" -eq 0 ] || fail "exit status $rc"
    [ "$ok" -eq "$np" ] || fail "$ok of $np ranks reported OK"
    ;;
  kill | kill-broadcast | kill-alltoall)
    [ "$rc" -ne 0 ] || fail "the launcher must report the killed rank"
    case $launcher in
      mpirun:*) ;;  # mpirun ends the whole job when a rank dies: no hang is what we can ask
      *) [ "$detected" -eq $((np - 1)) ] || fail "$detected of $((np - 1)) surviving ranks detected the failure" ;;
    esac
    [ "$elapsed" -lt 30 ] || fail "took ${elapsed}s"
    ;;
  mismatch | mismatch-root | mismatch-split | mismatch-send)
    # Every rank, and each with the mismatch error, not a timeout or a peer's failure.
    [ "$detected" -eq "$np" ] || fail "$detected of $np ranks detected the mismatch"
    [ "$(count 'DETECTED mismatched collective calls')" -eq "$np" ] || fail "not every rank reported a mismatch"
    ;;
  late)
    [ "$rc" -eq 0 ] || fail "exit status $rc"
    [ "$detected" -eq "$np" ] || fail "$detected of $np ranks failed call #0"
    ;;
  abort)
    [ "$rc" -eq 0 ] || fail "exit status $rc"
    [ "$detected" -eq $((np - 1)) ] || fail "$detected of $((np - 1)) blocked ranks were released by the abort"
    [ "$(count 'ABORTED')" -eq 1 ] || fail "the victim did not abort"
    [ "$(count 'gave up on purpose')" -eq $((np - 1)) ] || fail "not every released rank was told the victim's reason"
    ;;
  linger)
    # Rank 0's error reaches its caller within its timeout (6 s, mp_worker.cpp) and the
    # store's short linger (2 s, collx::defaults::store_linger), not a second timeout.
    [ "$rc" -eq 0 ] || fail "exit status $rc"
    ms=$(sed -n 's/^\[0\] DETECTED timed out after \([0-9]*\) ms.*/\1/p' "$out")
    [ -n "$ms" ] || fail "rank 0 did not report its call's timeout"
    bound=$((6000 + 2000 + 1000 * slack))
    [ "$ms" -le "$bound" ] || fail "rank 0's error reached its caller after $ms ms, over $bound ms"
    [ "$(count 'STORE GONE')" -eq 1 ] || fail "rank 1 did not see rank 0's store go"
    ;;
  fault)
    # Delays and slow ranks: every result right. Other faults: every rank fails (the
    # victim too, unless killed) within its timeout, blames the victim, refuses the
    # next call, gives its descriptors back, and (unless killed) builds a new
    # communicator whose results are right.
    case ${COLLX_FAULT:-} in
      delay* | slow*)
        [ "$rc" -eq 0 ] || fail "exit status $rc"
        [ "$ok" -eq "$np" ] || fail "$ok of $np ranks reported OK"
        ;;
      *)
        live=$np
        case $COLLX_FAULT in kill*) live=$((np - 1)) ;; esac
        [ "$detected" -eq "$live" ] || fail "$detected of $live ranks detected the fault"
        # (A stalled rank is alive: a rank that waits on a waiting rank finds the stalled
        # one by comparing notes through the store.)
        [ "$(count 'BLAMES 0')" -eq 0 ] || fail "a rank blamed another rank than the victim"
        [ "$(count 'LATE')" -eq 0 ] || fail "a rank detected the fault later than its timeout"
        [ "$(count '] REFUSED\|^REFUSED')" -eq "$live" ] || fail "a failed communicator did not refuse the next call"
        [ "$(count 'FDS')" -eq "$live" ] || fail "a rank did not count its descriptors"
        # (Rank 0 serves the store: a killed rank's store connection closes, so fewer is fine.)
        grep 'FDS' "$out" | awk '$NF > $(NF-1) { bad = 1 } END { exit bad }' || fail "file descriptors leaked"
        case $COLLX_FAULT in
          kill*) ;;
          *)
            [ "$rc" -eq 0 ] || fail "exit status $rc"
            case $transport in
              mpi) ;;  # see mp_worker.cpp: after a failure only the end of an MPI process is safe
              *) [ "$(count 'REBUILT OK')" -eq "$np" ] || fail "not every rank rebuilt a working communicator" ;;
            esac
            ;;
        esac
        ;;
    esac
    ;;
esac
case $scenario in
  soak | fault)
    # Every rank says the one seed it drew from, so a failure can be run again.
    [ "$(count 'SEED [0-9]')" -eq "$np" ] || fail "not every rank printed its seed"
    [ "$(sed -n 's/.*SEED \([0-9]*\) .*/\1/p' "$out" | sort -u | wc -l)" -eq 1 ] || fail "the ranks drew from different seeds"
    ;;
esac
grep -q 'NOT DETECTED' "$out" && fail "a rank did not detect the failure"
left=$(ls /dev/shm | grep -c "^collx-$job-")
[ "$left" -eq 0 ] || fail "$left shared-memory segments of the job left in /dev/shm"
echo "PASS ($scenario${COLLX_FAULT:+ $COLLX_FAULT} over $transport, $np ranks, ${elapsed}s)"
