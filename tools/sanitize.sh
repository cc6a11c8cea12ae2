#!/bin/sh
# `make test-sanitize`: the core, failure, rendezvous and multi-process (shm, tcp) tests
# built with AddressSanitizer and UndefinedBehaviorSanitizer (-O1), in build-asan/.
# Any report fails the test that printed it. About 3 minutes of building on 2 cores.
# (test_collectives passes too, in about 6 minutes more: run it by hand with
# `cmake --build build-asan --target test_collectives && build-asan/tests/test_collectives`.)
set -eu
cd "$(dirname "$0")/.."
jobs=${JOBS:-$(nproc 2>/dev/null || echo 2)}
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug \
  -DCMAKE_CXX_FLAGS="-O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
  -DCOLLX_BUILD_BENCHMARKS=OFF -DCOLLX_BUILD_EXAMPLES=OFF >/dev/null
cmake --build build-asan -j "$jobs" --target test_core test_failures test_rendezvous mp_worker collx_run
export ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
ctest --test-dir build-asan --output-on-failure -j "$jobs" \
  -R '^(core|failures|rendezvous):|^multiprocess: (shm|tcp) p=' -E 'under mpirun'
