"""federation=docker: the compose federation started from Python through the Docker SDK.

One SuperLink container, and per partition a SuperNode container with its warm ClientApp runner
in a container of its own sharing the node's network namespace (``federation.warm_clientapps``;
the services of :mod:`launcher.federation.services`, as in ``docker-compose.yml``) on a network
of their own,
TLS and SuperNode authentication on (``federation.tls``). This process plays compose's
``certs`` and ``runner`` services: it writes the certificates into the run folder (one folder
per holder; each container mounts only its own, see :mod:`launcher.federation.tls`; ca.key is
deleted at once), starts compose's ``register`` container in the SuperLink's network namespace,
and submits the run with ``docker exec`` inside the SuperLink container: the Control API listens
on that container's loopback only, is not published, and no SuperNode container can reach it.
Only the Fleet API is published, on ``federation.host``. Needs the ``docker`` CLI besides the SDK
(for the ``exec`` that streams ``flwr run``).
Containers run as the calling user, so the results the ServerApp writes into the run folder
(mounted as ``/results``) are the user's. Every container and the network are removed at the
end, whatever happened; their logs are kept in ``<run>/logs/``.

:func:`container_specs` is pure (plain dicts, the keyword arguments of
``docker.containers.run``) so it is tested against ``docker-compose.yml`` without an engine.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path

from flbackdoor.config import ExperimentConfig
from launcher.federation.commands import FLEET_PORT, node_name
from launcher.federation.processes import ProcessFailed, free_port
from launcher.federation.services import (CACHE, CERTS, CONTROL, DATA, READY_CMD, RESULTS,
                                            STATE, SUPERLINK, Service, federation_services,
                                            register_service)
from launcher.federation.submit import (RunFailed, flwr_env, submit, write_flwr_home,
                                          write_run_config)

APP_IN_IMAGE = "/app"  # the Dockerfile's WORKDIR: `flwr run` builds the Flower App from it

GPU_REQUEST = {"driver": "nvidia", "count": -1, "capabilities": [["gpu"]]}
RESTART_POLICY = {"Name": "on-failure", "MaximumRetryCount": 5}  # a warm runner's


@dataclasses.dataclass(frozen=True)
class HostPaths:
    """Host folders mounted into the containers (absolute paths)."""

    data: str
    cache: str
    results: str
    certs: str = ""  # the folder `flbackdoor-tls make` wrote; each container mounts one sub-folder
    state: str = ""  # the SuperLink's database folder (default: ``<results>/state``)


def _spec(s: Service, image: str, prefix: str, paths: HostPaths, ports: dict[int, int],
          host: str, user: str, gpu: bool) -> dict:
    sources = {DATA: paths.data, CACHE: paths.cache, RESULTS: paths.results,
               STATE: paths.state or f"{paths.results}/state"}
    volumes = {sources[m]: {"bind": m, "mode": "rw"} for m in s.mounts}
    if s.certs:
        volumes[str(Path(paths.certs) / s.certs)] = {"bind": CERTS, "mode": "ro"}
    spec = {
        "name": f"{prefix}-{s.name}",
        "image": image,
        "command": list(s.command),
        "environment": dict(s.environment),
        "volumes": volumes,
        "init": True,
        "detach": True,
        "labels": {"flbackdoor.federation": prefix, "flbackdoor.service": s.name},
    }
    if s.joins:  # the other container's network namespace: its loopback is this one's
        spec["network_mode"] = f"container:{prefix}-{s.joins}"
    else:
        spec |= {"ports": {f"{p}/tcp": (host, ports[p]) for p in s.ports}, "network": prefix,
                 # Compose resolves a service by its name; here the same name is an alias.
                 "networking_config": {prefix: {"Aliases": [s.name]}}, "hostname": s.name}
    if user:
        spec["user"] = user
    if gpu and s.gpu:
        spec["device_requests"] = [dict(GPU_REQUEST)]
    if s.restart:
        spec["restart_policy"] = dict(RESTART_POLICY)
    return spec


def container_specs(roles: list[str], image: str, tls: bool, prefix: str, paths: HostPaths,
                    ports: dict[int, int], host: str = "127.0.0.1", user: str = "",
                    gpu: bool = False, warm: bool = True) -> list[dict]:
    """``containers.run`` keyword arguments for the SuperLink, then each SuperNode followed by
    its warm ClientApp runner (``warm``), in start order.

    ``ports`` maps the SuperLink's published container ports (the Fleet API) to free ports on
    ``host``; ``gpu`` gives all GPUs to what runs the ClientApps."""
    return [_spec(s, image, prefix, paths, ports, host, user, gpu)
            for s in federation_services(roles, tls, warm)]


def register_spec(roles: list[str], image: str, prefix: str, paths: HostPaths,
                  user: str = "") -> dict:
    """Compose's ``register`` service: in the SuperLink's network namespace, ``public/`` only."""
    return _spec(register_service(roles), image, prefix, paths, {}, "", user, False)


def exec_prefix(container: str, flwr_home: str) -> list[str]:
    """``flwr`` inside the SuperLink container (where the Control API is, on its loopback)."""
    return ["docker", "exec", "-e", f"FLWR_HOME={flwr_home}", container]


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

    def wait_ready(self, timeout_s: float) -> None:
        """Until the SuperLink's Control API answers on its own loopback (compose's
        healthcheck, run with exec)."""
        deadline = time.monotonic() + timeout_s
        while self.started[0].exec_run(READY_CMD).exit_code != 0:
            self.check_alive()
            if time.monotonic() > deadline:
                raise ProcessFailed(f"SuperLink container not ready after {timeout_s:.0f}s")
            time.sleep(0.5)

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
    if shutil.which("docker") is None:
        raise RunFailed("federation=docker needs the docker CLI on PATH (it submits with "
                        "`docker exec` inside the SuperLink container)")
    return client


def run_docker(cfg: ExperimentConfig, run_dir: Path) -> int:
    import docker

    from launcher.federation.local import node_roles
    from launcher.federation.tls_cli import make

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
    ports = {FLEET_PORT: free_port(f.host)}
    prefix = f"flbackdoor-{os.getpid()}-{int(time.time())}"
    user = f"{os.getuid()}:{os.getgid()}"
    specs = container_specs(roles, f.image, f.tls, prefix, paths, ports, f.host, user,
                            wants_gpu(client, f.gpus), f.warm_clientapps)
    # The ServerApp reads the experiment inside the SuperLink container: its folders there.
    inside = dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, root=DATA, cache_dir=CACHE))
    run_config = write_run_config(inside, run_dir, Path(RESULTS))
    # `flwr` runs inside the SuperLink container: the run folder is its /results, the CA its
    # /certs/ca.crt, the Control API its 127.0.0.1.
    write_flwr_home(run_dir, CONTROL, insecure=not f.tls,
                    root_certificates=f"{CERTS}/ca.crt" if f.tls else "")
    wrap = exec_prefix(specs[0]["name"], f"{RESULTS}/flwr_home")
    client.networks.create(prefix, driver="bridge", labels={"flbackdoor.federation": prefix})
    group = Containers(client, prefix, run_dir / "logs")
    try:
        group.run(specs[0])
        group.wait_ready(f.startup_timeout_s)
        if f.tls:
            reg = group.run(register_spec(roles, f.image, prefix, paths, user))
            if reg.wait(timeout=f.startup_timeout_s + 60).get("StatusCode") != 0:
                tail = reg.logs().decode(errors="replace")[-1500:]
                raise ProcessFailed(f"registering the SuperNode keys failed: {tail}")
        for spec in specs[1:]:
            group.run(spec)
        return submit(run_dir, Path(RESULTS) / run_config.name, flwr_env(run_dir / "flwr_home"),
                      group, prefix_cmd=wrap, app_dir=APP_IN_IMAGE)  # type: ignore[arg-type]
    finally:
        group.remove()
