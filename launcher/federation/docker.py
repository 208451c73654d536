"""federation=docker: the compose federation started from Python through the Docker SDK.

One SuperLink and one SuperNode container per partition (the services of
:mod:`launcher.federation.services`, as in ``docker-compose.yml``) on a network of their own,
TLS and SuperNode authentication on (``federation.tls``). This process plays compose's
``certs``, ``register`` and ``runner`` services: it writes the certificates into the run folder,
registers the node keys and submits the run through the SuperLink's published Control API.
Containers run as the calling user, so the results the ServerApp writes into the run folder
(mounted as ``/results``) are the user's. Every container and the network are removed at the
end, whatever happened; their logs are kept in ``<run>/logs/``.

:func:`container_specs` is pure (plain dicts, the keyword arguments of
``docker.containers.run``) so it is tested against ``docker-compose.yml`` without an engine.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from flbackdoor.config import ExperimentConfig
from launcher.federation.commands import CONTROL_PORT, FLEET_PORT, node_name
from launcher.federation.processes import ProcessFailed, free_port, port_open
from launcher.federation.services import (CACHE, CERTS, DATA, RESULTS, STATE, SUPERLINK,
                                            federation_services)
from launcher.federation.submit import (RunFailed, flwr_env, submit, write_flwr_home,
                                          write_run_config)

GPU_REQUEST = {"driver": "nvidia", "count": -1, "capabilities": [["gpu"]]}


@dataclasses.dataclass(frozen=True)
class HostPaths:
    """Host folders mounted into the containers (absolute paths)."""

    data: str
    cache: str
    results: str
    certs: str = ""
    state: str = ""  # the SuperLink's database folder (default: ``<results>/state``)


def container_specs(roles: list[str], image: str, tls: bool, prefix: str, paths: HostPaths,
                    ports: dict[int, int], host: str = "127.0.0.1", user: str = "",
                    gpu: bool = False) -> list[dict]:
    """``containers.run`` keyword arguments for the SuperLink, then each SuperNode.

    ``ports`` maps the SuperLink's container ports to free ports on ``host``; ``gpu`` gives
    every SuperNode all GPUs."""
    sources = {DATA: (paths.data, "rw"), CACHE: (paths.cache, "rw"),
               RESULTS: (paths.results, "rw"), CERTS: (paths.certs, "ro"),
               STATE: (paths.state or f"{paths.results}/state", "rw")}
    specs = []
    for s in federation_services(roles, tls):
        spec = {
            "name": f"{prefix}-{s.name}",
            "image": image,
            "command": list(s.command),
            "environment": dict(s.environment),
            "ports": {f"{p}/tcp": (host, ports[p]) for p in s.ports},
            "volumes": {sources[m][0]: {"bind": m, "mode": sources[m][1]} for m in s.mounts},
            "network": prefix,
            # Compose resolves a service by its name; here the same name is an alias.
            "networking_config": {prefix: {"Aliases": [s.name]}},
            "hostname": s.name,
            "init": True,
            "detach": True,
            "labels": {"flbackdoor.federation": prefix, "flbackdoor.service": s.name},
        }
        if user:
            spec["user"] = user
        if gpu and s.gpu:
            spec["device_requests"] = [dict(GPU_REQUEST)]
        specs.append(spec)
    return specs


class Containers:
    """The federation's containers; ``check_alive`` lets :func:`submit` notice a dead
    SuperLink (a SuperNode may die: the run goes on without it)."""

    def __init__(self, client, prefix: str, log_dir: Path) -> None:
        self.client, self.prefix, self.log_dir = client, prefix, log_dir
        self.started: list = []

    def run(self, spec: dict):
        container = self.client.containers.run(**spec)
        self.started.append(container)
        return container

    def check_alive(self) -> None:
        superlink = self.started[0]
        superlink.reload()
        if superlink.status in ("exited", "dead"):
            raise ProcessFailed(f"container {superlink.name} exited; see {self.log_dir}")

    def remove(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for c in self.started:
            try:
                (self.log_dir / f"{c.name.removeprefix(self.prefix + '-')}.log").write_bytes(
                    c.logs())
                c.remove(force=True, v=True)
            except Exception:  # noqa: BLE001 - best effort: never mask the run's own error
                pass
        for net in self.client.networks.list(names=[self.prefix]):
            net.remove()


def wants_gpu(client, setting: str) -> bool:
    """``auto``: the engine has NVIDIA's runtime (the Container Toolkit) installed."""
    if setting == "auto":
        return "nvidia" in (client.info().get("Runtimes") or {})
    return setting == "all"


def engine():
    import docker  # the SDK; imported here so the rest of the project never needs it

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as err:
        raise RunFailed(f"federation=docker needs a running Docker engine: {err}") from None
    return client


def run_docker(cfg: ExperimentConfig, run_dir: Path) -> int:
    import docker

    from launcher.federation.local import node_roles
    from launcher.federation.tls_cli import make, register

    f = cfg.federation
    client = engine()
    try:
        client.images.get(f.image)
    except docker.errors.ImageNotFound:
        raise RunFailed(f"image {f.image} not found; build it with `docker build -t {f.image} .`"
                        " in the repository") from None
    roles = node_roles(cfg)
    names = [node_name(p, r) for p, r in enumerate(roles)]
    certs = run_dir / "certs"
    if f.tls:
        make(certs, [SUPERLINK], names, keep_ca_key=False)
    state = run_dir / "state"  # made here, so it is the user's and not the engine's (root)
    state.mkdir(parents=True, exist_ok=True)
    paths = HostPaths(cfg.data.root, cfg.data.cache_dir, str(run_dir.resolve()),
                      str(certs.resolve()), str(state.resolve()))
    ports = {FLEET_PORT: free_port(f.host), CONTROL_PORT: free_port(f.host)}
    prefix = f"flbackdoor-{os.getpid()}-{int(time.time())}"
    specs = container_specs(roles, f.image, f.tls, prefix, paths, ports, f.host,
                            f"{os.getuid()}:{os.getgid()}", wants_gpu(client, f.gpus))
    # The ServerApp reads the experiment inside the SuperLink container: its folders there.
    inside = dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, root=DATA, cache_dir=CACHE))
    run_config = write_run_config(inside, run_dir, Path(RESULTS))
    control = f"{f.host}:{ports[CONTROL_PORT]}"
    home = write_flwr_home(run_dir, control, insecure=not f.tls,
                           root_certificates=str(certs / "ca.crt") if f.tls else "")
    client.networks.create(prefix, driver="bridge", labels={"flbackdoor.federation": prefix})
    group = Containers(client, prefix, run_dir / "logs")
    try:
        group.run(specs[0])
        deadline = time.monotonic() + f.startup_timeout_s
        while not port_open(f.host, ports[CONTROL_PORT]):
            group.check_alive()
            if time.monotonic() > deadline:
                raise ProcessFailed(
                    f"SuperLink container not ready after {f.startup_timeout_s:.0f}s")
            time.sleep(0.5)
        if f.tls:
            register(control, str(certs / "ca.crt"), [certs / "nodes" / f"{n}.pub" for n in names])
        for spec in specs[1:]:
            group.run(spec)
        return submit(run_dir, run_config, flwr_env(home), group)  # type: ignore[arg-type]
    finally:
        group.remove()
