#!/usr/bin/python3
"""Per-call latency of a small all_reduce through torch.distributed, as percentiles.

    PYTHONPATH=build/python build/collx-run -n 2 /usr/bin/python3 benchmarks/torch_latency.py \
        [--backend collx|gloo] [--bytes 1024] [--calls 2000]

Blocking all_reduce of float32 ones, each call timed alone on rank 0 (the first tenth
left out as warm-up); prints p50, p90, p99, max and mean in microseconds.
"""

import argparse
import datetime
import time

import torch
import torch.distributed as dist

import collx_torch  # noqa: F401  registers the backend "collx"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="collx")
    ap.add_argument("--bytes", type=int, default=1024)
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args()
    dist.init_process_group(args.backend, timeout=datetime.timedelta(seconds=60))
    t = torch.ones(args.bytes // 4)
    times = []
    for _ in range(args.calls):
        start = time.perf_counter()
        dist.all_reduce(t)
        times.append(time.perf_counter() - start)
    times = sorted(times[args.calls // 10:])
    n = len(times)
    if dist.get_rank() == 0:
        us = lambda x: x * 1e6  # noqa: E731
        print(f"{args.backend} all_reduce {args.bytes} B, {n} calls: p50 {us(times[n // 2]):.1f} "
              f"p90 {us(times[int(n * 0.9)]):.1f} p99 {us(times[int(n * 0.99)]):.1f} max {us(times[-1]):.1f} "
              f"mean {us(sum(times) / n):.1f} us", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
