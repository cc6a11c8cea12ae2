#!/bin/sh
# `make bench`: the default sweep. All-reduce, float32 sum, 8 B to 64 MiB, 2 ranks,
# collx over shm and over tcp beside Open MPI and Gloo in the same run (under mpirun
# when Open MPI is installed, else 2 forked ranks and the MPI baseline is skipped),
# then the loopback TCP limit measured by iperf3 beside it, then the plot.
#   tools/bench.sh BUILD_DIR [extra collx-bench options]
set -eu
build=$1
shift
out="$build/bench"
args="--transport shm,tcp -b 8 -e 64M -f 2 -n 40 -w 10 --vs mpi,gloo --json $out.json --csv $out.csv"
if command -v mpirun >/dev/null 2>&1; then
  # Open MPI refuses root unless told; these two variables tell it (and are ignored
  # when not root).
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
    mpirun --oversubscribe -np 2 "$build/collx-bench" $args "$@"
else
  echo "# mpirun not found: 2 forked ranks, the MPI baseline is skipped" >&2
  "$build/collx-bench" --np 2 $args "$@"
fi
sh "$(dirname "$0")/loopback-limit.sh" || true
/usr/bin/python3 "$(dirname "$0")/../benchmarks/plot" "$out.json" "$out"
