#!/bin/sh
# One multi-process test: run.sh LAUNCHER WORKER TRANSPORT NP SCENARIO
#   LAUNCHER  path to collx-run, or "mpirun:PATH" to launch with Open MPI's mpirun
#   SCENARIO  collectives | kill | mismatch   (see mp_worker.cpp), optionally -mpi-init
# Checks what every rank reported, that nothing hung, and that no shared-memory
# segment of the job is left in /dev/shm.
set -u
launcher=$1 worker=$2 transport=$3 np=$4 scenario=$5
# SCENARIO-mpi-init: the ranks meet through MPI (init_from_mpi) instead of the environment.
COLLX_INIT=env
case $scenario in *-mpi-init) scenario=${scenario%-mpi-init} COLLX_INIT=mpi ;; esac
export COLLX_INIT
job="t$$-$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
start=$(date +%s)
export COLLX_TRANSPORT="$transport" COLLX_JOB_ID="$job"
case $launcher in
  mpirun:*)
    export OMPI_MCA_mpi_yield_when_idle=1
    timeout 240 "${launcher#mpirun:}" --allow-run-as-root --oversubscribe -np "$np" \
      -x COLLX_TRANSPORT -x COLLX_JOB_ID -x COLLX_INIT -x OMPI_MCA_mpi_yield_when_idle "$worker" "$scenario" 1 >"$out" 2>&1
    ;;
  *)
    timeout 240 "$launcher" -n "$np" -- "$worker" "$scenario" 1 >"$out" 2>&1
    ;;
esac
rc=$?
elapsed=$(($(date +%s) - start))
cat "$out"
fail() { echo "FAIL: $*"; exit 1; }
[ "$rc" -ne 124 ] || fail "the job hung (killed by timeout after ${elapsed}s)"
ok=$(grep -c 'OK [0-9]* cases' "$out")
detected=$(grep -c 'DETECTED' "$out")
case $scenario in
  collectives)
    [ "$rc" -eq 0 ] || fail "exit status $rc"
    [ "$ok" -eq "$np" ] || fail "$ok of $np ranks reported OK"
    ;;
  kill)
    [ "$rc" -ne 0 ] || fail "the launcher must report the killed rank"
    case $launcher in
      mpirun:*) ;;  # mpirun ends the whole job when a rank dies: no hang is what we can ask
      *) [ "$detected" -eq $((np - 1)) ] || fail "$detected of $((np - 1)) surviving ranks detected the failure" ;;
    esac
    [ "$elapsed" -lt 30 ] || fail "took ${elapsed}s"
    ;;
  mismatch)
    [ "$detected" -eq "$np" ] || fail "$detected of $np ranks detected the mismatch"
    ;;
esac
grep -q 'NOT DETECTED' "$out" && fail "a rank did not detect the failure"
left=$(ls /dev/shm | grep -c "^collx-$job-")
[ "$left" -eq 0 ] || fail "$left shared-memory segments of the job left in /dev/shm"
echo "PASS ($scenario over $transport, $np ranks, ${elapsed}s)"
