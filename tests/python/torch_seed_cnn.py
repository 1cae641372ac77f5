"""PyTorch reference for the GPU check: the same seed CNN (two 3x3 conv + pool, dense 64,
dropout 0.5, 2 classes) trained step at batch 128 on 28x28 inputs; prints images/s of
forward+backward+Adam (eager mode, median of three rounds) on the given device. With `--micro N` the batch of 128 is cut
into micro-batches of N whose gradients accumulate before the one Adam step (what ctcluster's
workers do with the job's micro_batch_size).

usage: torch_seed_cnn.py [cuda|cpu] [steps] [--micro N] [--json FILE]
"""

import json
import sys
import time

import torch
from torch import nn


class SeedCnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.fc1 = nn.Linear(64 * 5 * 5, 64)
        self.fc2 = nn.Linear(64, 2)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = self.drop(torch.relu(self.fc1(x.flatten(1))))
        return self.fc2(x)


def main():
    args = sys.argv[1:]
    micro = int(args[args.index("--micro") + 1]) if "--micro" in args else 128
    json_out = args[args.index("--json") + 1] if "--json" in args else None
    positional = [a for i, a in enumerate(args) if not a.startswith("--") and (i == 0 or not args[i - 1].startswith("--"))]
    device = positional[0] if positional else "cuda"
    steps = int(positional[1]) if len(positional) > 1 else 50
    torch.manual_seed(1)
    model = SeedCnn().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(128, 1, 28, 28, device=device)
    y = torch.randint(0, 2, (128,), device=device)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")

    def step():
        opt.zero_grad()
        for start in range(0, 128, micro):
            loss_fn(model(x[start:start + micro]), y[start:start + micro]).backward()
        opt.step()

    for _ in range(5):
        step()
    def rate():
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(steps):
            step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return steps * 128 / (time.perf_counter() - t)

    # The median of three rounds, as ctcluster-gpu-check measures.
    ips = sorted(rate() for _ in range(3))[1]
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
    print(f"pytorch {torch.__version__} eager on {device} ({name}): {ips:.0f} images/s (forward+backward+Adam, batch 128 as micro-batches of {micro}, {torch.get_num_threads()} threads)")
    if json_out:
        with open(json_out, "w") as f:
            json.dump({"torch": torch.__version__, "device": device, "threads": torch.get_num_threads(), "micro_batch": micro, "images_per_sec": ips}, f)


if __name__ == "__main__":
    main()
