"""A containerised federation as plain data: one SuperLink and one SuperNode per partition.

``docker-compose.yml`` (rendered by :mod:`launcher.federation.compose`) and
``federation=docker`` (:mod:`launcher.federation.docker`) both start these services, so a
container started from Python runs exactly the command, environment and ports of its compose
service. Paths are the image's: certificates in ``/certs``, data in ``/data``, the partition cache
in ``/cache``, results in ``/results``, the SuperLink's state database in ``/state`` (a volume:
runs, node registrations and keys survive a restart of its container).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flbackdoor.config import FederationConfig
from launcher.federation.commands import (CONTROL_PORT, FLEET_PORT, FLOWER_ENV, NODE_PORT, Tls,
                                            node_config, node_name, superlink_cmd, supernode_cmd)

IMAGE = "flbackdoor:latest"
SUPERLINK = "superlink"  # the SuperLink's host name on the containers' network
CERTS, DATA, CACHE, RESULTS, STATE = "/certs", "/data", "/cache", "/results", "/state"
STATE_DB = f"{STATE}/superlink.db"

# Every container: Flower's process environment, the SuperExec polling as fast as in a local
# federation (federation.superexec_poll_interval_s), Flower's and matplotlib's state in /tmp so
# any user id works (federation=docker runs containers as the host user).
ENV = {
    **FLOWER_ENV,
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": str(FederationConfig.superexec_poll_interval_s),
    "FLWR_HOME": "/tmp/flwr",
    "MPLCONFIGDIR": "/tmp/matplotlib",
}


@dataclass(frozen=True)
class Service:
    name: str
    command: list[str]
    ports: tuple[int, ...] = ()  # container ports published to the host
    environment: dict[str, str] = field(default_factory=lambda: dict(ENV))
    gpu: bool = False  # runs ClientApps: the GPU belongs here
    mounts: tuple[str, ...] = ()  # of CERTS, DATA, CACHE, RESULTS, STATE


def server_tls() -> Tls:
    return Tls(f"{CERTS}/ca.crt", f"{CERTS}/server.pem", f"{CERTS}/server.key")


def node_key(partition_id: int, role: str) -> str:
    """A SuperNode's private key in the certificates folder (``.pub`` beside it)."""
    return f"{CERTS}/nodes/{node_name(partition_id, role)}"


def superlink_service(tls: bool) -> Service:
    cmd = superlink_cmd(f"0.0.0.0:{FLEET_PORT}", "0.0.0.0", CONTROL_PORT,
                        server_tls() if tls else None, node_auth=tls, database=STATE_DB)
    mounts = (CERTS, DATA, CACHE, RESULTS, STATE) if tls else (DATA, CACHE, RESULTS, STATE)
    return Service(SUPERLINK, cmd, ports=(FLEET_PORT, CONTROL_PORT), mounts=mounts)


def supernode_service(partition_id: int, num_partitions: int, role: str, tls: bool) -> Service:
    config = node_config(partition_id, num_partitions, role, DATA, CACHE)
    cmd = supernode_cmd(f"{SUPERLINK}:{FLEET_PORT}", NODE_PORT, config,
                        Tls(f"{CERTS}/ca.crt") if tls else None,
                        node_key(partition_id, role) if tls else "")
    mounts = (CERTS, DATA, CACHE) if tls else (DATA, CACHE)
    return Service(f"supernode-{partition_id}", cmd, gpu=True, mounts=mounts)


def federation_services(roles: list[str], tls: bool = True) -> list[Service]:
    """The SuperLink, then one SuperNode per partition with ``roles[i]`` ("benign" or
    "malicious"); ``tls``: TLS on every connection and SuperNode authentication."""
    k = len(roles)
    return [superlink_service(tls)] + [supernode_service(p, k, r, tls) for p, r in enumerate(roles)]
