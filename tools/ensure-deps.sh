#!/bin/sh
# Installs what `make test` (no argument) and `make bench` (argument: bench) need on
# Debian, or says exactly what to run.
# As root it uses apt-get; otherwise it prints the apt-get line and fails.
set -eu
missing=""
need() { # need <package> <test command...>
  pkg=$1; shift
  if ! "$@" >/dev/null 2>&1; then missing="$missing $pkg"; fi
}
need cmake command -v cmake
need g++ command -v g++
need make command -v make
need doctest-dev test -f /usr/include/doctest/doctest.h
# The multi-process tests run the mpi transport under mpirun; the baseline tests use
# MPI and Gloo.
need openmpi-bin command -v mpirun
need libopenmpi-dev command -v mpicxx
need libgloo-dev test -f /usr/include/gloo/allreduce_ring.h
# The libFuzzer test builds the fuzz targets with clang++ -fsanitize=fuzzer; libFuzzer
# itself (libclang_rt.fuzzer) is in libclang-rt-dev, not in clang.
need clang command -v clang++
need libclang-rt-dev sh -c 'ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a'
# The emulated-cluster tests make network namespaces, veth links and tc limits.
need iproute2 command -v ip
# The torch.distributed backend (bindings/torch) and its tests: Debian's PyTorch 1.13.
need python3-torch /usr/bin/python3 -c "import torch"
need libtorch-dev test -f /usr/include/torch/csrc/distributed/c10d/ProcessGroup.hpp
need pybind11-dev test -f /usr/include/pybind11/pybind11.h
# The function-length check (tests/CMakeLists.txt)
need universal-ctags sh -c 'ctags --version 2>/dev/null | grep -q "Universal Ctags"'
# Ninja: optional (the Makefile falls back to Unix Makefiles), but it makes the build
# faster, so it is installed where this script can install things.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  need ninja-build command -v ninja
fi
if [ "${1:-}" = bench ]; then
  need libbenchmark-dev test -f /usr/include/benchmark/benchmark.h
  need python3-matplotlib /usr/bin/python3 -c "import matplotlib"
  need iperf3 command -v iperf3
fi
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "collx: installing missing Debian packages:$missing" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2
  # shellcheck disable=SC2086
  apt-get install -y -q --no-install-recommends $missing >&2
else
  echo "collx: missing packages:$missing" >&2
  echo "collx: run:  sudo apt-get install -y$missing" >&2
  exit 1
fi
