"""ClientApp cold start and per-partition data load.

    python benchmarks/cold_start.py [--repeats N] [--quick]

Cold start: in deployment Flower 1.39 starts a new ``flwr-clientapp`` process for every
message. Measured here: a fresh Python process that imports what that process imports for our
app (Flower, ``client.app`` and PyTorch), opens its partition and trains one batch; from the
parent's spawn to the end of that batch. Data load: opening one partition's memory-mapped cache
and making tensors of it, in this process.
"""

from __future__ import annotations

import subprocess
import sys
import time

import torch

from common import REPO, experiment, machine, median, parser

CHILD = """
import sys, time
t0 = float(sys.argv[1])
from client.app import app  # noqa: F401  (what flwr-clientapp loads)
import torch
from benchmarks.common import experiment
from flbackdoor.data.cache import load_partition, prepare
from flbackdoor.models import build_model
from flbackdoor.training import Normalizer, as_tensors, train
cfg = experiment(sys.argv[2:])
cfg.client.epochs = 1
x, y = load_partition(prepare(cfg), 0)
x, y = as_tensors(x[:cfg.client.batch_size], y[:cfg.client.batch_size], torch.device("cpu"))
d = cfg.dataset
model = build_model(cfg.model, d.channels, d.image_size, d.num_classes)
train(model, x, y, cfg.client, Normalizer(d, torch.device("cpu")))
print(time.time() - t0)
"""


def cold_start(overrides: list[str]) -> float:
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", CHILD, str(t0), *overrides], cwd=REPO,
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def data_load(overrides: list[str], partitions: int) -> float:
    from flbackdoor.data import cache
    from flbackdoor.training import as_tensors

    cfg = experiment(overrides)
    folder = cache.prepare(cfg)
    times = []
    for p in range(partitions):
        t0 = time.perf_counter()
        x, y = cache.load_partition(folder, p)
        as_tensors(x, y, torch.device("cpu"))
        times.append(time.perf_counter() - t0)
    return median(times)


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    repeats = 1 if args.quick else args.repeats
    overrides: list[str] = args.overrides
    print(f"machine: {machine()}")
    starts = [cold_start(overrides) for _ in range(repeats)]
    print("cold starts: " + ", ".join(f"{s:.2f} s" for s in starts))
    load = data_load(overrides, 10)
    print(f"ClientApp cold start {median(starts):.2f} s; partition load "
          f"{load * 1000:.1f} ms (MNIST, 6,000 images)")


if __name__ == "__main__":
    main()
