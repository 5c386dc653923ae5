#!/usr/bin/env python3
"""PyTorch (CPU) reference throughput for LeNet-5 training on Fashion-MNIST.

    python3 bench/lenet5_torch.py [BATCH=64] [STEPS=300]

Reads the IDX files fetched by `scripts/fetch-assets.sh cnn` from
${GSTICK_ASSETS:-<repo>/.cache/assets}/fashion-mnist/. Uses 2 threads,
Adam lr 1e-3, 20 warm-up steps, then times STEPS steps and prints one JSON
line: {"framework":"pytorch","images_per_s":...,"batch":...,"steps":...}.
Needs torch (not a build/test dependency of the project).
"""
import gzip
import json
import os
import struct
import sys
import time

import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("GSTICK_ASSETS", os.path.join(ROOT, ".cache", "assets"))
MEAN, STD = 0.2860, 0.3530
WARMUP = 20


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not a uint8 IDX file")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return torch.frombuffer(bytearray(data[4 + 4 * ndim :]), dtype=torch.uint8).reshape(dims)


def lenet5():
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),   # 6x28x28 -> 6x14x14
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),             # 16x10x10 -> 16x5x5
        nn.Flatten(),                                                # 400
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, 10),
    )


def main():
    batch = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    torch.set_num_threads(2)
    torch.manual_seed(0)

    d = os.path.join(CACHE, "fashion-mnist")
    x = read_idx(os.path.join(d, "train-images-idx3-ubyte.gz"))
    y = read_idx(os.path.join(d, "train-labels-idx1-ubyte.gz")).long()
    x = ((x.float() / 255.0 - MEAN) / STD).unsqueeze(1)  # N x 1 x 28 x 28
    n = x.shape[0]

    model = lenet5()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    perm = torch.randperm(n)
    pos = 0

    def step():
        nonlocal pos, perm
        if pos + batch > n:
            perm, pos = torch.randperm(n), 0
        idx = perm[pos : pos + batch]
        pos += batch
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        return loss

    for _ in range(WARMUP):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    loss.item()
    dt = time.perf_counter() - t0

    print(json.dumps({"framework": "pytorch", "images_per_s": round(batch * steps / dt, 1),
                      "batch": batch, "steps": steps}))


if __name__ == "__main__":
    main()
