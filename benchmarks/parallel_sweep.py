"""A 4-job simulation sweep run in parallel (``hydra/launcher=joblib``, 2 jobs at a time, each
job's Ray given ``cores // 2`` CPUs) against the same sweep run one job after another (Hydra's
basic launcher), on this machine. Figure: sequential wall time / parallel wall time (> 1: the
parallel sweep is faster).

    python benchmarks/parallel_sweep.py            # 4 jobs, 3 rounds each
    python benchmarks/parallel_sweep.py --quick    # 2 jobs, 1 round (CI: it still runs)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from common import DATA_ROOT, REPO, machine, parser, scratch


def sweep(launcher: list[str], seeds: str, rounds: int, where: Path, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "launcher.cli", "-m", *launcher, "federation=simulation",
           f"data.root={DATA_ROOT}", f"data.cache_dir={where / 'cache'}", "num_clients=4",
           "clients_per_round=4", f"num_rounds={rounds}", "dataset.max_train_samples=4000",
           "server.eval_max_samples=1000", f"seed={seeds}", f"hydra.sweep.dir={where / 'sweep'}",
           *extra]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3600)
    took = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"sweep failed ({done.returncode}): {done.stderr[-2000:]}")
    rows = (where / "sweep" / "sweep_summary.csv").read_text().splitlines()[1:]
    if len(rows) != len(seeds.split(",")) or not all(",done," in r for r in rows):
        raise RuntimeError(f"not every job finished: {rows}")
    return took


def main() -> None:
    args = parser(__doc__).parse_args()
    jobs, rounds = (2, 1) if args.quick else (4, 3)
    seeds = ",".join(str(s) for s in range(jobs))
    cores = os.cpu_count() or 1
    print(f"machine: {machine()}; {jobs} jobs of {rounds} round(s), 4 virtual clients each")
    base = scratch()
    # The clean data cache is shared: prepare it once, outside both timings.
    subprocess.run([sys.executable, "-m", "launcher.cli", "federation=simulation",
                    f"data.root={DATA_ROOT}", f"data.cache_dir={base / 'cache'}", "num_clients=4",
                    "clients_per_round=4", "num_rounds=1", "dataset.max_train_samples=4000",
                    "server.eval_max_samples=1000", f"hydra.run.dir={base / 'warm'}"],
                   cwd=REPO, check=True, capture_output=True, timeout=1800)
    for name in ("sequential", "parallel"):
        (base / name).mkdir()
        (base / name / "cache").symlink_to(base / "cache")
    sequential = sweep([], seeds, rounds, base / "sequential", args.overrides)
    print(f"sequential (basic launcher): {sequential:.1f} s")
    parallel = sweep(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], seeds, rounds,
                     base / "parallel",
                     [f"federation.num_cpus={max(1, cores // 2)}", *args.overrides])
    print(f"parallel (joblib, 2 jobs at a time, federation.num_cpus={max(1, cores // 2)}): "
          f"{parallel:.1f} s")
    print(f"parallel sweep speed-up (sequential / parallel wall time): {sequential / parallel:.2f}")


if __name__ == "__main__":
    main()
