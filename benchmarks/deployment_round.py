"""Deployment round overhead on loopback, warm ClientApp runners beside Flower's cold path, and
the peak memory of the server and of the client side.

    python benchmarks/deployment_round.py [--nodes 3 10] [--rounds N] [--paths cold warm]
                                          [--quick] [hydra overrides...]

A local deployment (SuperLink + one SuperNode process per client, gRPC on loopback) with
near-zero compute: every client holds one batch of MNIST and trains one epoch. Overhead of a
round = its wall time minus the slowest client's compute (measured here, without Flower, on the
same partitions). Each path is the same experiment with ``federation.warm_clientapps`` false
(Flower's new ``flwr-clientapp`` process per message) or true (one warm runner per SuperNode),
run one after the other in this one invocation. The identify wave is the ServerApp's
``identify_s`` (summary.json). While a run goes, /proc is sampled for the peak resident memory
(VmHWM) of the ServerApp and of one client-side process, and for the largest sum of the
client-side processes' resident memory at one moment (every ClientApp process alive then, or
every warm runner and their host), as RSS and as PSS (shared pages counted once: the warm
runners are forked from one process that imported PyTorch and the app).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from common import experiment, floor_seconds, machine, median, parser, run_flbackdoor, scratch

BATCH = 32
# warm-3s: warm runners, the SuperNode's idle poll left at Flower's 3 s (the default is 1 s)
PATHS = {"cold": ["federation.warm_clientapps=false"], "warm": ["federation.warm_clientapps=true"],
         "warm-3s": ["federation.warm_clientapps=true", "federation.supernode_idle_poll_s=3.0"]}


def _status_kib(proc: Path, field: str, name: str = "status") -> float:
    line = next(x for x in (proc / name).read_text().splitlines() if x.startswith(field))
    return int(line.split()[1])


class PeakMemory(threading.Thread):
    """Peak memory (MiB) of the Flower processes whose FLWR_HOME lies in ``run_dir``."""

    KINDS = {"server": ("flwr-serverapp",),
             "client": ("flwr-clientapp", "flbackdoor-clientapp-runner")}

    def __init__(self, run_dir: Path, interval_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.marker = f"FLWR_HOME={run_dir}".encode()
        self.interval_s = interval_s
        self.peak = {k: 0.0 for k in self.KINDS}  # one process's VmHWM
        self.client_total = 0.0  # the client-side processes' VmRSS at one moment, summed
        # The same in PSS (a page shared by n processes counts 1/n in each): what forked warm
        # runners really hold together. Read every PSS_EVERY samples: the kernel walks each
        # process's page tables for it.
        self.client_pss = 0.0
        self.stopped = threading.Event()

    PSS_EVERY = 20

    def _kind(self, cmd: bytes) -> str | None:
        return next((k for k, names in self.KINDS.items()
                     if any(n.encode() in cmd for n in names)), None)

    def run(self) -> None:
        sample = 0
        while not self.stopped.wait(self.interval_s):
            sample += 1
            total = pss = 0.0
            for proc in Path("/proc").glob("[0-9]*"):
                try:
                    kind = self._kind((proc / "cmdline").read_bytes())
                    if kind is None or self.marker not in (proc / "environ").read_bytes():
                        continue
                    hwm, rss = _status_kib(proc, "VmHWM") / 1024, _status_kib(proc, "VmRSS") / 1024
                    if kind == "client" and sample % self.PSS_EVERY == 0:
                        pss += _status_kib(proc, "Pss:", "smaps_rollup") / 1024
                except (OSError, StopIteration):
                    continue
                self.peak[kind] = max(self.peak[kind], hwm)
                total += rss if kind == "client" else 0.0
            self.client_total = max(self.client_total, total)
            self.client_pss = max(self.client_pss, pss)


def measure(nodes: int, rounds: int, path: str, extra: list[str]) -> dict:
    overrides = ["federation=local", f"num_clients={nodes}", f"clients_per_round={nodes}",
                 f"num_rounds={rounds}", f"dataset.max_train_samples={nodes * BATCH}",
                 f"client.batch_size={BATCH}", "server.eval_max_samples=500", *PATHS[path],
                 *extra]
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
        print(f"{path}, {nodes} nodes, round {row['round']}: {row['round_time_s']:.2f} s "
              f"(slowest client's compute {slowest:.3f} s)")
    identify = json.loads((run_dir / "summary.json").read_text())["identify_s"]
    return {"overhead": median(overheads), "identify": identify, "server": memory.peak["server"],
            "client": memory.peak["client"], "client_total": memory.client_total,
            "client_pss": memory.client_pss}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--nodes", type=int, nargs="+", default=[3, 10])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--paths", nargs="+", choices=list(PATHS),
                    help="default: cold and warm (--quick: warm only)")
    args = ap.parse_args()
    nodes, rounds = ([3], 2) if args.quick else (args.nodes, args.rounds)
    paths = args.paths or (["warm"] if args.quick else ["cold", "warm"])
    print(f"machine: {machine()}")
    results = {(n, p): measure(n, rounds, p, args.overrides) for n in nodes for p in paths}
    for (n, p), r in results.items():
        print(f"{p}, {n} nodes: overhead {r['overhead']:.2f} s a round, identify wave "
              f"{r['identify']:.2f} s; peak memory: server {r['server']:.0f} MiB, one client-side "
              f"process {r['client']:.0f} MiB, client side at once {r['client_total']:.0f} MiB "
              f"RSS, {r['client_pss']:.0f} MiB PSS")
    print("deployment round overhead: " + ", ".join(
        f"{n} nodes {p} {r['overhead']:.2f} s" for (n, p), r in results.items()))


if __name__ == "__main__":
    main()
