#!/bin/sh
# The sanitizer runs of CI (.ci/run), each built at -O1 in its own directory with only
# the targets it runs. Any report fails the test that printed it.
#
#   sh tools/sanitize.sh [address]   `make test-sanitize`: AddressSanitizer and
#       UndefinedBehaviorSanitizer over the core, failure, rendezvous, shm, peer, ipc and
#       exchange tests and the multi-process shm and tcp tests (collx-run), in build-asan/.
#   sh tools/sanitize.sh thread      `make test-tsan`: ThreadSanitizer over the local
#       transport (ranks as threads: test_core, test_failures, test_exchange, and
#       test_collectives' f32 matrix with counts cut to 1001 and ranks to 8, the async and
#       the untyped API), the shm
#       transport with its ranks as threads of one process (test_shm), and the peer-memory
#       executor on teams of threads, as a GPU's thread blocks (test_peer, up to 5 ranks:
#       tests/CMakeLists.txt), in build-tsan/.
#
# Left out, for CI's time: test_collectives under ASan (clean, about 6 more minutes on
# 2 cores: `cmake --build build-asan --target test_collectives && build-asan/tests/test_collectives`),
# and under TSan the other element types and the million-element counts
# (`build-tsan/tests/test_collectives`, about 8 minutes for f32 alone).
set -eu
cd "$(dirname "$0")/.."
jobs=${JOBS:-$(nproc 2>/dev/null || echo 2)}
kind=${1:-address}
# The tests' tight deadlines stretch by this whole factor (tests/slack.hpp, run.sh, and
# ctest's TIMEOUT of quick checks, read when configuring): sanitizers on a loaded 2-core
# machine run several times slower. A value already set wins.
# -g1: line tables, enough for the reports' file:line, at about 60% of the compile time
# of -g (mp_worker under ASan: 26 s against 45 s here).
common="-DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG=-g1 -DCOLLX_BUILD_BENCHMARKS=OFF -DCOLLX_BUILD_EXAMPLES=OFF -DCOLLX_BUILD_TORCH=OFF"
case $kind in
  address)
    dir=build-asan
    flags="-O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
    # Names, not a list: multi-process shm and tcp tests added later run here too.
    select='^(core|failures|rendezvous|shm|peer|ipc|exchange):|^multiprocess: (shm|tcp) p='
    export ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
    export COLLX_TEST_SLACK="${COLLX_TEST_SLACK:-3}"
    ;;
  thread)
    dir=build-tsan
    # -Wno-tsan: TSan derives no ordering from atomic_thread_fence (the fence itself is
    # still executed). The shm doorbell fences order only atomics, which TSan never
    # reports, so there is nothing for the warning to point at.
    flags="-O1 -fsanitize=thread -fno-omit-frame-pointer -Wno-tsan"
    # The element type changes the reduction loop, not who touches what when: one type.
    select='^(core|failures|shm|peer|exchange):|^collectives: ?.*: f32$|^collectives: ?(async|the untyped)'
    export COLLX_TEST_MAX_COUNT=1001
    # test_collectives' 12 and 16 threads triple its f32 time under TSan (10 s against
    # 38 s for all_reduce): they run in the plain build; 7 and up to 8 run here.
    export COLLX_TEST_MAX_RANKS=8
    # No suppressions: none has been needed. Each rank maps the shm segments at its own
    # addresses, so TSan sees unrelated locations where there is one: the rings' ordering
    # between ranks is neither checked nor misreported; each rank's own state, the
    # executor and the communicator are. Suppress only a provable false positive, in a
    # checked-in file with a comment per entry.
    export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1"
    export COLLX_TEST_SLACK="${COLLX_TEST_SLACK:-5}"
    ;;
  *)
    echo "usage: $0 [address|thread]" >&2
    exit 2
    ;;
esac
# Ninja where installed, as in the Makefile; a build directory keeps its generator.
gen=""
if [ ! -f "$dir/CMakeCache.txt" ] && command -v ninja >/dev/null 2>&1; then gen="-G Ninja"; fi
# shellcheck disable=SC2086
cmake -S . -B "$dir" $gen $common -DCMAKE_CXX_FLAGS="$flags" >/dev/null
# The targets: collx_sanitize_address and collx_sanitize_thread in tests/CMakeLists.txt.
cmake --build "$dir" -j "$jobs" --target "collx_sanitize_$kind"
# TSan's shadow memory needs fixed address ranges, which some kernels' address-space
# randomization (vm.mmap_rnd_bits > 28) breaks ("unexpected memory mapping"): run
# without randomization where the kernel lets us.
wrap=""
if [ "$kind" = thread ] && setarch "$(uname -m)" -R true 2>/dev/null; then wrap="setarch $(uname -m) -R"; fi
$wrap ctest --test-dir "$dir" --output-on-failure -j "$jobs" -R "$select" -E 'under mpirun'
