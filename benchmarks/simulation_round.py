"""Simulation round time against the bare-PyTorch floor.

    python benchmarks/simulation_round.py [--workload sun|mnist] [--rounds N] [--quick]

``sun``: Sun et al.'s round (FEMNIST writers, EMNIST CNN, 30 clients x 5 epochs, batch 20,
``experiment=femnist_simulation``); ``mnist``: 10 clients, all every round (the default
experiment). For every round after the first (Ray's workers start in the first), the round's
wall time is divided by the floor for the same sampled clients, measured here right after the
run; the figure is the median ratio.
"""

from __future__ import annotations

import argparse

from common import experiment, floor_seconds, machine, median, round_partitions, run_flbackdoor, scratch

WORKLOADS = {
    "sun": ["experiment=femnist_simulation"],
    "mnist": ["federation=simulation"],
}
# --quick: the same code paths on small data, so CI notices when the benchmark breaks.
QUICK = {
    "sun": ["num_clients=40", "client.epochs=1", "server.eval_max_samples=500"],
    "mnist": ["dataset.max_train_samples=2000", "server.eval_max_samples=500"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="sun")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    rounds = 2 if args.quick else max(args.rounds, 2)
    overrides = [*WORKLOADS[args.workload], *(QUICK[args.workload] if args.quick else []),
                 f"num_rounds={rounds}"]
    cfg = experiment(overrides)
    print(f"machine: {machine()}")
    rows = run_flbackdoor(overrides, scratch() / "run")
    ratios = []
    for row in rows[1:]:
        floor = floor_seconds(cfg, round_partitions(cfg, row["round"]))
        ratios.append(row["round_time_s"] / floor)
        print(f"round {row['round']}: {row['round_time_s']:.2f} s, floor {floor:.2f} s, "
              f"ratio {ratios[-1]:.3f}")
    print(f"simulation round / floor ({args.workload}): {median(ratios):.3f}")


if __name__ == "__main__":
    main()
