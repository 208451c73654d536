"""A containerised federation as plain data: one SuperLink, and one SuperNode per partition with
its warm ClientApp runner beside it.

``docker-compose.yml`` (rendered by :mod:`launcher.federation.compose`) and
``federation=docker`` (:mod:`launcher.federation.docker`) both start these services, so a
container started from Python runs exactly the command, environment and ports of its compose
service. Paths are the image's: certificates in ``/certs``, data in ``/data``, the partition cache
in ``/cache``, results in ``/results``, the SuperLink's state database in ``/state`` (a volume:
runs, node registrations and keys survive a restart of its container).

What each container holds (``flbackdoor-tls make`` writes one folder per holder, mounted read-only
at ``/certs``): the SuperLink its ``superlink/`` folder (ca.crt, server.pem, server.key), each
SuperNode its own ``nodes/<name>/`` (ca.crt and its private key), ``register`` and the runner
``public/`` (ca.crt and the public keys). No container ever sees ca.key or another's key.

The SuperLink's Control API and Runtime API (one HTTP server in Flower 1.39: ``--host``,
``--port``) listen on 127.0.0.1 inside its container, so no SuperNode can reach them (a SuperNode
holds ca.crt: with the Control API it could register keys and submit code; with the Runtime API
claim the ServerApp's task). ``register`` and the runner join the SuperLink's network namespace
(``network_mode``) and dial 127.0.0.1; only the Fleet API (9092) faces the network.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flbackdoor.config import FederationConfig
from launcher.federation.commands import (CONTROL_PORT, FLEET_PORT, FLOWER_ENV, NODE_PORT, Tls,
                                            clientapp_runner_cmd, node_config, node_name,
                                            superlink_cmd, supernode_cmd)
from launcher.federation.tls import NODES_DIR, PUBLIC_DIR, SUPERLINK_DIR

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
    mounts: tuple[str, ...] = ()  # of DATA, CACHE, RESULTS, STATE
    certs: str = ""  # the certificates sub-folder mounted read-only at CERTS ("": none)
    joins: str = ""  # another service whose network namespace this one shares (its loopback)
    restart: bool = False  # the engine starts it again when it fails (restart: on-failure)


SUPERLINK_CERTS, PUBLIC_CERTS = SUPERLINK_DIR, PUBLIC_DIR
CONTROL = f"127.0.0.1:{CONTROL_PORT}"  # the Control API, from inside the SuperLink's namespace
# The SuperLink is ready once its Control API answers (compose's healthcheck; the Docker SDK
# launcher runs it with exec).
READY_CMD = ["python", "-c",
             f"import socket; socket.create_connection(('127.0.0.1', {CONTROL_PORT}), 2)"]


def node_certs(name: str) -> str:
    return f"{NODES_DIR}/{name}"


def server_tls() -> Tls:
    return Tls(f"{CERTS}/ca.crt", f"{CERTS}/server.pem", f"{CERTS}/server.key")


def node_key(partition_id: int, role: str) -> str:
    """A SuperNode's private key in its container (its own folder, mounted at ``/certs``)."""
    return f"{CERTS}/{node_name(partition_id, role)}"


def superlink_service(tls: bool) -> Service:
    # Control + Runtime API on loopback; only the Fleet API listens on the network.
    cmd = superlink_cmd(f"0.0.0.0:{FLEET_PORT}", "127.0.0.1", CONTROL_PORT,
                        server_tls() if tls else None, node_auth=tls, database=STATE_DB)
    return Service(SUPERLINK, cmd, ports=(FLEET_PORT,), mounts=(DATA, CACHE, RESULTS, STATE),
                   certs=SUPERLINK_CERTS if tls else "")


def supernode_service(partition_id: int, num_partitions: int, role: str, tls: bool,
                      warm: bool = True) -> Service:
    """``warm``: the node runs no ClientApp itself (``--isolation process``): its
    :func:`clientapps_service` does, and gets the GPU and the data."""
    config = node_config(partition_id, num_partitions, role, DATA, CACHE)
    cmd = supernode_cmd(f"{SUPERLINK}:{FLEET_PORT}", NODE_PORT, config,
                        Tls(f"{CERTS}/ca.crt") if tls else None,
                        node_key(partition_id, role) if tls else "", warm=warm,
                        idle_poll_s=FederationConfig.supernode_idle_poll_s)
    own = node_certs(node_name(partition_id, role)) if tls else ""
    return Service(f"supernode-{partition_id}", cmd, gpu=not warm,
                   mounts=() if warm else (DATA, CACHE), certs=own)


# A runner whose SuperNode has been unreachable this long exits, and the engine starts it
# again: a SuperNode container that was restarted has a new network namespace, and only a new
# start joins it.
RUNNER_GIVE_UP_S = 60.0


def clientapps_service(partition_id: int) -> Service:
    """The warm ClientApp runner of ``supernode-<i>`` (``supernode/clientapp_runner.py``): a
    sidecar in that container's network namespace (the node's Runtime API stays on its
    loopback, where no other container reaches it), with the GPU and the data; restarted by
    the engine when it dies."""
    cmd = clientapp_runner_cmd(NODE_PORT, FederationConfig.superexec_poll_interval_s,
                               give_up_after_s=RUNNER_GIVE_UP_S)
    return Service(f"clientapps-{partition_id}", cmd, gpu=True, mounts=(DATA, CACHE),
                   joins=f"supernode-{partition_id}", restart=True)


def register_service(roles: list[str]) -> Service:
    """Registers every node's public key through the Control API, from the SuperLink's own
    network namespace (the API is on its loopback); holds only ``public/``."""
    names = [node_name(p, r) for p, r in enumerate(roles)]
    cmd = ["flbackdoor-tls", "register", CONTROL, "--ca", f"{CERTS}/ca.crt",
           *[f"{CERTS}/{NODES_DIR}/{n}.pub" for n in names]]
    return Service("register", cmd, certs=PUBLIC_CERTS, joins=SUPERLINK)


def federation_services(roles: list[str], tls: bool = True, warm: bool = True) -> list[Service]:
    """The SuperLink, then one SuperNode per partition with ``roles[i]`` ("benign" or
    "malicious"), each followed by its warm ClientApp runner (``warm``; otherwise the node starts
    a ClientApp process per message, Flower's own path); ``tls``: TLS on every connection and
    SuperNode authentication."""
    k = len(roles)
    out = [superlink_service(tls)]
    for p, r in enumerate(roles):
        out.append(supernode_service(p, k, r, tls, warm))
        if warm:
            out.append(clientapps_service(p))
    return out
