"""federation=local: a SuperLink and one SuperNode per client, each its own OS process, talking
gRPC (Fleet API) on loopback. Every process is stopped on success, error and Ctrl-C."""

from __future__ import annotations

import shutil
from pathlib import Path

from flbackdoor.config import ExperimentConfig
from launcher.federation import commands
from launcher.federation.processes import ProcessGroup, free_port, port_open
from launcher.federation.submit import flwr_bin, flwr_env, submit, write_flwr_home, write_run_config


def node_roles(cfg: ExperimentConfig) -> list[str]:
    """The role each partition's SuperNode is started with (``role="malicious"`` for the
    experiment's attackers: real separate processes running attacker code)."""
    from flbackdoor.roles import roles_for
    from flbackdoor.data.cache import prepare

    roles = roles_for(cfg, prepare(cfg))
    return [roles.role(p) for p in range(cfg.num_clients)]


STATE_DB = "superlink.db"  # the SuperLink's state, in the run folder


def superlink_cmd(host: str, fleet_port: int, http_port: int, simulation: bool = False,
                  database: str = "") -> list[str]:
    """Plaintext: every process of a local federation talks over loopback."""
    cmd = commands.superlink_cmd(f"{host}:{fleet_port}", host, http_port, simulation=simulation,
                                 database=database)
    return [flwr_bin(cmd[0]), *cmd[1:]]


def supernode_cmd(host: str, fleet_port: int, port: int, partition_id: int, num_partitions: int,
                  role: str, warm: bool = False,
                  idle_poll_s: float = commands.FLOWER_IDLE_POLL_S) -> list[str]:
    cmd = commands.supernode_cmd(f"{host}:{fleet_port}", port,
                                 commands.node_config(partition_id, num_partitions, role),
                                 warm=warm, idle_poll_s=idle_poll_s)
    return [flwr_bin(cmd[0]), *cmd[1:]]


def runner_host_cmd(ports: dict[str, int], poll_interval_s: float, log_dir: Path,
                    ready_dir: Path, compute_slots: int = 0) -> list[str]:
    cmd = commands.runner_host_cmd(ports, poll_interval_s, str(log_dir), str(ready_dir),
                                   compute_slots)
    return [flwr_bin(cmd[0]), *cmd[1:]]


def run_local(cfg: ExperimentConfig, run_dir: Path) -> int:
    f = cfg.federation
    fleet, http = free_port(f.host), free_port(f.host)
    home = write_flwr_home(run_dir, f"{f.host}:{http}")
    env = flwr_env(home, {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": str(f.superexec_poll_interval_s)})
    run_config = write_run_config(cfg, run_dir, run_dir)
    roles = node_roles(cfg)
    ports = {f"clientapps-{pid}": free_port("127.0.0.1") for pid in range(len(roles))}
    with ProcessGroup(run_dir / "logs", env) as procs:
        procs.start("superlink", superlink_cmd(f.host, fleet, http,
                                               database=str(run_dir.resolve() / STATE_DB)
                                               if f.superlink_database else ""))
        ready = home / "runners-ready"
        shutil.rmtree(ready, ignore_errors=True)  # a resumed run's folder holds the old ones
        if f.warm_clientapps:
            # One process imports PyTorch and the app, then forks a runner per node and
            # re-forks one that dies; restarted itself if it dies (the nodes' tasks would wait
            # forever). Started first: its imports are the longest step of the start-up, and
            # its runners find their nodes up by the time they are forked.
            procs.start("clientapps", runner_host_cmd(ports, f.superexec_poll_interval_s,
                                                      procs.log_dir, ready, f.compute_slots),
                        critical=False, restart=True)
        procs.wait_for(lambda: port_open(f.host, http) and port_open(f.host, fleet),
                       f.startup_timeout_s, "SuperLink")
        for pid, role in enumerate(roles):  # each node's Runtime API on loopback
            procs.start(f"supernode-{pid}",
                        supernode_cmd(f.host, fleet, ports[f"clientapps-{pid}"], pid,
                                      cfg.num_clients, role, f.warm_clientapps,
                                      f.supernode_idle_poll_s),
                        critical=False)

        def runners_ready() -> None:
            # Waited for while `flwr run` builds and submits the app and the ServerApp starts
            # (seconds of imports and its first evaluation): the runners' imports overlap them
            # instead of preceding them, and a host that never gets ready still fails the run.
            if f.warm_clientapps:
                procs.wait_for(lambda: ready.is_dir() and len(list(ready.iterdir())) == len(ports),
                               f.startup_timeout_s, "warm ClientApp runners")

        return submit(run_dir, run_config, env, procs, started=runners_ready)
