"""ctcluster against PyTorch DDP, end to end, for the benchmark suite: the seed CNN trained on
PneumoniaMNIST's train split (global batch 128, Adam 1e-3, dropout 0.5, no augmentation) by a
real coordinator and N real LibTorch workers (`ctcluster-worker --device libtorch`, processes
on loopback, each given cores / N threads), and by N PyTorch DDP gloo processes (same threads,
`ddp_seed_cnn.py`). Each worker computes its share of the batch in one pass, as each DDP
process does (micro-batches of 128 / N). The two take turns for a number of rounds (this
machine's speed drifts); the images/s of each round are the steps between `--warmup` and
`--warmup + --steps` timed from the coordinator's status (`ctctl status`, polled every 0.2 s:
the step numbers are exact, the times within a poll), epoch-end evaluations included (DDP's
reference evaluates nothing).

usage: ctcluster_vs_ddp.py NPZ --bin DIR [--workers 2] [--steps 200] [--warmup 10] [--rounds 3]
                           [--json FILE]

DIR holds ctcluster-coordinator, ctctl and a ctcluster-worker built with the `tch` feature; the
worker finds libtorch through LD_LIBRARY_PATH (set here from the running torch). Use a ctctl of
the default build: one linked with libtorch spends a tenth of a second of CPU loading it at
every poll.
"""

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))
from ddp_seed_cnn import ddp_entry  # noqa: E402

BATCH = 128


def arg(name, default):
    return type(default)(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default


def wait_for_addr(path, proc, what):
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        if os.path.exists(path):
            for line in open(path).read().splitlines():
                kind, addr = line.split()
                if kind == "grpc":
                    return addr
        time.sleep(0.05)
    raise SystemExit(f"{what} did not report its address within 60 s")


def ctctl(bindir, url, *args):
    out = subprocess.run(
        [os.path.join(bindir, "ctctl"), "--coordinator", url, "--insecure", *args],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout


def ctcluster_round(bindir, dataset, workers, steps, warmup, work):
    """One run: a fresh coordinator and workers; images/s over the timed steps."""
    cores = os.cpu_count() or 1
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(max(1, cores // workers))
    env.setdefault("RUST_LOG", "warn")
    addr_file = os.path.join(work, f"coordinator-{time.time_ns()}.addr")
    state = os.path.join(work, f"state-{time.time_ns()}")
    procs = []
    try:
        coord = subprocess.Popen(
            [
                os.path.join(bindir, "ctcluster-coordinator"),
                "--listen", "127.0.0.1:0", "--state-url", state, "--insecure",
                "--addr-file", addr_file,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(work, "coordinator.log"), "a"),
        )
        procs.append(coord)
        url = "http://" + wait_for_addr(addr_file, coord, "the coordinator")
        for i in range(workers):
            procs.append(
                subprocess.Popen(
                    [
                        os.path.join(bindir, "ctcluster-worker"), "--coordinator", url,
                        "--insecure", "--device", "libtorch", "--name", f"bench-{i}",
                    ],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=open(os.path.join(work, f"worker-{i}.log"), "a"),
                )
            )
        spec = os.path.join(work, "spec.yaml")
        with open(spec, "w") as f:
            f.write(
                f"name: vs-ddp\ndataset: {dataset}\noutput: file://{work}/out-{time.time_ns()}\n"
                f"model:\n  name: seed-cnn\n  dropout: 0.5\nbatch_size: {BATCH}\n"
                f"micro_batch_size: {BATCH // workers}\nepochs: 100\nmax_steps: {warmup + steps}\n"
                f"min_workers: {workers}\noptimizer:\n  lr: 0.001\nseed: 1\n"
            )
        job = ctctl(bindir, url, "submit", spec).strip().split()[-1]
        start = end = None
        deadline = time.time() + 900
        while time.time() < deadline:
            s = json.loads(ctctl(bindir, url, "status", job, "-o", "json"))
            step = s.get("step", 0)
            now = time.perf_counter()
            if start is None and step >= warmup:
                start = (now, step)
            if step >= warmup + steps:
                end = (now, step)
                break
            if s.get("state") in ("failed", "cancelled"):
                raise SystemExit(f"the ctcluster job {s.get('state')}: {s.get('message')}")
            # Sparse polls: each is a process, whose CPU the workers would miss.
            time.sleep(0.2)
        if end is None:
            raise SystemExit("the ctcluster job did not finish its steps within 900 s")
        return (end[1] - start[1]) * BATCH / (end[0] - start[0])
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def ddp_round(npz, workers, steps):
    cores = os.cpu_count() or 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = f"/tmp/ctcluster_vs_ddp_{os.getpid()}.txt"
    mp.spawn(ddp_entry, args=(workers, npz, steps, max(1, cores // workers), port, tmp), nprocs=workers)
    ips = float(open(tmp).read())
    os.remove(tmp)
    return ips


def main():
    # The binaries of a `tch` build load libtorch (the worker's, and ctctl's, which links it).
    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    old = os.environ.get("LD_LIBRARY_PATH")
    os.environ["LD_LIBRARY_PATH"] = torch_lib + (":" + old if old else "")
    npz = sys.argv[1]
    bindir = arg("--bin", "")
    workers = arg("--workers", 2)
    steps = arg("--steps", 200)
    warmup = arg("--warmup", 10)
    rounds = arg("--rounds", 3)
    with tempfile.TemporaryDirectory(prefix="ctcluster-vs-ddp-") as work:
        dataset = os.path.join(work, "pneumonia")
        subprocess.run(
            [os.path.join(bindir, "ctctl"), "dataset", "from-npz", npz, "--out", dataset],
            check=True,
            capture_output=True,
        )
        ours, theirs = [], []
        for r in range(rounds):
            ours.append(ctcluster_round(bindir, "file://" + dataset, workers, steps, warmup, work))
            theirs.append(ddp_round(npz, workers, steps))
            print(
                f"round {r + 1}: ctcluster {workers} LibTorch workers {ours[-1]:.0f} images/s, "
                f"PyTorch DDP {workers} gloo processes {theirs[-1]:.0f} images/s, "
                f"ratio {ours[-1] / theirs[-1]:.2f}",
                flush=True,
            )
    result = {
        "torch": torch.__version__,
        "cores": os.cpu_count(),
        "workers": workers,
        "steps": steps,
        "ctcluster_images_per_sec": statistics.median(ours),
        "ddp_images_per_sec": statistics.median(theirs),
        "ratio": statistics.median(o / t for o, t in zip(ours, theirs)),
        "rounds": [{"ctcluster": o, "ddp": t} for o, t in zip(ours, theirs)],
    }
    print(
        f"median: ctcluster {result['ctcluster_images_per_sec']:.0f} images/s, DDP "
        f"{result['ddp_images_per_sec']:.0f} images/s, ratio {result['ratio']:.2f}"
    )
    if "--json" in sys.argv:
        with open(arg("--json", ""), "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main()
