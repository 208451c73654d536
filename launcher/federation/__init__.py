"""Launchers: start (or reach) a Flower federation and submit the experiment to it.

- ``local``: one SuperLink and N SuperNodes as separate OS processes over gRPC on loopback.
- ``simulation``: a SuperLink in simulation mode (Flower's Simulation Engine, Ray).
- ``remote``: submit to a SuperLink someone else started (other hosts, containers).
- ``docker``: a SuperLink and N SuperNode containers through the Docker SDK (TLS, node auth).
"""

from __future__ import annotations

from pathlib import Path

from flbackdoor.config import ExperimentConfig


def launch(cfg: ExperimentConfig, run_dir: Path) -> int:
    """Run the experiment in the federation ``cfg.federation.mode``; return the Flower run id."""
    if cfg.federation.mode == "local":
        from launcher.federation.local import run_local as run
    elif cfg.federation.mode == "simulation":
        from launcher.federation.simulation import run_simulation as run
    elif cfg.federation.mode == "docker":
        from launcher.federation.docker import run_docker as run
    else:
        from launcher.federation.remote import run_remote as run
    return run(cfg, run_dir)
