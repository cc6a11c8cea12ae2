"""Train a small model with DistributedDataParallel on backend "collx".

Build (collx_torch is built when Debian's python3-torch, libtorch-dev and pybind11-dev are
installed; `make test` installs them), then launch as torchrun would:

    make test                      # or: cmake -S . -B build && cmake --build build
    PYTHONPATH=build/python build/collx-run -n 2 /usr/bin/python3 examples/torch_ddp.py

collx-run sets torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT). Debian 12's `python3 -m torch.distributed.run` (torch 1.13) fails on
Python 3.11 before it starts a worker (its default --redirects parses to None), so use
collx-run, or start each rank yourself with those five variables.
"""

import datetime

import torch
import torch.distributed as dist

import collx_torch  # noqa: F401  registers the backend "collx"


def main():
    dist.init_process_group("collx", timeout=datetime.timedelta(seconds=60))
    rank, size = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same initial model everywhere (DDP broadcasts rank 0's anyway)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 1))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.02)
    data = torch.Generator().manual_seed(100 + rank)  # each rank its own shard
    w_true = torch.linspace(-1, 1, 16)
    for step in range(50):
        x = torch.randn(64, 16, generator=data)
        y = (x @ w_true).unsqueeze(1) + 0.01 * torch.randn(64, 1, generator=data)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(ddp(x), y)
        loss.backward()  # gradients all-reduced by collx, bucket by bucket
        opt.step()
        if step % 10 == 9 and rank == 0:
            print(f"step {step + 1:3d}  loss {loss.item():.5f}", flush=True)
    checksum = torch.tensor([sum(p.double().sum().item() for p in model.parameters())], dtype=torch.float64)
    sums = [torch.zeros(1, dtype=torch.float64) for _ in range(size)]
    dist.all_gather(sums, checksum)
    same = all(torch.equal(s, sums[0]) for s in sums)
    print(f"rank {rank}: parameter checksum {checksum.item():.12f}, identical on all {size} ranks: "
          f"{'yes' if same else 'NO'}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
