"""PyTorch reference for the zoo benchmark (tests/benches/zoo_throughput.rs): the same
architectures (the seed CNN; ResNets with ctcluster's layout: a 3x3 stride-1 stem without
max-pool at 28x28, basic blocks, GroupNorm with ctcluster's group counts or no normalisation),
the same step (28x28x1 inputs, batch 64 as 2 micro-batches of 32, summed cross-entropy,
Adam), in eager mode on the CPU with the same number of threads. Prints images/s per
architecture as the Rust benchmark names them.

usage: torch_zoo.py [--threads N] [--json FILE]
"""

import json
import sys
import time

import torch
from torch import nn

from torch_seed_cnn import SeedCnn

BATCH, MICRO = 64, 32


def norm_groups(c):
    g = 32
    while g > 1 and (c % g != 0 or c // g < 2):
        g //= 2
    return g


def norm(c, kind):
    return nn.GroupNorm(norm_groups(c), c) if kind == "group" else Affine(c)


class Affine(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))

    def forward(self, x):
        return x * self.weight[None, :, None, None] + self.bias[None, :, None, None]


class Block(nn.Module):
    def __init__(self, c_in, c_out, stride, kind):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = norm(c_out, kind)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = norm(c_out, kind)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), norm(c_out, kind))

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        s = x if self.downsample is None else self.downsample(x)
        return torch.relu(y + s)


class ResNet(nn.Module):
    def __init__(self, blocks, width, kind, classes=2):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, 1, 1, bias=False)
        self.bn1 = norm(width, kind)
        layers, c_in = [], width
        for s, n in enumerate(blocks):
            c_out = width << s
            stage = [Block(c_in if b == 0 else c_out, c_out, 2 if s > 0 and b == 0 else 1, kind) for b in range(n)]
            layers.append(nn.Sequential(*stage))
            c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, classes)

    def forward(self, x):
        x = self.layers(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def seed_cnn_without_dropout():
    """The seed CNN of the GPU check's reference, dropout off (as the Rust benchmark runs it)."""
    model = SeedCnn()
    model.drop = nn.Identity()
    return model


def images_per_sec(model, steps):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(BATCH, 1, 28, 28) * 255.0
    y = torch.arange(BATCH) % 2
    loss_fn = nn.CrossEntropyLoss(reduction="sum")

    def step():
        opt.zero_grad()
        for m in range(0, BATCH, MICRO):
            loss_fn(model((x[m:m + MICRO] - 128.0) / 64.0), y[m:m + MICRO]).backward()
        for p in model.parameters():
            p.grad /= BATCH
        opt.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * BATCH / (time.perf_counter() - start)


def main():
    args = sys.argv[1:]
    if "--threads" in args:
        torch.set_num_threads(int(args[args.index("--threads") + 1]))
    json_out = args[args.index("--json") + 1] if "--json" in args else None
    torch.manual_seed(1)
    zoo = [
        ("seed-cnn", seed_cnn_without_dropout(), 20),
        ("resnet [1,1,1,1] width 16", ResNet([1, 1, 1, 1], 16, "group"), 20),
        ("resnet [1,1,1,1] width 16, norm none", ResNet([1, 1, 1, 1], 16, "none"), 20),
        ("resnet18", ResNet([2, 2, 2, 2], 64, "group"), 3),
    ]
    rows = []
    for name, model, steps in zoo:
        ips = images_per_sec(model, steps)
        params = sum(p.numel() for p in model.parameters())
        print(f"| {name} | {params} | {ips:.1f} |")
        rows.append({"architecture": name, "parameters": params, "steps": steps, "images_per_sec": ips})
    doc = {"benchmark": "torch_zoo", "threads": torch.get_num_threads(), "rows": rows}
    if json_out:
        json.dump(doc, open(json_out, "w"), indent=2)


if __name__ == "__main__":
    main()
