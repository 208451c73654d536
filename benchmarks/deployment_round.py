"""Deployment round overhead on loopback, and the peak memory of the server and of a client.

    python benchmarks/deployment_round.py [--nodes 3 10] [--rounds N] [--quick]

A local deployment (SuperLink + one SuperNode process per client, gRPC on loopback) with
near-zero compute: every client holds one batch of MNIST and trains one epoch. Overhead of a
round = its wall time minus the slowest client's compute (measured here, without Flower, on the
same partitions). While the run goes, the peak resident memory (VmHWM) of the ServerApp process
and of every ClientApp process is sampled from /proc.
"""

from __future__ import annotations

import threading
from pathlib import Path

from common import experiment, floor_seconds, machine, median, parser, run_flbackdoor, scratch

BATCH = 32


class PeakMemory(threading.Thread):
    """Largest VmHWM (MiB) seen per kind of Flower process whose FLWR_HOME lies in ``run_dir``."""

    KINDS = {"server": "flwr-serverapp", "client": "flwr-clientapp"}

    def __init__(self, run_dir: Path, interval_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.marker = f"FLWR_HOME={run_dir}".encode()
        self.interval_s, self.peak = interval_s, {k: 0.0 for k in self.KINDS}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            for proc in Path("/proc").glob("[0-9]*"):
                try:
                    cmd = (proc / "cmdline").read_bytes()
                    kind = next((k for k, n in self.KINDS.items() if n.encode() in cmd), None)
                    if kind is None or self.marker not in (proc / "environ").read_bytes():
                        continue
                    hwm = next(line for line in (proc / "status").read_text().splitlines()
                               if line.startswith("VmHWM"))
                except (OSError, StopIteration):
                    continue
                self.peak[kind] = max(self.peak[kind], int(hwm.split()[1]) / 1024)


def measure(nodes: int, rounds: int, extra: list[str]) -> tuple[float, dict]:
    overrides = ["federation=local", f"num_clients={nodes}", f"clients_per_round={nodes}",
                 f"num_rounds={rounds}", f"dataset.max_train_samples={nodes * BATCH}",
                 f"client.batch_size={BATCH}", "server.eval_max_samples=500", *extra]
    cfg = experiment(overrides)
    run_dir = scratch() / "run"
    memory = PeakMemory(run_dir)
    memory.start()
    try:
        rows = run_flbackdoor(overrides, run_dir)
    finally:
        memory.stopped.set()
        memory.join()
    slowest = max(floor_seconds(cfg, [p]) for p in range(nodes))
    overheads = []
    for row in rows:
        overheads.append(row["round_time_s"] - slowest)
        print(f"{nodes} nodes, round {row['round']}: {row['round_time_s']:.2f} s "
              f"(slowest client's compute {slowest:.3f} s)")
    return median(overheads), memory.peak


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--nodes", type=int, nargs="+", default=[3, 10])
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    nodes, rounds = ([3], 1) if args.quick else (args.nodes, args.rounds)
    print(f"machine: {machine()}")
    results = {n: measure(n, rounds, args.overrides) for n in nodes}
    for n, (_, peak) in results.items():
        print(f"peak memory with {n} nodes: server {peak['server']:.0f} MiB, "
              f"one client {peak['client']:.0f} MiB")
    print("deployment round overhead: " + ", ".join(
        f"{n} nodes {overhead:.2f} s" for n, (overhead, _) in results.items()))


if __name__ == "__main__":
    main()
