"""The container setup, checked offline (tests/test_docker_engine.py builds the image and runs
the federation on a real engine). Nothing here builds or starts a container: the compose files go
through a real Compose implementation's validator (Debian's docker-compose), the Dockerfile
through hadolint, and the Docker SDK launcher's container specs (``federation=docker``) are
compared with what that validator resolves from ``docker-compose.yml``. The certificate maker is
tested for real; the TLS handshake itself runs in tests/test_multihost.py."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    load_ssh_private_key,
    load_ssh_public_key,
)

from flbackdoor.config import ConfigError, ExperimentConfig, FederationConfig, validate
from launcher.federation.compose import compose_file, gpu_file, render, roles_of
from launcher.federation.docker import (
    GPU_REQUEST,
    HostPaths,
    container_specs,
    engine,
    register_spec,
)
from launcher.federation.services import IMAGE, federation_services
from launcher.federation.submit import RunFailed
from launcher.federation.tls import san_entries
from launcher.federation.tls_cli import main as tls_main
from launcher.federation.tls_cli import make

ROLES = roles_of(4, 1)  # what the committed docker-compose.yml holds


def _tool(name: str) -> str:
    """A validator's path. CI installs them (.ci/run, the [test] extra): missing there is a
    failure; elsewhere the test says what to install."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail(f"{name} is not installed; .ci/run must install it")
    pytest.skip(f"{name} not installed (apt-get install docker-compose / pip install -e '.[test]')")


def compose_config(*files: str, cwd: Path = REPO, env: dict[str, str] | None = None) -> dict:
    """``docker-compose config``: validates the files against the Compose schema, merges them
    and resolves variables; no engine needed."""
    args = [a for f in files for a in ("-f", f)]
    out = subprocess.run([_tool("docker-compose"), *args, "config"], cwd=cwd,
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, **(env or {})})
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def _target(port) -> int:
    """A container port from ``docker-compose config`` (long syntax, or ``ip:host:container``)."""
    return port["target"] if isinstance(port, dict) else int(str(port).rsplit(":", 1)[-1].split("/")[0])


@pytest.fixture(scope="module")
def gpu_compose() -> dict:
    return compose_config()  # .env: COMPOSE_FILE=docker-compose.yml:docker-compose.gpu.yml


@pytest.fixture(scope="module")
def cpu_compose() -> dict:
    return compose_config("docker-compose.yml")


def test_committed_compose_files_are_the_generators_output():
    """docker-compose.yml is generated (`flbackdoor-compose`): it cannot drift from the code."""
    assert yaml.safe_load((REPO / "docker-compose.yml").read_text()) == compose_file(ROLES)
    assert yaml.safe_load((REPO / "docker-compose.gpu.yml").read_text()) == gpu_file(ROLES)
    assert "COMPOSE_FILE=docker-compose.yml:docker-compose.gpu.yml" in (REPO / ".env").read_text()


def test_compose_gpu_by_default_and_cpu_with_the_switch(gpu_compose, cpu_compose):
    nodes = [f"supernode-{i}" for i in range(4)]
    runners = [f"clientapps-{i}" for i in range(4)]
    assert set(gpu_compose["services"]) == {"certs", "superlink", "register", *nodes, *runners,
                                            "runner"}
    for name, service in gpu_compose["services"].items():
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get(
            "devices", [])
        gpu = [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
        expected = gpu if name in runners else []  # what runs the ClientApps
        assert devices == expected, name
    assert not any("deploy" in s for s in cpu_compose["services"].values())
    assert set(cpu_compose["services"]) == set(gpu_compose["services"])


def test_compose_start_order_tls_and_node_auth(cpu_compose):
    s = cpu_compose["services"]
    done = {"condition": "service_completed_successfully"}
    assert s["superlink"]["depends_on"] == {"certs": done}
    assert s["register"]["depends_on"] == {"superlink": {"condition": "service_healthy"}}
    assert "healthcheck" in s["superlink"]
    for i, role in enumerate(ROLES):
        node = s[f"supernode-{i}"]
        assert node["depends_on"] == {"register": {"condition": "service_completed_successfully"}}
        assert node["init"] is True and node["restart"] == "on-failure"
        cmd = node["command"]
        assert cmd[cmd.index("--root-certificates") + 1] == "/certs/ca.crt"
        key = cmd[cmd.index("--auth-supernode-private-key") + 1]
        assert key == f"/certs/{role}-{i}"  # in its own folder, mounted at /certs
        assert f"/certs/nodes/{role}-{i}.pub" in s["register"]["command"]
        assert f'partition-id={i} num-partitions=4 role="{role}"' in cmd[-1]
        # Its warm runner: in the node's network namespace (the Runtime API on its loopback),
        # started after it, restarted on failure; it holds the data, the node does not.
        assert cmd[cmd.index("--isolation") + 1] == "process"
        assert not any(v.endswith(":/data:rw") for v in node["volumes"])
        runner = s[f"clientapps-{i}"]
        assert runner["network_mode"] == f"service:supernode-{i}"
        assert runner["depends_on"] == {f"supernode-{i}": {"condition": "service_started"}}
        assert runner["restart"] == "on-failure" and runner["init"] is True
        assert runner["command"][:3] == ["flbackdoor-clientapp-runner", "--runtime-api-address",
                                         "127.0.0.1:9094"]
        assert "--give-up-after" in runner["command"]
        assert "certs" not in str(runner["volumes"])  # a runner holds no key
        assert any(v.endswith(":/data:rw") for v in runner["volumes"])
    assert "--enable-supernode-auth" in s["superlink"]["command"]
    assert "--insecure" not in str(s)
    # The SuperLink's state (runs, registered keys) in a database on a named volume: it survives
    # a restart of the container.
    db = s["superlink"]["command"][s["superlink"]["command"].index("--database") + 1]
    assert db == "/state/superlink.db"
    assert [v for v in s["superlink"]["volumes"] if v.split(":")[1:2] == ["/state"]]
    assert set(s["runner"]["depends_on"]) == {f"{kind}-{i}" for i in range(4)
                                              for kind in ("supernode", "clientapps")}
    # The server certificate names the host the containers dial.
    make_cmd = s["certs"]["command"]
    assert make_cmd[make_cmd.index("--san") + 1] == "superlink"
    # Results: the runner's folder and the SuperLink's (the ServerApp writes there) are one mount.
    results = [v for v in s["superlink"]["volumes"] if v.endswith(":/results:rw")]
    assert results and results[0] in s["runner"]["volumes"]
    assert s["runner"]["working_dir"] == "/results"


def test_compose_validator_rejects_a_broken_file(tmp_path):
    """The validator really validates: a misspelt condition and an unknown key both fail."""
    data = compose_file(ROLES)
    data["services"]["supernode-0"]["depends_on"]["register"]["condition"] = "service_done"
    (tmp_path / "docker-compose.yml").write_text(render(data, ""))
    out = subprocess.run([_tool("docker-compose"), "config", "-q"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "condition" in out.stderr, out.stderr
    data = compose_file(ROLES)
    data["services"]["superlink"]["gpus_please"] = True
    (tmp_path / "docker-compose.yml").write_text(render(data, ""))
    out = subprocess.run([_tool("docker-compose"), "config", "-q"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "gpus_please" in out.stderr, out.stderr


def test_runner_submits_a_valid_experiment(cpu_compose):
    """The runner's Hydra overrides compose and validate (the run itself needs the engine)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from launcher.cli import CONF_DIR  # registers the schema with Hydra

    cmd = cpu_compose["services"]["runner"]["command"]
    assert cmd[0] == "flbackdoor"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg: ExperimentConfig = OmegaConf.to_object(compose("config", overrides=cmd[1:]))
    validate(cfg)
    assert cfg.federation.address == "127.0.0.1:9093" and not cfg.federation.insecure
    assert cfg.num_clients == len(ROLES) and cfg.attack.num_malicious == ROLES.count("malicious")


def test_docker_launcher_specs_match_the_compose_services(gpu_compose, tmp_path):
    """federation=docker starts the compose file's SuperLink and SuperNodes: same image,
    command, environment, container ports, mount points and GPU reservations. (No engine runs
    here: the specs are compared as data.)"""
    paths = HostPaths(str(tmp_path / "data"), str(tmp_path / "cache"), str(tmp_path / "run"),
                      str(tmp_path / "certs"))
    specs = container_specs(ROLES, IMAGE, True, "fbk-test", paths, {9092: 40001},
                            user="1000:1000", gpu=True)
    names = [s["labels"]["flbackdoor.service"] for s in specs]
    assert names == ["superlink"] + [f"{kind}-{i}" for i in range(4)
                                     for kind in ("supernode", "clientapps")]  # start order
    for spec, name in zip(specs, names):
        service = gpu_compose["services"][name]
        assert spec["image"] == service["image"] == IMAGE
        assert spec["command"] == service["command"]
        assert spec["environment"] == service["environment"]
        assert {int(p.split("/")[0]) for p in spec.get("ports", {})} == \
            {_target(p) for p in service.get("ports", [])}
        mounts = {v.split(":")[1]: v.split(":")[2] for v in service["volumes"]}
        assert {m["bind"]: m["mode"] for m in spec["volumes"].values()} == mounts
        assert spec["init"] is service["init"] is True
        wants_gpu = "deploy" in service
        assert spec.get("device_requests") == ([GPU_REQUEST] if wants_gpu else None)
        if name.startswith("clientapps-"):  # the node's namespace; the engine restarts it
            assert service["network_mode"] == f"service:{name.replace('clientapps', 'supernode')}"
            assert spec["network_mode"] == f"container:fbk-test-{service['network_mode'][8:]}"
            assert spec["restart_policy"] == {"Name": "on-failure", "MaximumRetryCount": 5}
            assert service["restart"] == "on-failure"
        else:
            assert spec["networking_config"] == {"fbk-test": {"Aliases": [name]}}
            assert "restart_policy" not in spec
    assert specs[0]["ports"] == {"9092/tcp": ("127.0.0.1", 40001)}  # the Fleet API only
    assert specs[0]["volumes"][paths.results] == {"bind": "/results", "mode": "rw"}
    assert specs[0]["volumes"][f"{paths.results}/state"] == {"bind": "/state", "mode": "rw"}
    cpu = container_specs(ROLES, IMAGE, True, "fbk-test", paths, {9092: 1})
    assert not any("device_requests" in s or "user" in s for s in cpu)


def test_docker_launcher_without_an_engine_says_so(tmp_path, monkeypatch):
    """Where no engine answers, federation=docker stops with one clear line (an engine runs
    here: the client is pointed at a socket nobody serves)."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-engine.sock'}")
    with pytest.raises(RunFailed, match="federation=docker needs a running Docker engine"):
        engine()


def test_federation_docker_config_is_validated():
    cfg = ExperimentConfig()
    cfg.federation.mode = "docker"
    validate(cfg)  # warm runners (conf/federation/docker.yaml)
    cfg.federation.warm_clientapps = False
    validate(cfg)
    cfg.federation.gpus = "some"
    with pytest.raises(ConfigError, match="federation.gpus='some' is not one of auto, all, none"):
        validate(cfg)
    cfg.federation.gpus, cfg.num_clients = "none", 100
    with pytest.raises(ConfigError, match="one container per client"):
        validate(cfg)


def test_dockerfile_lints_clean_and_caches_dependencies():
    out = subprocess.run([_tool("hadolint"), "--no-color", "Dockerfile"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout == "", out.stdout + out.stderr
    lines = [ln for ln in (REPO / "Dockerfile").read_text().splitlines()
             if ln and not ln.startswith("#")]
    index = {key: next(i for i, ln in enumerate(lines) if ln.startswith(key)) for key in
             ("RUN pip install --no-cache-dir torch==2.14.1", "COPY pyproject.toml", "COPY . .",
              "USER ")}
    # Dependency layers come before the source, so editing code reuses them.
    assert index["RUN pip install --no-cache-dir torch==2.14.1"] < index["COPY pyproject.toml"] \
        < index["COPY . ."] < index["USER "]
    assert lines[index["USER "]] == "USER 1000:1000"  # not root
    assert 'VOLUME ["/data", "/results"]' in lines
    pins = re.findall(r'"(torch(?:vision)?==[\d.]+)"', (REPO / "pyproject.toml").read_text())
    assert sorted(pins) and all(p in lines[index["RUN pip install --no-cache-dir torch==2.14.1"]]
                                for p in pins), "the image's torch pins are pyproject's"
    # No secrets in the build context.
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {"certs", "**/*.key", "**/*.pem", ".git"} <= set(ignored)


def test_tls_make_certificates_and_node_keys(tmp_path):
    written = make(tmp_path, ["10.200.0.1", "superlink"], ["benign-0", "malicious-1"])
    assert len(written) == 5
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "superlink" / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca)
    assert san_entries(server) == ["10.200.0.1", "127.0.0.1", "superlink", "localhost"]
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "10.200.0.1" not in san.get_values_for_type(x509.DNSName)  # an IP SAN, not a name
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for name in ("benign-0", "malicious-1"):
        key = tmp_path / "nodes" / name / name
        private = load_ssh_private_key(key.read_bytes(), None)  # Flower's own loader
        public = load_ssh_public_key(key.with_name(name + ".pub").read_bytes())
        assert (tmp_path / "public" / "nodes" / f"{name}.pub").read_bytes() == \
            key.with_name(name + ".pub").read_bytes()
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert private.public_key().public_numbers() == public.public_numbers()
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    for secret in ("ca.key", "superlink/server.key"):
        assert stat.S_IMODE((tmp_path / secret).stat().st_mode) == 0o600


def test_tls_make_keeps_existing_material(tmp_path):
    make(tmp_path, ["superlink"], ["benign-0"], keep_ca_key=False)
    assert not (tmp_path / "ca.key").exists()
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    written = make(tmp_path, ["superlink"], ["benign-0", "benign-1"], keep_existing=True)
    assert written == [str(tmp_path / "nodes" / "benign-1" / "benign-1.pub")]
    assert all(p.read_bytes() == data for p, data in before.items())
    make(tmp_path, ["other"], ["benign-0"])  # without --keep-existing: fresh material
    pem = tmp_path / "superlink" / "server.pem"
    assert pem.read_bytes() != before[pem]
    # Every holder's copy of ca.crt follows the new CA.
    assert (tmp_path / "nodes" / "benign-0" / "ca.crt").read_bytes() == \
        (tmp_path / "superlink" / "ca.crt").read_bytes() != before[tmp_path / "ca.crt"]


def test_tls_cli_needs_a_san(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        tls_main(["make", str(tmp_path)])
    assert err.value.code == 2 and "--san" in capsys.readouterr().err
    tls_main(["node-key", str(tmp_path / "client" / "benign-3")])
    assert (tmp_path / "client" / "benign-3.pub").read_text().startswith("ecdsa-sha2-nistp384 ")


def test_services_use_one_command_source():
    """The compose services' commands are the local launcher's commands, only with TLS."""
    from launcher.federation.local import supernode_cmd

    from launcher.federation.commands import clientapp_runner_cmd

    for warm in (True, False):
        plain = federation_services(["benign"], tls=False, warm=warm)[1].command
        local = supernode_cmd("superlink", 9092, 9094, 0, 1, "benign", warm=warm,
                              idle_poll_s=FederationConfig.supernode_idle_poll_s)
        assert plain[:-1] == [Path(local[0]).name, *local[1:-1]]
        assert plain[-1].startswith(local[-1])  # + this container's data-root and cache-dir
    runner = federation_services(["benign"], tls=False)[2].command
    assert runner[:-2] == clientapp_runner_cmd(9094, 0.2)  # + its give-up time


def test_flbackdoor_compose_writes_other_federations(tmp_path, capsys):
    """Other counts and roles, and the plaintext variant, validate too."""
    from launcher.federation.compose import main as compose_main

    compose_main(["--dir", str(tmp_path), "--nodes", "2", "--malicious", "0", "--insecure",
                  "num_rounds=1"])
    (tmp_path / ".env").write_text((REPO / ".env").read_text())
    s = compose_config(cwd=tmp_path)["services"]
    assert set(s) == {"superlink", "supernode-0", "supernode-1", "clientapps-0", "clientapps-1",
                      "runner"}  # no certs, no register
    assert "--insecure" in s["supernode-1"]["command"] and "deploy" in s["clientapps-1"]
    assert s["runner"]["command"][-1] == "num_rounds=1"
    assert not any(a.startswith("attack") for a in s["runner"]["command"])
    # --cold: Flower's process per message, in the SuperNode's container (which gets the GPU)
    compose_main(["--dir", str(tmp_path), "--nodes", "2", "--malicious", "1", "--cold"])
    s = compose_config(cwd=tmp_path)["services"]
    assert not any(name.startswith("clientapps") for name in s)
    assert "deploy" in s["supernode-1"] and "--isolation" not in s["supernode-1"]["command"]
    with pytest.raises(SystemExit):
        compose_main(["--dir", str(tmp_path), "--nodes", "2", "--malicious", "3"])
    assert "need 0 <= malicious <= nodes" in capsys.readouterr().err


def test_docker_launcher_specs_are_valid_sdk_arguments(tmp_path):
    """The Docker SDK itself turns each spec into the engine's create request (its own
    ``_create_container_args``, what ``containers.run`` calls before it needs an engine): an
    unknown or misspelt argument would raise here."""
    from docker.models.containers import _create_container_args

    paths = HostPaths(str(tmp_path / "d"), str(tmp_path / "c"), str(tmp_path / "r"),
                      str(tmp_path / "k"))
    specs = container_specs(ROLES, IMAGE, True, "fbk", paths, {9092: 1}, user="7:7",
                            gpu=True)
    creates = [_create_container_args({k: v for k, v in spec.items() if k != "detach"}
                                      | {"version": "1.44"}) for spec in specs]
    for spec, create in zip(specs, creates):
        host = create["host_config"]
        service = spec["labels"]["flbackdoor.service"]
        assert host["Init"] is True and create["user"] == "7:7"
        runs_apps = service.startswith("clientapps-")
        if runs_apps:  # in its node's network namespace, restarted by the engine
            node = service.replace("clientapps", "supernode")
            assert host["NetworkMode"] == f"container:fbk-{node}"
            assert host["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 5}
        else:
            assert host["NetworkMode"] == "fbk"
            assert create["networking_config"]["EndpointsConfig"]["fbk"]["Aliases"] == [service]
        gpu = [r["Driver"] for r in host.get("DeviceRequests", [])]
        assert gpu == (["nvidia"] if runs_apps else [])
        assert (f"{paths.data}:/data:rw" in host["Binds"]) == (runs_apps or service == "superlink")
    assert creates[0]["host_config"]["PortBindings"] == {
        "9092/tcp": [{"HostIp": "127.0.0.1", "HostPort": "1"}]}
    register = register_spec(ROLES, IMAGE, "fbk", paths, user="7:7")
    create = _create_container_args({k: v for k, v in register.items() if k != "detach"}
                                    | {"version": "1.44"})
    assert create["host_config"]["NetworkMode"] == "container:fbk-superlink"
    assert create["host_config"]["Binds"] == [f"{paths.certs}/public:/certs:ro"]


def _certs_mounts(service: dict) -> list[str]:
    return [v for v in service.get("volumes", []) if ":/certs" in v]


def test_each_container_holds_only_its_own_keys(cpu_compose, tmp_path):
    """Which compose service mounts which certificates volume, and what ``flbackdoor-tls make``
    puts in each folder: server.key only where the SuperLink looks, a SuperNode's private key
    only in that SuperNode's volume, ca.key nowhere; every consumer mounts read-only."""
    s = cpu_compose["services"]
    names = [f"{role}-{i}" for i, role in enumerate(ROLES)]
    mounted = {name: _certs_mounts(service) for name, service in s.items()}
    assert mounted["superlink"] == ["certs-superlink:/certs:ro"]
    assert mounted["register"] == mounted["runner"] == ["certs-public:/certs:ro"]
    for i, name in enumerate(names):
        assert mounted[f"supernode-{i}"] == [f"certs-{name}:/certs:ro"]
    # Only `certs` writes them (as root, handing them to FLBACKDOOR_USER), and keeps no ca.key.
    assert sorted(mounted["certs"]) == sorted(
        ["certs-superlink:/certs/superlink:rw", "certs-public:/certs/public:rw",
         *[f"certs-{n}:/certs/nodes/{n}:rw" for n in names]])
    cmd = s["certs"]["command"]
    assert s["certs"]["user"] == "0:0" and "--discard-ca-key" in cmd
    assert cmd[cmd.index("--owner") + 1] == "1000:1000"  # FLBACKDOOR_USER's default
    assert set(cpu_compose["volumes"]) == {"cache", "state", "certs-superlink", "certs-public",
                                           *[f"certs-{n}" for n in names]}

    # The folders those volumes hold, as `certs` writes them.
    make(tmp_path, ["superlink"], names, keep_ca_key=False)
    folder_of = {"certs-superlink": tmp_path / "superlink", "certs-public": tmp_path / "public",
                 **{f"certs-{n}": tmp_path / "nodes" / n for n in names}}
    seen = {service: sorted(str(p.relative_to(folder_of[m[0].split(":")[0]]))
                            for p in folder_of[m[0].split(":")[0]].rglob("*") if p.is_file())
            for service, m in mounted.items() if m and service != "certs"}
    assert seen["superlink"] == ["ca.crt", "server.key", "server.pem"]
    assert seen["register"] == ["ca.crt", *[f"nodes/{n}.pub" for n in names]]
    for i, name in enumerate(names):
        assert seen[f"supernode-{i}"] == sorted(["ca.crt", name, f"{name}.pub"])
    assert [svc for svc, files in seen.items() if "server.key" in files] == ["superlink"]
    assert not list(tmp_path.rglob("ca.key"))
    private = {n for n in names}
    for service, files in seen.items():  # no container sees another's private key
        own = {f"supernode-{i}": {n} for i, n in enumerate(names)}.get(service, set())
        assert {f for f in files if f in private} == own, service


def test_control_api_on_the_superlinks_loopback_and_only_the_fleet_api_published(cpu_compose):
    """The Control + Runtime API (one HTTP server in Flower 1.39) listens on 127.0.0.1 inside the
    SuperLink container; `register` and the runner share its network namespace; nothing but the
    Fleet API is published, on 127.0.0.1 unless FLBACKDOOR_FLEET_BIND says otherwise."""
    s = cpu_compose["services"]
    cmd = s["superlink"]["command"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "9093"
    assert cmd[cmd.index("--fleet-api-address") + 1] == "0.0.0.0:9092"
    published = {name: service["ports"] for name, service in s.items() if service.get("ports")}
    assert published == {"superlink": ["127.0.0.1:9092:9092/tcp"]}
    for name in ("register", "runner"):
        assert s[name]["network_mode"] == "service:superlink"
    assert s["register"]["command"][2] == "127.0.0.1:9093"
    assert "federation.address=127.0.0.1:9093" in s["runner"]["command"]
    for i in range(len(ROLES)):  # a SuperNode dials the Fleet API; its own Runtime API: loopback
        node = s[f"supernode-{i}"]["command"]
        assert "--host" not in node and "network_mode" not in s[f"supernode-{i}"]
    everywhere = compose_config("docker-compose.yml", env={"FLBACKDOOR_FLEET_BIND": "0.0.0.0"})
    assert everywhere["services"]["superlink"]["ports"] == ["0.0.0.0:9092:9092/tcp"]


def test_docker_launcher_mounts_each_containers_own_folder(tmp_path):
    """federation=docker: the same split on host folders; the Control API is not published."""
    certs = tmp_path / "certs"
    names = [f"{role}-{i}" for i, role in enumerate(ROLES)]
    make(certs, ["superlink"], names, keep_ca_key=False)
    paths = HostPaths(str(tmp_path / "d"), str(tmp_path / "c"), str(tmp_path / "r"), str(certs))
    specs = container_specs(ROLES, IMAGE, True, "fbk", paths, {9092: 5})
    specs.append(register_spec(ROLES, IMAGE, "fbk", paths))
    holders = {}
    for spec in specs:
        sources = [src for src, m in spec["volumes"].items() if m["bind"] == "/certs"]
        if spec["labels"]["flbackdoor.service"].startswith("clientapps-"):
            assert not sources  # a runner needs no key: it talks to its node's loopback only
            continue
        assert len(sources) == 1 and spec["volumes"][sources[0]]["mode"] == "ro"
        holders[spec["name"]] = {p.name for p in Path(sources[0]).rglob("*") if p.is_file()}
    assert holders["fbk-superlink"] == {"ca.crt", "server.pem", "server.key"}
    for i, name in enumerate(names):
        assert holders[f"fbk-supernode-{i}"] == {"ca.crt", name, f"{name}.pub"}
    assert holders["fbk-register"] == {"ca.crt", *[f"{n}.pub" for n in names]}
    assert [n for n, files in holders.items() if "server.key" in files] == ["fbk-superlink"]
    assert not list(certs.rglob("ca.key"))
    assert specs[0]["ports"] == {"9092/tcp": ("127.0.0.1", 5)}
    assert specs[-1]["network_mode"] == "container:fbk-superlink" and "ports" not in specs[-1]


@pytest.mark.parametrize("settings, error", [
    ({"mode": "remote", "address": "10.0.0.5:9093", "insecure": True},
     "federation.insecure=true sends plaintext to 10.0.0.5:9093"),
    ({"mode": "remote", "address": "superlink:9093", "insecure": True},
     "federation.insecure=true sends plaintext to superlink:9093"),
    ({"mode": "local", "host": "0.0.0.0"}, "federation=local runs plaintext on federation.host"),
    ({"mode": "simulation", "host": "10.1.2.3"}, "federation=simulation runs plaintext"),
    ({"mode": "docker", "tls": False, "warm_clientapps": False},
     "federation.tls=false runs plaintext"),
])
def test_plaintext_off_loopback_needs_allow_insecure(settings, error):
    cfg = ExperimentConfig()
    for key, value in settings.items():
        setattr(cfg.federation, key, value)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    message = str(err.value)
    assert message.startswith(error) and "\n" not in message
    assert "federation.allow_insecure=true" in message
    cfg.federation.allow_insecure = True
    validate(cfg)


@pytest.mark.parametrize("address", ["127.0.0.1:9093", "localhost:9093", "[::1]:9093",
                                     "127.0.0.2:9093"])
def test_plaintext_on_loopback_is_accepted(address):
    cfg = ExperimentConfig()
    cfg.federation.mode, cfg.federation.address, cfg.federation.insecure = "remote", address, True
    validate(cfg)
    cfg.federation.address, cfg.federation.insecure = "10.0.0.5:9093", False
    with pytest.raises(ConfigError, match="needs federation.root_certificates"):
        validate(cfg)  # TLS needs the CA


def test_federation_yaml_and_schema_defaults_agree():
    """The security switches mean the same with and without Hydra (the YAML once said
    insecure: false while the schema said true)."""
    from flbackdoor.config import FederationConfig

    defaults = FederationConfig()
    assert defaults.insecure is False and defaults.allow_insecure is False and defaults.tls
    for path in sorted((REPO / "conf" / "federation").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        for key in ("insecure", "allow_insecure", "tls", "host"):
            if key in data:
                assert data[key] == getattr(defaults, key), f"{path.name}: {key}"
        if data["mode"] in ("remote", "local", "simulation", "docker"):
            assert data.get("allow_insecure") is False, path.name


def test_keys_and_certs_are_ignored_by_git_and_docker():
    """README's node keys (keys/<name>) and certificates never enter a commit or the image."""
    for path in ("keys/benign-3", "sub/keys/benign-3", "certs/superlink/server.key"):
        out = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=REPO,
                             timeout=60)
        assert out.returncode == 0, path
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {"keys", "**/keys", "certs"} <= set(ignored)
