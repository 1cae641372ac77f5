"""How far apart correct single-precision implementations of the seed CNN end up after the same
Adam steps, as a yardstick for the LibTorch-vs-pure-Rust comparison.

Replays the inputs that `ctcluster-gpu-check --dump DIR` wrote (normalised pixels, labels,
dropout masks of every micro-batch, the initial parameters) in PyTorch three ways: float64,
float32 with oneDNN (PyTorch's default CPU convolution) and float32 with oneDNN disabled (its
im2col convolution). Then prints the relative L2 distance between the final parameters of every
pair, together with ctcluster's runs from the dump (pure-Rust f32 and f64, the device's f32).

usage: precision_drift.py DIR [--json FILE]
"""

import json
import os
import sys

import numpy as np
import torch

SHAPES = [(32, 1, 3, 3), (32,), (64, 32, 3, 3), (64,), (64, 1600), (64,), (2, 64), (2,)]
MICRO = 32
BATCH = 128


def load(directory, name):
    return np.fromfile(os.path.join(directory, name + ".f32"), dtype="<f4")


def train(directory, dtype, onednn):
    """The dumped steps: 4 micro-batches of 32 summed, divided by 128, Adam (job defaults)."""
    torch.backends.mkldnn.enabled = onednn
    pixels = load(directory, "pixels").reshape(-1, 1, 28, 28)
    labels = load(directory, "labels").astype(np.int64)
    masks = load(directory, "masks").reshape(-1, 64)
    steps = len(labels) // BATCH
    q = torch.tensor(load(directory, "params_init")).to(dtype).requires_grad_(True)
    opt = torch.optim.Adam([q], lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    for step in range(steps):
        total = torch.zeros_like(q)
        for start in range(step * BATCH, (step + 1) * BATCH, MICRO):
            rows = slice(start, start + MICRO)
            x = torch.tensor(pixels[rows]).to(dtype)
            mask = torch.tensor(masks[rows]).to(dtype)
            parts, offset = [], 0
            for shape in SHAPES:
                n = int(np.prod(shape))
                parts.append(q[offset:offset + n].reshape(shape))
                offset += n
            w1, b1, w2, b2, f1, fb1, f2, fb2 = parts
            h = torch.max_pool2d(torch.relu(torch.conv2d(x, w1, b1)), 2)
            h = torch.max_pool2d(torch.relu(torch.conv2d(h, w2, b2)), 2)
            h = torch.relu(h.flatten(1) @ f1.T + fb1) * mask
            logits = h @ f2.T + fb2
            loss = torch.nn.functional.cross_entropy(
                logits, torch.tensor(labels[rows]), reduction="sum")
            (grad,) = torch.autograd.grad(loss, q)
            total += grad
        q.grad = total / BATCH
        opt.step()
    torch.backends.mkldnn.enabled = True
    return q.detach().double().numpy()


def main():
    args = sys.argv[1:]
    if not args:
        sys.exit(__doc__)
    directory = args[0]
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    runs = {
        "pytorch f64": train(directory, torch.float64, True),
        "pytorch f32 onednn": train(directory, torch.float32, True),
        "pytorch f32 im2col": train(directory, torch.float32, False),
        "ctcluster flex f64": load(directory, "params_flex_f64").astype(np.float64),
        "ctcluster flex f32": load(directory, "params_flex_f32").astype(np.float64),
        "ctcluster device f32": load(directory, "params_device").astype(np.float64),
    }
    names = list(runs)

    def rel(a, b):
        return float(np.linalg.norm(runs[a] - runs[b]) / np.linalg.norm(runs[b]))

    table = {a: {b: rel(a, b) for b in names} for a in names}
    width = max(len(n) for n in names)
    print("relative L2 distance of the final parameters (row vs column)")
    print(" " * width, " ".join(f"{i:>8}" for i in range(len(names))))
    for i, a in enumerate(names):
        print(f"{a:<{width}}", " ".join(f"{table[a][b]:8.1e}" for b in names), f" [{i}]")
    if "--json" in args:
        with open(args[args.index("--json") + 1], "w") as f:
            json.dump(table, f, indent=2)


if __name__ == "__main__":
    main()
