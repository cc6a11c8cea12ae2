# The two commands of the README. Each installs what is missing, configures into
# build/, builds on all cores and runs.
BUILD ?= build
BUILD_TYPE ?= Release
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
# Ninja where installed (tools/ensure-deps.sh installs ninja-build): it schedules single
# files rather than whole targets and has no per-target make overhead. A build directory
# keeps the generator it was first configured with (CMake refuses a change).
GENERATOR ?= $(if $(shell command -v ninja 2>/dev/null),Ninja,Unix Makefiles)

.PHONY: all deps bench-deps configure build test test-sanitize test-tsan bench format clean

all: build

deps:
	@sh tools/ensure-deps.sh

bench-deps:
	@sh tools/ensure-deps.sh bench

configure: deps
	cmake -S . -B $(BUILD) $(if $(wildcard $(BUILD)/CMakeCache.txt),,-G "$(GENERATOR)") -DCMAKE_BUILD_TYPE=$(BUILD_TYPE)

build: configure
	cmake --build $(BUILD) -j $(JOBS)

# --no-tests=error: a build folder configured without tests (COLLX_BUILD_TESTS=OFF) fails
# here instead of passing with nothing run.
test: build
	ctest --test-dir $(BUILD) --output-on-failure --no-tests=error -j $(JOBS)

# ASan + UBSan over the core, failure, rendezvous, shm and multi-process (shm, tcp) tests.
test-sanitize: deps
	sh tools/sanitize.sh address

# TSan over the local transport (core, failure and part of the collective tests) and the
# shm transport with its ranks as threads.
test-tsan: deps
	sh tools/sanitize.sh thread

# The default sweep: all-reduce, f32 sum, 8 B to 64 MiB, 2 ranks, collx over shm and
# tcp beside Open MPI and Gloo in the same run, the loopback limit (iperf3), the plot.
bench: bench-deps build
	sh tools/bench.sh $(BUILD)

format:
	clang-format -i $$(git ls-files '*.hpp' '*.cpp')

clean:
	rm -rf $(BUILD)
