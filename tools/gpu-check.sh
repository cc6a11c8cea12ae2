#!/bin/sh
# The GPU checks of the CUDA work, in one call of a lent GPU machine.
#
#   sh tools/gpu-check.sh build   here (no GPU needed): builds the CUDA tests and tools
#                                 into build-gpu/ for sm_90, cudart and libstdc++ static,
#                                 so that the folder runs on the GPU machine's image.
#   sh tools/gpu-check.sh run [NAME...]
#                                 there, from the repository root, with build-gpu carried
#                                 (device tool: carry ["build-gpu"]): runs every check (or
#                                 those whose names begin with a NAME given, e.g. `run
#                                 group ipc hier`), writes logs under $OUT (or out/), and
#                                 prints a summary last.
#
# The checks, in order (each bounded by `timeout`; a failure does not stop the rest):
#   smoke        a device answers
#   reduce       the reduction kernels against the host's, bit for bit
#   group        p = 2, 4, 8 ranks on one GPU in one process: every collective,
#                algorithm, type, reduction; errors; graph capture; staged host path
#   group-queues 4 ranks with CUDA's default 8 hardware queues (2 streams a rank), 5 refused
#   ipc          2 processes over CUDA IPC under collx-run, every collective ...
#   hier         4 processes as 2 emulated nodes x 2: CUDA IPC inside, staged tcp across
#   kernels      reduce and copy kernels in GB/s against cudaMemcpy (collx-cuda-kernels)
#   bench-cuda   collx-bench --transport cuda, p = 2, 4, 8, 8 B..256 MiB, -c 1 (#wrong)
#   bench-nccl   collx-bench --transport tcp,cuda_ipc --gpu --vs nccl, p = 2 and 4 (NCCL from
#                the machine's Python package nvidia-nccl-cu13, over loopback sockets)
#   bench-hier   collx-bench --transport tcp,cuda_hier --gpu, 4 ranks as 2 emulated nodes x 2
#   lanes        collx-bench --transport cuda, p = 2 and 8, over 1 to 32 lanes and 256 to 1024
#                threads a block: busbw from 1 MiB to 256 MiB
set -u
cd "$(dirname "$0")/.."
mode=${1:-run}
[ $# -gt 0 ] && shift
only="$*"  # check-name prefixes to run; empty: all
B=${GPU_BUILD:-build-gpu}  # where the binaries are (a carried folder may be named otherwise)

if [ "$mode" = build ]; then
  # Nothing the GPU machine lacks: no MPI, no Gloo (collx-bench's baselines there are
  # NCCL, loaded at run time), cudart and libstdc++ static.
  cmake -S . -B $B -DCMAKE_BUILD_TYPE=Release -DCOLLX_CUDA_STATIC_RUNTIME=ON \
    -DCMAKE_DISABLE_FIND_PACKAGE_MPI=ON -DCOLLX_BENCH_GLOO=OFF \
    -DCMAKE_EXE_LINKER_FLAGS="-static-libstdc++ -static-libgcc" >/dev/null || exit 1
  cmake --build $B -j "$(nproc)" --target test_cuda_smoke test_cuda_reduce test_cuda_group \
    cuda_ipc_worker cuda_hier_worker collx_run collx_bench collx_cuda_kernels || exit 1
  du -sh $B/tests/cuda/test_cuda_* $B/tests/cuda/cuda_ipc_worker $B/tests/cuda/cuda_hier_worker $B/collx-run $B/collx-bench \
    $B/collx-cuda-kernels 2>/dev/null
  # What the binaries still need from the system: the C library, and no more.
  ldd $B/collx-bench $B/tests/cuda/test_cuda_group | grep -v -e linux-vdso -e ld-linux -e libc.so -e libm.so
  echo "carry: $B (the binaries above; the rest of $B is ignored there)"
  exit 0
fi

out=${OUT:-out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$out/gpu.txt" 2>&1
cat "$out/gpu.txt"
# NCCL for --vs nccl: the Python package's library (no NCCL is installed system-wide).
nccl=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null)
[ -n "$nccl" ] && export LD_LIBRARY_PATH="$nccl:${LD_LIBRARY_PATH:-}"
summary=""
linebuf=""
command -v stdbuf >/dev/null && linebuf="stdbuf -oL -eL"
# All checks together stay within one device call (10 minutes at most): each is cut to
# what is left of GPU_CHECK_BUDGET seconds, and those that no longer fit are listed as
# not run.
budget=${GPU_CHECK_BUDGET:-540}
began=$(date +%s)
check() {  # check <name> <seconds> <command...>
  name=$1
  secs=$2
  shift 2
  if [ -n "$only" ]; then
    wanted=no
    for w in $only; do
      case $name in "$w"*) wanted=yes ;; esac
    done
    [ $wanted = no ] && return
  fi
  left=$((budget - ($(date +%s) - began)))
  if [ "$left" -lt 15 ]; then
    summary="$summary$(printf '%-11s %-22s' "$name" "not run (budget spent)")
"
    return
  fi
  [ "$secs" -gt "$left" ] && secs=$left
  start=$(date +%s)
  # Line-buffered, so that a check cut by its bound still shows how far it got.
  timeout "$secs" $linebuf "$@" >"$out/$name.log" 2>&1
  rc=$?
  took=$(($(date +%s) - start))
  case $rc in
    0) verdict=ok ;;
    77) verdict=skipped ;;
    124) verdict="TIMEOUT after ${secs}s" ;;
    *) verdict="FAILED rc=$rc" ;;
  esac
  summary="$summary$(printf '%-11s %-22s %4ss  %s' "$name" "$verdict" "$took" "$out/$name.log")
"
  tail -3 "$out/$name.log"
}
check smoke 20 $B/tests/cuda/test_cuda_smoke --duration=true
check reduce 60 $B/tests/cuda/test_cuda_reduce --duration=true
check group 150 $B/tests/cuda/test_cuda_group --duration=true
check group-queues 40 env COLLX_TEST_DEFAULT_QUEUES=1 $B/tests/cuda/test_cuda_group \
  "--test-case=cuda group: with the default hardware queues*"
check ipc 90 sh -c "$B/tests/cuda/cuda_ipc_worker --probe && $B/collx-run -n 2 -- $B/tests/cuda/cuda_ipc_worker"
check hier 90 sh -c "$B/tests/cuda/cuda_hier_worker --probe && $B/collx-run -n 4 -- $B/tests/cuda/cuda_hier_worker --nodes 2"
check kernels 60 $B/collx-cuda-kernels -b 1M -e 1G -n 20 --all
for p in 2 4 8; do
  check "bench-cuda$p" 45 $B/collx-bench --transport cuda --np $p -b 8 -e 256M -f 4 -n 20 -w 5 -c 1 \
    --csv "$out/bench-cuda$p.csv"
done
for p in 2 4; do
  check "bench-nccl$p" 90 $B/collx-bench --transport tcp,cuda_ipc --gpu --vs nccl --np $p -b 8 -e 64M -f 4 -n 10 -w 3 \
    -c 1 --csv "$out/bench-nccl$p.csv"
done
check bench-hier 90 sh -c "$B/tests/cuda/cuda_hier_worker --probe && $B/collx-run -n 4 -- sh -c \
  'COLLX_NODE_ID=node\$((RANK / 2)) exec $B/collx-bench --transport tcp,cuda_hier --gpu -b 8 -e 64M -f 4 \
  -n 10 -w 3 -c 1 --csv $out/bench-hier.csv'"
# The lanes (thread blocks per rank, COLLX_GPU_LANES) and threads per block
# (COLLX_GPU_THREADS) of the in-process group against its all-reduce busbw: one line per
# run and size, "p lanes threads size busbw(out of place) busbw(in place)".
check lanes 150 sh -c "for run in '2 1 512' '2 2 512' '2 4 512' '2 8 512' '2 16 512' '2 32 512' \
  '2 8 256' '2 8 1024' '8 1 512' '8 4 512' '8 8 512' '8 16 512' '8 32 512'; do set -- \$run; \
  COLLX_GPU_LANES=\$2 COLLX_GPU_THREADS=\$3 $B/collx-bench --transport cuda --np \$1 -b 1M -e 256M -f 4 \
  -n 20 -w 5 -c 1 | awk -v p=\$1 -v l=\$2 -v t=\$3 '/collx.cuda/ { print p, l, t, \$1, \$8, \$12 }'; done"
printf '\n%s' "$summary"
