"""Run a function in 2 CPU processes over gloo, for DDP-equivalence tests.

The processes are forked from the test's own, which has imported everything already: a few
seconds per test, where spawning (each process importing torch, Lightning and the test module
anew) took half a minute on 2 cores."""

from __future__ import annotations

import os
import socket
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, fn, args: tuple, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.save(fn(rank, world_size, *args), os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_ddp(fn, *args, world_size: int = 2) -> list:
    """``fn(rank, world_size, *args)`` in each process; returns the ranks' results in order."""
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(
            _worker,
            (world_size, _free_port(), fn, args, out_dir),
            nprocs=world_size,
            start_method="fork",
        )
        return [torch.load(os.path.join(out_dir, f"{r}.pt")) for r in range(world_size)]
