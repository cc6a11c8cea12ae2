#!/bin/sh
# Builds each fuzz target with clang++ -fsanitize=fuzzer,address,undefined and runs
# libFuzzer on it for a bounded time, starting from its checked-in corpus.
# usage: run_libfuzzer.sh <source dir> <work dir> <seconds per target> <target>...
# Exit: 0 nothing found; 1 a crash or a broken invariant (the input is kept in the work
# dir and printed in base64); 77 no clang++ or no libFuzzer here (ctest: skipped).
set -eu
src=$1 work=$2 seconds=$3
shift 3
cxx=${COLLX_FUZZ_CXX:-}
if [ -z "$cxx" ]; then
  for c in clang++ clang++-19 clang++-18 clang++-17 clang++-16 clang++-15 clang++-14; do
    if command -v "$c" >/dev/null 2>&1; then cxx=$c; break; fi
  done
fi
if [ -z "$cxx" ]; then
  echo "SKIP: no clang++ (Debian: apt-get install clang libclang-rt-dev)"
  exit 77
fi
mkdir -p "$work"
flags="-std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -pthread"
printf 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }\n' >"$work/probe.cpp"
if ! $cxx $flags "$work/probe.cpp" -o "$work/probe" >"$work/probe.log" 2>&1; then
  echo "SKIP: $cxx cannot link with -fsanitize=fuzzer (Debian: apt-get install libclang-rt-dev):"
  cat "$work/probe.log"
  exit 77
fi
status=0
for t in "$@"; do
  bin=$work/$t
  # Rebuilt only when a source or a header is newer than the binary.
  if [ ! -x "$bin" ] || [ -n "$(find "$src/include" "$src/tests/fuzz" -newer "$bin" -name '*.[hc]pp' | head -n 1)" ]; then
    start=$(date +%s)
    $cxx $flags -I"$src/include" "$src/tests/fuzz/$t.cpp" "$src/tests/fuzz/alloc_probe.cpp" -o "$bin"
    echo "$t: built with $cxx in $(($(date +%s) - start)) s"
  fi
  rm -rf "$work/corpus-$t" "$work/crash-$t-"*
  mkdir -p "$work/corpus-$t"
  # New inputs go to the work dir's corpus; the checked-in one is only read.
  if "$bin" -max_total_time="$seconds" -max_len=8192 -timeout=10 -rss_limit_mb=1024 -malloc_limit_mb=128 \
    -error_exitcode=1 -timeout_exitcode=1 -print_final_stats=1 -artifact_prefix="$work/crash-$t-" \
    "$work/corpus-$t" "$src/tests/fuzz/corpus/$t" >"$work/$t.log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t.log")
    speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/$t.log")
    cov=$(grep -o 'cov: [0-9]*' "$work/$t.log" | tail -n 1)
    echo "$t: ${seconds} s, $runs runs, $speed execs/s, $cov, corpus $(ls "$work/corpus-$t" | wc -l) new inputs: no crash"
  else
    status=1
    echo "FAIL: $t: libFuzzer found an input that breaks it; log $work/$t.log"
    grep -E 'fuzz invariant broken|ERROR:|SUMMARY:|Base64:|Test unit written' "$work/$t.log" || tail -n 30 "$work/$t.log"
  fi
done
exit $status
