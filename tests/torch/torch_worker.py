"""One rank of a collx_torch test, started with torchrun's environment (collx-run sets
RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT). Every expected value is computed here in
Python from the ranks' inputs, never taken from another backend's output.

  torch_worker.py ops        every operation, dtype, reduction, root, in place and out,
                             uneven splits, async with wait() and get_future().wait()
  torch_worker.py ddp        20 DDP steps (BatchNorm, find_unused_parameters) over gloo and
                             over collx from one seed: equal parameters
  torch_worker.py subgroup   a new_group of ranks 0 and 1 of 3 runs all_reduce, broadcast
  torch_worker.py mismatch   rank 0 all-reduces another size: every rank raises
  torch_worker.py kill       the last rank SIGKILLs itself mid-training: the others raise,
                             naming it

Prints "OK <scenario>" (or "RAISED <message>" for the failure scenarios) and exits 0
when the scenario held on this rank.
"""

import datetime
import os
import signal
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.environ.get("COLLX_TORCH_DIR", ""))
import collx_torch  # noqa: E402,F401  (registers the backend)

TIMEOUT_S = float(os.environ.get("COLLX_TORCH_TEST_TIMEOUT", "20"))
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16,
          torch.int8, torch.uint8, torch.int32, torch.int64]
FLOATS = {torch.float32, torch.float64, torch.float16, torch.bfloat16}


def value(r, i, prod=False):
    """Rank r's element i: small integers, exact in every dtype (sums of 3 ranks of at
    most 9 fit int8; products of 1s and 2s)."""
    h = (r + 1) * 0x9E3779B97F4A7C15 + (i + 1) * 0xBF58476D1CE4E5B9
    h = ((h ^ (h >> 31)) * 0x94D049BB133111EB) % (1 << 64)
    h ^= h >> 29
    return 1 + h % 2 if prod else h % 10


def tensor(r, n, dt, prod=False, first=0):
    return torch.tensor([value(r, first + i, prod) for i in range(n)], dtype=torch.float64).to(dt)


def reduce_ref(op, xs):
    if op == dist.ReduceOp.SUM:
        return sum(xs)
    if op == dist.ReduceOp.AVG:
        return sum(xs) / len(xs)
    if op == dist.ReduceOp.PRODUCT:
        out = 1
        for x in xs:
            out *= x
        return out
    if op == dist.ReduceOp.MIN:
        return min(xs)
    return max(xs)


def expected_reduction(op, p, n, dt, first=0):
    prod = op == dist.ReduceOp.PRODUCT
    vals = [reduce_ref(op, [value(r, first + i, prod) for r in range(p)]) for i in range(n)]
    return torch.tensor(vals, dtype=torch.float64).to(dt)


failures = 0


def check(name, got, want):
    global failures
    ok = got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want)
    if not ok and got.dtype in (torch.float16, torch.bfloat16) and got.shape == want.shape:
        # avg rounds once to the 16-bit type
        ok = torch.allclose(got.double(), want.double(), rtol=1e-2)
    if not ok:
        failures += 1
        print(f"FAILED {name}: got {got.tolist()[:8]} want {want.tolist()[:8]}", flush=True)


def ops_for(dt):
    ops = [dist.ReduceOp.SUM, dist.ReduceOp.PRODUCT, dist.ReduceOp.MIN, dist.ReduceOp.MAX]
    if dt in FLOATS:
        ops.append(dist.ReduceOp.AVG)
    return ops


def reductions(r, p):
    for dt in DTYPES:
        for n in (0, 1, 7, 1001):
            for op in ops_for(dt):
                prod = op == dist.ReduceOp.PRODUCT
                t = tensor(r, n, dt, prod)
                dist.all_reduce(t, op=op)
                check(f"all_reduce {dt} {op} n={n}", t, expected_reduction(op, p, n, dt))
                for root in range(p):
                    t = tensor(r, n, dt, prod)
                    mine = t.clone()
                    dist.reduce(t, dst=root, op=op)
                    check(f"reduce {dt} {op} root={root}", t,
                          expected_reduction(op, p, n, dt) if r == root else mine)
            # reduce-scatter: list form and tensor form, in place and out
            op = dist.ReduceOp.SUM
            ins = [tensor(r, n, dt, first=j * n) for j in range(p)]
            out = torch.empty(n, dtype=dt)
            dist.reduce_scatter(out, ins, op=op)
            check(f"reduce_scatter {dt} n={n}", out, expected_reduction(op, p, n, dt, first=r * n))
            whole = tensor(r, p * n, dt)
            out = torch.empty(n, dtype=dt)
            dist.reduce_scatter_tensor(out, whole, op=op)
            check(f"reduce_scatter_tensor {dt} n={n}", out, expected_reduction(op, p, n, dt, first=r * n))
            whole = tensor(r, p * n, dt)
            dist.reduce_scatter_tensor(whole[r * n:(r + 1) * n], whole, op=op)  # in place
            check(f"reduce_scatter_tensor in place {dt}", whole[r * n:(r + 1) * n],
                  expected_reduction(op, p, n, dt, first=r * n))
        ts = [tensor(r, 5, dt), tensor(r, 3, dt, first=5)]
        dist.all_reduce_coalesced(ts)
        check(f"all_reduce_coalesced {dt}", torch.cat(ts), expected_reduction(dist.ReduceOp.SUM, p, 8, dt))


def movements(r, p):
    for dt in DTYPES + [torch.bool]:
        for n in (0, 1, 7, 1001):
            conv = (lambda t: t.bool()) if dt == torch.bool else (lambda t: t)
            src = lambda q, k=n, first=0: conv(tensor(q, k, torch.int64 if dt == torch.bool else dt, first=first))
            for root in range(p):
                t = src(r).clone() if r == root else torch.zeros(n, dtype=dt)
                dist.broadcast(t, src=root)
                check(f"broadcast {dt} root={root} n={n}", t, src(root))
            outs = [torch.zeros(n, dtype=dt) for _ in range(p)]
            dist.all_gather(outs, src(r))
            check(f"all_gather {dt} n={n}", torch.cat(outs), torch.cat([src(q) for q in range(p)]))
            out = torch.zeros(p * n, dtype=dt)
            dist.all_gather_into_tensor(out, src(r))
            check(f"all_gather_into_tensor {dt} n={n}", out, torch.cat([src(q) for q in range(p)]))
            out = torch.zeros(p * n, dtype=dt)
            out[r * n:(r + 1) * n] = src(r)
            dist.all_gather_into_tensor(out, out[r * n:(r + 1) * n])  # in place
            check(f"all_gather_into_tensor in place {dt}", out, torch.cat([src(q) for q in range(p)]))
            # all_to_all_single, even: block j of rank q's input is src(q, n, first=j*n)
            ins = torch.cat([src(r, first=j * n) for j in range(p)])
            out = torch.zeros(p * n, dtype=dt)
            dist.all_to_all_single(out, ins)
            check(f"all_to_all_single {dt} n={n}", out, torch.cat([src(q, first=r * n) for q in range(p)]))
            for root in range(p):
                outs = [torch.zeros(n, dtype=dt) for _ in range(p)] if r == root else None
                dist.gather(src(r), gather_list=outs, dst=root)
                if r == root:
                    check(f"gather {dt} root={root}", torch.cat(outs), torch.cat([src(q) for q in range(p)]))
                out = torch.zeros(n, dtype=dt)
                dist.scatter(out, scatter_list=[src(r, first=j * n) for j in range(p)] if r == root else None,
                             src=root)
                check(f"scatter {dt} root={root}", out, src(root, first=r * n))


def splits(r, p):
    """all_to_all_single with uneven split sizes (zeros among them) of 2-D tensors, and
    the list all_to_all: rows rank q sends rank j: (q + 2 j) % 3."""
    rows = lambda q, j: (q + 2 * j) % 3
    for dt in (torch.float32, torch.int64, torch.bfloat16):
        in_splits = [rows(r, j) for j in range(p)]
        out_splits = [rows(q, r) for q in range(p)]
        block = lambda q, j: tensor(q, rows(q, j) * 4, dt, first=100 * j).reshape(-1, 4)
        ins = torch.cat([block(r, j) for j in range(p)])
        out = torch.zeros(sum(out_splits), 4, dtype=dt)
        dist.all_to_all_single(out, ins, output_split_sizes=out_splits, input_split_sizes=in_splits)
        check(f"all_to_all_single uneven {dt}", out, torch.cat([block(q, r) for q in range(p)]))
        outs = [torch.zeros(rows(q, r) * 4, dtype=dt) for q in range(p)]
        dist.all_to_all(outs, [block(r, j).reshape(-1) for j in range(p)])
        check(f"all_to_all list {dt}", torch.cat(outs), torch.cat([block(q, r).reshape(-1) for q in range(p)]))


def point_to_point(r, p):
    nxt, prv = (r + 1) % p, (r - 1) % p
    for dt in DTYPES:
        # A pipeline: blocking recv from r-1, then send to r+1.
        got = torch.zeros(9, dtype=dt)
        if r > 0:
            dist.recv(got, src=r - 1, tag=3)
            check(f"recv {dt}", got, tensor(r - 1, 9, dt))
        if r + 1 < p:
            dist.send(tensor(r, 9, dt), dst=r + 1, tag=3)
        # A ring shift as batch_isend_irecv does it: every rank sends first.
        got = torch.zeros(11, dtype=dt)
        reqs = dist.batch_isend_irecv([dist.P2POp(dist.isend, tensor(r, 11, dt), nxt),
                                       dist.P2POp(dist.irecv, got, prv)])
        for q in reqs:
            q.wait()
        check(f"isend/irecv ring {dt}", got, tensor(prv, 11, dt))


def asynchrony(r, p):
    t = tensor(r, 33, torch.float32)
    w = dist.all_reduce(t, async_op=True)
    w.wait()
    check("async wait", t, expected_reduction(dist.ReduceOp.SUM, p, 33, torch.float32))
    t = tensor(r, 33, torch.float64)
    fut = dist.all_reduce(t, async_op=True).get_future()
    res = fut.wait()
    check("async future", res[0], expected_reduction(dist.ReduceOp.SUM, p, 33, torch.float64))
    works = [dist.broadcast(torch.full((4,), float(r)), src=q, async_op=True) for q in range(p)]
    for w in works:
        w.wait()
        if not w.is_completed():
            raise AssertionError("a waited work is not completed")


def refusals():
    global failures
    for call, words in ((lambda: dist.all_reduce(torch.ones(2, dtype=torch.int32), op=dist.ReduceOp.BAND),
                         "does not support ReduceOp.BAND"),
                        (lambda: dist.all_reduce(torch.ones(4)[::2]), "not contiguous"),
                        (lambda: dist.all_reduce(torch.ones(2, dtype=torch.bool)), "reductions of bool"),
                        (lambda: dist.recv(torch.ones(2)), "any source")):
        try:
            call()
            failures += 1
            print(f"FAILED: accepted what should be refused ({words})", flush=True)
        except Exception as e:  # noqa: BLE001
            if words not in str(e):
                failures += 1
                print(f"FAILED: refused with '{e}', expected '{words}'", flush=True)


def ops(r, p):
    reductions(r, p)
    movements(r, p)
    splits(r, p)
    point_to_point(r, p)
    asynchrony(r, p)
    refusals()
    dist.barrier()


def train(group, seed, steps=20):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                                torch.nn.Linear(16, 4))
    unused = torch.nn.Linear(4, 4)  # never used: find_unused_parameters must cope
    net = torch.nn.ModuleDict({"model": model, "unused": unused})

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net["model"](x)

    ddp = torch.nn.parallel.DistributedDataParallel(Wrapped(), process_group=group, find_unused_parameters=True)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(1234 + dist.get_rank())
    for _ in range(steps):
        x = torch.randn(32, 8, generator=g)
        y = torch.randn(32, 4, generator=g)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(ddp(x), y)
        loss.backward()
        opt.step()
    return [t.detach().clone() for t in ddp.module.state_dict().values()], loss.item()


def ddp(r, p):
    global failures
    gloo = dist.new_group(backend="gloo")
    ref, _ = train(gloo, 7)
    got, loss = train(None, 7)  # the default group: collx
    for a, b in zip(ref, got):
        same = torch.equal(a, b) if p == 2 else torch.allclose(a, b, rtol=1e-6, atol=1e-7)
        if not same:
            failures += 1
            print(f"FAILED ddp: collx and gloo differ by {(a.double() - b.double()).abs().max().item()}", flush=True)
    print(f"loss {loss:.6f} checksum {sum(t.double().sum().item() for t in got):.9f}", flush=True)


def subgroup(r, p):
    pair = dist.new_group([0, 1], backend="collx")
    if r < 2:
        t = tensor(r, 13, torch.float32)
        dist.all_reduce(t, group=pair)
        want = tensor(0, 13, torch.float32) + tensor(1, 13, torch.float32)
        check("subgroup all_reduce", t, want)
        b = tensor(r, 5, torch.int32)
        dist.broadcast(b, src=1, group=pair)
        check("subgroup broadcast", b, tensor(1, 5, torch.int32))
    dist.barrier()


def mismatch(r, p):
    dist.barrier()  # every rank is past init_process_group, whose store rank 0 serves
    t = torch.ones(5 if r == 0 else 6)
    start = time.monotonic()
    try:
        dist.all_reduce(t)
    except Exception as e:  # noqa: BLE001
        print(f"RAISED after {time.monotonic() - start:.1f}s: {e}", flush=True)
        return
    raise AssertionError("a mismatched all_reduce did not raise")


def kill(r, p):
    dist.barrier()  # every rank is past init_process_group, whose store rank 0 serves
    victim = p - 1
    start = time.monotonic()
    try:
        for step in range(1000):
            if r == victim and step == 5:
                sys.stdout.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            t = torch.ones(1 << 16)
            dist.all_reduce(t)
    except Exception as e:  # noqa: BLE001
        print(f"RAISED after {time.monotonic() - start:.1f}s: {e}", flush=True)
        if f"rank {victim}" not in str(e) and f"peer {victim}" not in str(e):
            raise AssertionError(f"the error does not name rank {victim}") from e
        return
    raise AssertionError("the others went on after a rank was killed")


def main():
    scenario = sys.argv[1]
    if scenario == "kill":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # collx-run stops the job when one dies
    dist.init_process_group("collx", timeout=datetime.timedelta(seconds=TIMEOUT_S))
    r, p = dist.get_rank(), dist.get_world_size()
    globals()[scenario](r, p)
    if failures:
        print(f"FAILED {failures} checks", flush=True)
        sys.exit(1)
    if scenario in ("mismatch", "kill"):
        os._exit(0)  # the group failed: nothing left to tear down
    dist.destroy_process_group()
    print(f"OK {scenario}", flush=True)


if __name__ == "__main__":
    main()
