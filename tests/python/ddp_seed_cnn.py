"""PyTorch DDP reference for the benchmark suite: the seed CNN trained on PneumoniaMNIST's train
split, global batch 128, Adam 1e-3, on the CPU. Measures images/s of one process without DDP
(all threads) and of DDP with N gloo processes on loopback (threads split between them), and
writes both with the scaling efficiency (DDP / single) as JSON.

usage: ddp_seed_cnn.py NPZ [--procs 2] [--steps 40] [--json FILE]
"""

import json
import os
import socket
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, os.path.dirname(__file__))
from torch_seed_cnn import SeedCnn  # noqa: E402

BATCH = 128
WARMUP = 5


def arg(name, default):
    return type(default)(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default


def load(npz):
    d = np.load(npz)
    x = torch.from_numpy(d["train_images"].astype(np.float32)).unsqueeze(1)
    x = (x - x.mean()) / x.std()
    y = torch.from_numpy(d["train_labels"].reshape(-1).astype(np.int64))
    return x, y


def train(rank, world, npz, steps, threads, port, out):
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    x, y = load(npz)
    model = SeedCnn()
    if world > 1:
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(port)
        dist.init_process_group("gloo", rank=rank, world_size=world)
        model = DistributedDataParallel(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    per = BATCH // world
    n = len(y)
    start = None
    for step in range(steps + WARMUP):
        if step == WARMUP:
            if world > 1:
                dist.barrier()
            start = time.perf_counter()
        base = (step * BATCH) % (n - BATCH) + rank * per
        opt.zero_grad()
        loss_fn(model(x[base : base + per]), y[base : base + per]).backward()
        opt.step()
    if world > 1:
        dist.barrier()
    ips = steps * BATCH / (time.perf_counter() - start)
    if rank == 0:
        out[0] = ips
    if world > 1:
        dist.destroy_process_group()
    return ips


def ddp_entry(rank, world, npz, steps, threads, port, path):
    box = [0.0]
    train(rank, world, npz, steps, threads, port, box)
    if rank == 0:
        with open(path, "w") as f:
            f.write(str(box[0]))


def main():
    npz = sys.argv[1]
    procs = arg("--procs", 2)
    steps = arg("--steps", 40)
    cores = os.cpu_count() or 1
    box = [0.0]
    train(0, 1, npz, steps, cores, 0, box)
    single = box[0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = f"/tmp/ddp_seed_cnn_{os.getpid()}.txt"
    mp.spawn(ddp_entry, args=(procs, npz, steps, max(1, cores // procs), port, tmp), nprocs=procs)
    ddp = float(open(tmp).read())
    os.remove(tmp)
    result = {
        "torch": torch.__version__,
        "cores": cores,
        "single_process_images_per_sec": single,
        "ddp_processes": procs,
        "ddp_images_per_sec": ddp,
        "scaling_efficiency": ddp / single,
    }
    print(
        f"pytorch {torch.__version__}: one process {single:.0f} images/s; DDP {procs} gloo processes "
        f"{ddp:.0f} images/s; efficiency {ddp / single:.2f}"
    )
    if "--json" in sys.argv:
        with open(arg("--json", ""), "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main()
