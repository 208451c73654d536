"""Separate hosts, here: the SuperLink, an operator's machine and each SuperNode in a Linux network
namespace of its own, with its own address on a bridge (veth pairs this test makes; traffic
stays on loopback and those addresses). TLS on every connection, SuperNode authentication on:
the README's separate-machine commands, run for real, plus the two nodes that must be refused
(a key the SuperLink never registered, and a plaintext client)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from conftest import REPO, SHARED_DATA, data_args, requires_shared_data
from launcher.federation import commands
from launcher.federation.commands import CONTROL_PORT, FLEET_PORT, NODE_PORT, Tls, node_name
from launcher.federation.processes import ProcessGroup
from launcher.federation.submit import flwr_bin, flwr_env
from launcher.federation.tls import ServerCerts, node_private_key, public_key, write_node_key
from launcher.federation.tls_cli import make
from flbackdoor.results import read_metrics

pytestmark = [requires_shared_data, pytest.mark.e2e]

ROLES = ["benign", "benign", "malicious"]
SUBNET = f"10.200.{os.getpid() % 250}"  # ours alone: made and removed by this test
PREFIX = f"fbk{os.getpid() % 100000}"
HOSTS = {"superlink": 1, "operator": 2, "node0": 10, "node1": 11, "node2": 12, "intruder": 20}


def _can_make_namespaces() -> str:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    return ""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class Hosts:
    """One namespace per host, all on a bridge inside the SuperLink's namespace."""

    def __init__(self) -> None:
        self.made: list[str] = []

    def ns(self, host: str) -> str:
        return f"{PREFIX}-{host}"

    def addr(self, host: str) -> str:
        return f"{SUBNET}.{HOSTS[host]}"

    def up(self) -> None:
        sl = self.ns("superlink")
        for host in HOSTS:
            _ip("netns", "add", self.ns(host))
            self.made.append(self.ns(host))
            _ip("-n", self.ns(host), "link", "set", "lo", "up")
        bridge = f"{PREFIX}br"
        _ip("-n", sl, "link", "add", bridge, "type", "bridge")
        _ip("-n", sl, "addr", "add", f"{self.addr('superlink')}/24", "dev", bridge)
        _ip("-n", sl, "link", "set", bridge, "up")
        for i, host in enumerate(h for h in HOSTS if h != "superlink"):
            veth = f"{PREFIX}v{i}"
            _ip("link", "add", veth, "netns", sl, "type", "veth", "peer", "name", "eth0",
                "netns", self.ns(host))
            _ip("-n", sl, "link", "set", veth, "master", bridge)
            _ip("-n", sl, "link", "set", veth, "up")
            _ip("-n", self.ns(host), "addr", "add", f"{self.addr(host)}/24", "dev", "eth0")
            _ip("-n", self.ns(host), "link", "set", "eth0", "up")

    def on(self, host: str, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns(host), flwr_bin(cmd[0]), *cmd[1:]]

    def down(self) -> None:
        """Whatever happened: end every process still inside our namespaces, then delete
        them (their veth pairs and the bridge go with them)."""
        for ns in self.made:
            out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in out.stdout.split():
                try:
                    os.kill(int(pid), 9)
                except ProcessLookupError:
                    pass
        for ns in self.made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def left(self) -> list[str]:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        return [line.split()[0] for line in out.splitlines() if line.startswith(PREFIX + "-")]


@pytest.fixture
def hosts():
    reason = _can_make_namespaces()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI runs as root with iproute2: {reason}")
        pytest.skip(reason)
    h = Hosts()
    try:
        h.up()
        yield h
    finally:
        h.down()
        assert not h.left(), f"namespaces left behind: {h.left()}"


def test_tls_node_auth_federation_across_namespaces(hosts, tmp_path, cache_dir):
    sl = hosts.addr("superlink")
    certs = tmp_path / "certs"
    names = [node_name(p, r) for p, r in enumerate(ROLES)]
    # The server machine: CA, a certificate naming the address everyone dials, node key pairs.
    make(certs, [sl], names)
    server = ServerCerts.in_folder(certs)
    rogue = write_node_key(tmp_path / "rogue" / "malicious-9").with_suffix("")  # never registered
    env = flwr_env(tmp_path / "flwr_home", {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2"})
    with ProcessGroup(tmp_path / "logs", env) as procs:
        procs.start("superlink", hosts.on("superlink", commands.superlink_cmd(
            f"0.0.0.0:{FLEET_PORT}", "0.0.0.0", CONTROL_PORT,
            Tls(str(server.ca), str(server.cert), str(server.key)), node_auth=True)))
        # The operator registers the nodes' public keys (this waits for the SuperLink to answer).
        reg = subprocess.run(
            hosts.on("operator", ["flbackdoor-tls", "register", f"{sl}:{CONTROL_PORT}", "--ca",
                                  str(server.ca),
                                  *[str(public_key(certs, n)) for n in names]]),
            capture_output=True, text=True, env=env, timeout=120)
        assert reg.returncode == 0, reg.stdout + reg.stderr
        # Registering again (compose's `register` service on every start) is not an error.
        again = subprocess.run(
            hosts.on("operator", ["flbackdoor-tls", "register", f"{sl}:{CONTROL_PORT}", "--ca",
                                  str(server.ca), str(public_key(certs, names[0]))]),
            capture_output=True, text=True, env=env, timeout=120)
        assert again.returncode == 0 and "registered benign-0.pub" in again.stdout, again.stderr
        procs.check_alive()
        ca = Tls(str(server.ca))
        for pid, role in enumerate(ROLES):
            # The session's cache folder: the first process to need a partition cache builds
            # it (atomically) for all, instead of every node decoding MNIST again.
            config = commands.node_config(pid, len(ROLES), role, str(SHARED_DATA), str(cache_dir))
            procs.start(f"supernode-{pid}", hosts.on(f"node{pid}", commands.supernode_cmd(
                f"{sl}:{FLEET_PORT}", NODE_PORT, config, ca, str(node_private_key(certs, names[pid])))))
        # Intruders on their own host: a valid key the SuperLink never saw; no TLS at all.
        bad_config = commands.node_config(0, len(ROLES), "malicious")
        limits = ["--max-retries", "1", "--max-wait-time", "20"]
        procs.start("unregistered", hosts.on("intruder", [*commands.supernode_cmd(
            f"{sl}:{FLEET_PORT}", NODE_PORT, bad_config, ca, str(rogue)), *limits]), critical=False)
        procs.start("plaintext", hosts.on("intruder", [*commands.supernode_cmd(
            f"{sl}:{FLEET_PORT}", NODE_PORT + 1, bad_config), *limits]), critical=False)

        run_dir = tmp_path / "run"
        res = subprocess.run(
            ["ip", "netns", "exec", hosts.ns("operator"), sys.executable, "-m", "launcher.cli",
             "federation=remote", f"federation.address={sl}:{CONTROL_PORT}",
             "federation.insecure=false", f"federation.root_certificates={server.ca}",
             *data_args(cache_dir), "num_clients=3",
             "clients_per_round=3", "num_rounds=1", "dataset.max_train_samples=3000",
             "server.eval_max_samples=2000", "attack=boosted", "attack.task=pixel_pattern",
             "attack.num_malicious=1", "attack.schedule=fixed_frequency",
             f"hydra.run.dir={run_dir}"],
            cwd=REPO, capture_output=True, text=True, env=env, timeout=240)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        procs.check_alive()  # every registered node and the SuperLink lived through the run

        nodes = subprocess.run(hosts.on("operator", ["flwr", "supernode", "ls", "flbackdoor",
                                                     "--format", "json"]),
                               capture_output=True, text=True, env=flwr_env(run_dir / "flwr_home"),
                               timeout=60)
        listed = json.loads(nodes.stdout)["nodes"]
        for name in ("unregistered", "plaintext"):
            proc = procs.procs[name]
            deadline = time.monotonic() + 30
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.5)
        logs = {n: (tmp_path / "logs" / f"{n}.log").read_text()
                for n in ("unregistered", "plaintext")}

    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1]
    assert rows[0]["num_clients"] == 3 and rows[0]["num_malicious"] == 1, rows
    assert rows[0]["main_accuracy"] > 0.5, rows  # chance is 0.1
    # Only the three registered keys ever became nodes, and all three are online.
    assert len(listed) == 3 and {n["status"] for n in listed} == {"online"}, listed
    # Both intruders were refused and gave up (Flower exit code 305: no connection).
    assert procs.procs["unregistered"].returncode not in (None, 0)
    assert "Failed to activate SuperNode" in logs["unregistered"], logs["unregistered"][-2000:]
    assert procs.procs["plaintext"].returncode not in (None, 0)
    assert "Failed to initialize the connection" in logs["plaintext"], logs["plaintext"][-2000:]
    assert "SuperNode ID" not in logs["plaintext"] + logs["unregistered"]
