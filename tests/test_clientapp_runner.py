"""The warm ClientApp runner (supernode/clientapp_runner.py) against a real SuperLink and a real
SuperNode in ``--isolation process``, serving a tiny Flower App of this test's own: one process
serves every message, an exception in the app is an error reply (the runner lives on), and a
second run with changed app code (a new FAB hash) runs the new code in the same process."""

from __future__ import annotations

import json
import os
import signal
import textwrap
from pathlib import Path

import pytest

from conftest import clientapp_runners

SERVER = '''
import json
import time
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    while not (nodes := list(grid.get_node_ids())):
        time.sleep(0.2)
    node = nodes[0]
    out = []
    for action in ("echo", "boom", "echo"):
        msg = Message(RecordDict({"q": ConfigRecord({"a": action})}), dst_node_id=node,
                      message_type=f"query.{action}")
        reply = next(iter(grid.send_and_receive([msg], timeout=60)))
        if reply.has_error():
            out.append({"error": reply.error.reason})
        else:
            out.append(dict(reply.content["r"]))
    with open(context.run_config["out"], "w") as f:
        json.dump(out, f)
'''

CLIENT = '''
import os
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

VERSION = "{version}"
app = ClientApp()


@app.query("echo")
def echo(msg: Message, context: Context) -> Message:
    return Message(RecordDict({{"r": ConfigRecord({{"version": VERSION, "pid": os.getpid()}})}}),
                   reply_to=msg)


@app.query("boom")
def boom(msg: Message, context: Context) -> Message:
    raise ValueError("the app failed on purpose")
'''

MANIFEST = '''
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "tinyapp"
version = "1.0.0"
dependencies = []

[tool.flwr.app]
publisher = "tests"

[tool.flwr.app.components]
serverapp = "tinyapp.server:app"
clientapp = "tinyapp.client:app"

[tool.flwr.app.config]
out = ""
'''


def write_app(root: Path, version: str) -> Path:
    pkg = root / "tinyapp"
    pkg.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(textwrap.dedent(MANIFEST))
    (pkg / "__init__.py").write_text("")
    (pkg / "server.py").write_text(SERVER)
    (pkg / "client.py").write_text(CLIENT.format(version=version))
    return root


@pytest.mark.e2e
def test_one_warm_process_serves_every_message_survives_errors_and_reloads_a_new_fab(tmp_path):
    from launcher.federation.commands import clientapp_runner_cmd
    from launcher.federation.local import superlink_cmd, supernode_cmd
    from launcher.federation.processes import ProcessGroup, free_port, port_open
    from launcher.federation.submit import flwr_bin, flwr_env, submit, write_flwr_home

    host = "127.0.0.1"
    fleet, http, port = free_port(host), free_port(host), free_port(host)
    home = write_flwr_home(tmp_path, f"{host}:{http}")
    env = flwr_env(home)
    app = write_app(tmp_path / "app", "v1")
    with ProcessGroup(tmp_path / "logs", env) as procs:
        procs.start("superlink", superlink_cmd(host, fleet, http))
        procs.wait_for(lambda: port_open(host, http) and port_open(host, fleet), 60, "SuperLink")
        procs.start("supernode", supernode_cmd(host, fleet, port, 0, 1, "benign", warm=True))
        ready = tmp_path / "ready"
        # One process serving one node (a container's, or another machine's, runner)
        runner = clientapp_runner_cmd(port, 0.1, str(ready))
        procs.start("runner", [flwr_bin(runner[0]), *runner[1:]], restart=True)
        procs.wait_for(ready.exists, 120, "runner")
        results = []
        for version in ("v1", "v2"):
            write_app(app, version)
            out = tmp_path / f"{version}.json"
            config = tmp_path / f"{version}.toml"
            config.write_text(f'out = "{out}"\n')
            submit(tmp_path, config, env, procs, app_dir=app)
            results.append(json.loads(out.read_text()))
        pids = clientapp_runners(home)
        assert procs.restarts == {}, "the runner never died"

    (echo1, boom, echo2), (echo3, _, echo4) = results
    assert echo1["version"] == echo2["version"] == "v1"
    assert "ValueError" in boom["error"] and "on purpose" in boom["error"]
    assert echo1["pid"] == echo2["pid"] == echo3["pid"] == echo4["pid"] == pids[0], \
        "one process served every message, before and after the error, and the second run"
    assert echo3["version"] == echo4["version"] == "v2", "a new FAB ran its new code"
    log = (tmp_path / "logs" / "runner.log").read_text()
    assert "reloading the app's modules" in log
    assert pids and all(p != os.getpid() for p in pids)


def test_a_runner_that_dies_is_restarted_by_its_process_group(tmp_path):
    from launcher.federation.processes import ProcessGroup

    with ProcessGroup(tmp_path, {"PATH": "/usr/bin:/bin"}) as group:
        first = group.start("runner", ["sleep", "60"], critical=False, restart=True)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        group.check_alive()
        second = group.procs["runner"]
        assert second.pid != first.pid and second.poll() is None
        assert group.restarts == {"runner": 1}
        for _ in range(group.MAX_RESTARTS):  # then it stays dead, reported once
            os.kill(group.procs["runner"].pid, signal.SIGKILL)
            group.procs["runner"].wait()
            group.check_alive()
        assert group.restarts["runner"] == group.MAX_RESTARTS
        assert group.procs["runner"].poll() is not None and "runner" in group.reported


def test_module_bookkeeping_for_a_reload(tmp_path, monkeypatch):
    from supernode.clientapp_runner import app_modules, forget_modules

    (tmp_path / "pkg_a").mkdir()
    (tmp_path / "pkg_a" / "__init__.py").write_text("X = 1\n")
    (tmp_path / "pkg_a" / "sub.py").write_text("Y = 2\n")
    (tmp_path / "mod_b.py").write_text("Z = 3\n")
    (tmp_path / "data").mkdir()  # not a package
    assert app_modules(tmp_path) == {"pkg_a", "mod_b"}
    monkeypatch.syspath_prepend(str(tmp_path))
    import mod_b  # noqa: F401
    import pkg_a.sub  # noqa: F401
    import sys

    assert forget_modules({"pkg_a", "mod_b"}) == 3
    assert not {"pkg_a", "pkg_a.sub", "mod_b"} & set(sys.modules)
    assert "json" in sys.modules  # nothing else is touched


def test_warm_supernode_commands():
    from launcher.federation.commands import (clientapp_runner_cmd, runner_host_cmd,
                                              supernode_cmd)

    stock = supernode_cmd("h:9092", 9094, "partition-id=0")
    assert stock[0] == "flower-supernode" and "--isolation" not in stock
    warm = supernode_cmd("h:9092", 9094, "partition-id=0", warm=True, idle_poll_s=0.25)
    assert warm[:3] == ["flbackdoor-supernode", "--idle-poll-s", "0.25"]
    assert warm[warm.index("--isolation") + 1] == "process"
    runner = clientapp_runner_cmd(9094, 0.2, "/tmp/ready")
    assert runner[runner.index("--runtime-api-address") + 1] == "127.0.0.1:9094"
    assert runner[-2:] == ["--ready-file", "/tmp/ready"]
    host = runner_host_cmd({"clientapps-0": 4000, "clientapps-1": 4001}, 0.2, "/l", "/r")
    assert [host[i + 1] for i, a in enumerate(host) if a == "--node"] == [
        "clientapps-0=127.0.0.1:4000", "clientapps-1=127.0.0.1:4001"]
    assert host[host.index("--log-dir") + 1] == "/l" and host[host.index("--ready-dir") + 1] == "/r"
    assert host[host.index("--compute-slots") + 1] == "0"
    assert runner_host_cmd({"a": 1}, 0.2, "/l", "/r", compute_slots=3)[-3] == "3"


def test_the_short_poll_caps_only_the_idle_sleep(monkeypatch):
    from supernode import short_poll

    slept = []
    monkeypatch.setattr(short_poll.time, "sleep", slept.append)
    capped = short_poll.CappedSleep(0.25)
    for seconds in (3, 0.5, 0.1):
        capped.sleep(seconds)
    assert slept == [0.25, 0.5, 0.1]
    assert capped.monotonic is short_poll.time.monotonic  # the rest is time's


@pytest.mark.parametrize("override, message", [
    ("federation.supernode_idle_poll_s=0", "supernode_idle_poll_s=0.0 must be in 0.01..3"),
    ("federation.supernode_idle_poll_s=5", "supernode_idle_poll_s=5.0 must be in 0.01..3"),
    ("federation.superexec_poll_interval_s=0", "superexec_poll_interval_s=0.0 must be in"),
    ("federation.compute_slots=-1", "compute_slots=-1 must be 0"),
    ("federation.compute_slots=4", None),
    ("federation=docker", None),
    ("federation.warm_clientapps=true", None),
])
def test_warm_options_are_checked(override, message):
    from conftest import resolved
    from flbackdoor.config import ConfigError

    if message is None:
        resolved(override)
        return
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        resolved(override)


def test_a_process_restarted_from_another_thread_outlives_that_thread(tmp_path):
    """Linux's parent-death signal follows the thread that forked: a runner restarted by the
    submit watchdog (a thread that ends with the run's log stream) must not die with it."""
    import threading
    import time

    from launcher.federation.processes import ProcessGroup

    with ProcessGroup(tmp_path, {"PATH": "/usr/bin:/bin"}) as group:
        first = group.start("runner", ["sleep", "60"], critical=False, restart=True)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        watchdog = threading.Thread(target=group.check_alive)
        watchdog.start()
        watchdog.join()
        time.sleep(0.5)
        assert group.procs["runner"].poll() is None, "the restarted process is alive"


def test_a_runner_gives_up_on_a_node_that_stays_unreachable():
    """A container's runner (``--give-up-after``) exits once its SuperNode has been unreachable
    that long, so the engine's restart joins a restarted node's new network namespace; without
    it the runner keeps retrying."""
    import time

    from launcher.federation.processes import free_port
    from supernode.clientapp_runner import WarmRunner

    started = time.monotonic()
    with pytest.raises(SystemExit, match=r"unreachable for 0 s; exiting"):
        WarmRunner(f"127.0.0.1:{free_port()}", 0.05, give_up_after_s=0.3).run()
    assert 0.3 <= time.monotonic() - started < 30
