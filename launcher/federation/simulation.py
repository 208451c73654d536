"""federation=simulation: Flower's Simulation Engine (Ray) behind a SuperLink in simulation
mode; ``num_clients`` virtual SuperNodes, ``partition-id`` set by Flower. With
``federation.ray_address`` the engine joins an existing Ray cluster (``ray start --head``)."""

from __future__ import annotations

from pathlib import Path

from flbackdoor.config import ExperimentConfig
from launcher.federation.local import superlink_cmd
from launcher.federation.processes import ProcessGroup, free_port, port_open
from launcher.federation.submit import flwr_env, submit, write_flwr_home, write_run_config


def federation_config(cfg: ExperimentConfig) -> str:
    f = cfg.federation
    config = (f"num-supernodes={cfg.num_clients} client-resources-num-cpus={f.client_num_cpus} "
              f"client-resources-num-gpus={f.client_num_gpus}")
    if f.num_cpus and not f.ray_address:  # a cluster's size is the cluster's
        config += f" init-args-num-cpus={f.num_cpus}"
    return config


def run_simulation(cfg: ExperimentConfig, run_dir: Path) -> int:
    f = cfg.federation
    http = free_port(f.host)
    home = write_flwr_home(run_dir, f"{f.host}:{http}")
    extra = {"RAY_ADDRESS": f.ray_address} if f.ray_address else {}
    env = flwr_env(home, extra)
    run_config = write_run_config(cfg, run_dir, run_dir)
    with ProcessGroup(run_dir / "logs", env) as procs:
        # The Fleet API is unused in simulation but still binds: give it a free port too.
        procs.start("superlink", superlink_cmd(f.host, free_port(f.host), http, simulation=True))
        procs.wait_for(lambda: port_open(f.host, http), f.startup_timeout_s, "SuperLink")
        return submit(run_dir, run_config, env, procs, federation_config(cfg))
