"""federation=remote: submit to a SuperLink that is already running (another host, a
container). The ServerApp runs next to that SuperLink, so ``data.root``/``data.cache_dir`` are
read there and results land in ``federation.results_dir`` on that host (default: this run's
folder path, e.g. on a shared disk). SuperNodes on other hosts name their own data folders in
their node config (``data-root``, ``cache-dir``)."""

from __future__ import annotations

from pathlib import Path

from flbackdoor.config import ExperimentConfig
from launcher.federation.submit import flwr_env, submit, write_flwr_home, write_run_config


def run_remote(cfg: ExperimentConfig, run_dir: Path) -> int:
    f = cfg.federation
    home = write_flwr_home(run_dir, f.address, f.insecure, f.root_certificates)
    results = Path(f.results_dir) if f.results_dir else run_dir
    run_config = write_run_config(cfg, run_dir, results)
    return submit(run_dir, run_config, flwr_env(home))
