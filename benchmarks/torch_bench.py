#!/usr/bin/python3
"""Collectives through torch.distributed: backend collx (over shm and over tcp) beside
backend gloo, in the same run, float32, sizes 1 KiB to 64 MiB by 4x.

    PYTHONPATH=build/python build/collx-run -n 2 /usr/bin/python3 benchmarks/torch_bench.py \
        [--json build/torch-bench.json] [--min 1K] [--max 64M] [--iters 20] [--warmup 5]
    benchmarks/plot build/torch-bench.json build/torch-bench

Columns as nccl-tests prints them: size is the whole buffer of all_reduce and broadcast,
the gathered (all_gather) or scattered (reduce_scatter) buffer and one rank's all-to-all
buffer; time is the mean of --iters calls after --warmup, the slowest rank's; algbw =
size / time; busbw = algbw * 2(p-1)/p (all_reduce), 1 (broadcast), (p-1)/p (the others).
Each size is checked once against values computed here. Gloo in torch 1.13 has no
all_gather_into_tensor and no reduce_scatter: its list all_gather stands beside collx's
all_gather_into_tensor, and reduce_scatter is collx's alone. Also the overhead of the
binding: collx-bench's all-reduce at the same sizes is the comparison (docs/performance.md).
"""

import argparse
import datetime
import json
import os
import time

import torch
import torch.distributed as dist

import collx_torch  # noqa: F401  registers the backend "collx"

COLLECTIVES = ["all_reduce", "all_gather", "reduce_scatter", "broadcast", "all_to_all"]


def parse_size(s):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(s[:-1]) * units[s[-1].upper()] if s[-1].upper() in units else int(s)


def busbw_factor(coll, p):
    if coll == "all_reduce":
        return 2 * (p - 1) / p
    return 1.0 if coll == "broadcast" else (p - 1) / p


def make_call(coll, impl, group, nbytes, p, r):
    """The call, its output tensor, and the expected output (checked once)."""
    n = nbytes // 4
    if coll == "all_reduce":
        t = torch.full((n,), float(r + 1))
        want = torch.full((n,), float(p * (p + 1) // 2))
        # Not in place for the check: each call adds again, so reset before the checked call.
        return (lambda: dist.all_reduce(t, group=group)), t, want, lambda: t.fill_(float(r + 1))
    if coll == "broadcast":
        t = torch.full((n,), float(r))
        return (lambda: dist.broadcast(t, src=0, group=group)), t, torch.zeros(n), lambda: t.fill_(float(r))
    if coll == "all_gather":
        inp = torch.full((n // p,), float(r))
        want = torch.cat([torch.full((n // p,), float(q)) for q in range(p)])
        if impl == "gloo-torch":
            outs = [torch.empty(n // p) for _ in range(p)]
            return (lambda: dist.all_gather(outs, inp, group=group)), outs, want, None
        out = torch.empty(n // p * p)
        return (lambda: dist.all_gather_into_tensor(out, inp, group=group)), out, want, None
    if coll == "reduce_scatter":
        inp = torch.full((n // p * p,), float(r + 1))
        out = torch.empty(n // p)
        want = torch.full((n // p,), float(p * (p + 1) // 2))
        return (lambda: dist.reduce_scatter_tensor(out, inp, group=group)), out, want, None
    inp = torch.cat([torch.full((n // p,), float(r * p + j)) for j in range(p)])
    out = torch.empty(n // p * p)
    want = torch.cat([torch.full((n // p,), float(q * p + r)) for q in range(p)])
    return (lambda: dist.all_to_all_single(out, inp, group=group)), out, want, None


def measure(coll, impl, group, timer, nbytes, args, p, r):
    call, out, want, reset = make_call(coll, impl, group, nbytes, p, r)
    for _ in range(args.warmup):
        call()
    dist.barrier(group=timer)
    start = time.perf_counter()
    for _ in range(args.iters):
        call()
    t = torch.tensor([(time.perf_counter() - start) / args.iters], dtype=torch.float64)
    if reset:
        reset()
    call()
    got = torch.cat(out) if isinstance(out, list) else out
    wrong = torch.tensor([int((got != want).sum().item())], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=timer)
    dist.all_reduce(wrong, group=timer)
    return t.item(), int(wrong.item())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default="")
    ap.add_argument("--min", default="1K")
    ap.add_argument("--max", default="64M")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--colls", default=",".join(COLLECTIVES))
    args = ap.parse_args()
    timeout = datetime.timedelta(seconds=120)
    dist.init_process_group("gloo", timeout=timeout)
    r, p = dist.get_rank(), dist.get_world_size()
    timer = dist.new_group(backend="gloo")  # the harness's own barrier and reductions
    groups = []
    for transport in ("shm", "tcp"):
        os.environ["COLLX_TRANSPORT"] = transport
        groups.append(("collx-torch", transport, dist.new_group(backend="collx", timeout=timeout)))
    groups.append(("gloo-torch", "tcp", None))  # the default group
    rows = []
    sizes = []
    s = parse_size(args.min)
    while s <= parse_size(args.max):
        sizes.append(s)
        s *= 4
    for coll in args.colls.split(","):
        if r == 0:
            print(f"# {coll}, {p} ranks, float32\n#{'size (B)':>11} {'time (us)':>11} {'algbw':>7} "
                  f"{'busbw':>7} {'#wrong':>6}  impl", flush=True)
        for nbytes in sizes:
            for impl, transport, group in groups:
                if impl == "gloo-torch" and coll == "reduce_scatter":
                    continue  # not in Gloo's torch 1.13 backend
                secs, wrong = measure(coll, impl, group, timer, nbytes, args, p, r)
                algbw = nbytes / secs / 1e9
                busbw = algbw * busbw_factor(coll, p)
                if r == 0:
                    print(f"{nbytes:12d} {secs * 1e6:11.2f} {algbw:7.2f} {busbw:7.2f} {wrong:6d}  "
                          f"{impl}/{transport}", flush=True)
                rows.append({"impl": impl, "collective": coll, "algorithm": "", "transport": transport,
                             "ranks": p, "nodes": 1, "bytes": nbytes, "count": nbytes // 4, "dtype": "float",
                             "op": "sum", "in_place": coll in ("all_reduce", "broadcast"),
                             "time_us": secs * 1e6, "algbw_gbps": algbw, "busbw_gbps": busbw, "wrong": wrong})
    if r == 0 and args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    dist.barrier(group=timer)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
