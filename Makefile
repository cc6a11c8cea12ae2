# The two commands of the README. Each installs what is missing, configures into
# build/, builds on all cores and runs.
BUILD ?= build
BUILD_TYPE ?= Release
JOBS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: all deps bench-deps configure build test bench format clean

all: build

deps:
	@sh tools/ensure-deps.sh

bench-deps:
	@sh tools/ensure-deps.sh bench

configure: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE)

build: configure
	cmake --build $(BUILD) -j $(JOBS)

test: build
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)

# The default sweep: all-reduce, f32 sum, 8 B to 64 MiB, 2 ranks. Today over the
# in-process transport only; the baselines say why they are skipped.
bench: bench-deps build
	$(BUILD)/collx-bench --np 2 -b 8 -e 64M -f 2 --vs mpi,gloo --json $(BUILD)/bench.json --csv $(BUILD)/bench.csv
	/usr/bin/python3 benchmarks/plot $(BUILD)/bench.json $(BUILD)/bench

format:
	clang-format -i $$(git ls-files '*.hpp' '*.cpp')

clean:
	rm -rf $(BUILD)
