"""Simulation round time against the bare-PyTorch floor.

    python benchmarks/simulation_round.py [--workload sun|mnist] [--rounds N] [--quick]

``sun``: Sun et al.'s round (FEMNIST writers, EMNIST CNN, 30 clients x 5 epochs, batch 20,
``experiment=femnist_simulation``); ``mnist``: 10 clients, all every round (the default
experiment). For every round after the first (Ray's workers start in the first), the round's
training wave (push to last reply: every client's work plus Flower's) and the whole round
(plus aggregation and the server's central evaluation) are divided by the floor for the same
sampled clients, measured here right after the run; the figures are median ratios.
"""

from __future__ import annotations

from common import (experiment, floor_seconds, machine, median, parser, round_partitions,
                    run_flbackdoor, scratch)

WORKLOADS = {
    "sun": ["experiment=femnist_simulation"],
    "mnist": ["federation=simulation"],
}
QUICK = {
    "sun": ["num_clients=40", "client.epochs=1", "server.eval_max_samples=500"],
    "mnist": ["dataset.max_train_samples=2000", "server.eval_max_samples=500"],
}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="sun")
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    rounds = 2 if args.quick else max(args.rounds, 2)
    overrides = [*WORKLOADS[args.workload], *(QUICK[args.workload] if args.quick else []),
                 f"num_rounds={rounds}", *args.overrides]
    cfg = experiment(overrides)
    print(f"machine: {machine()}")
    rows = run_flbackdoor(overrides, scratch() / "run")
    waves, whole = [], []
    for row in rows[1:]:
        floor = floor_seconds(cfg, round_partitions(cfg, row["round"]))
        waves.append(row["wave_time_s"] / floor)
        whole.append(row["round_time_s"] / floor)
        print(f"round {row['round']}: wave {row['wave_time_s']:.2f} s, round "
              f"{row['round_time_s']:.2f} s, floor {floor:.2f} s")
    print(f"whole round (with central evaluation) / floor ({args.workload}): {median(whole):.3f}")
    print(f"simulation round (training wave) / floor ({args.workload}): {median(waves):.3f}")

if __name__ == "__main__":
    main()
