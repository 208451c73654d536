"""The runner host (supernode/runner_host.py) with real forks: a runner per node, each with its
own log and ready file; a killed runner is forked again; SIGTERM ends them all; a host killed
outright takes its runners along. The runners here serve nothing (a loop that logs its pid): the
Flower side is tests/test_clientapp_runner.py's and the e2e tests'."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from supernode.runner_host import Node

HOST = '''
import logging, os, sys, time
from pathlib import Path
from supernode.runner_host import Node, RunnerHost

logging.basicConfig(level=logging.INFO)

def serve(node):
    print(f"serving {node.address} as {os.getpid()}", flush=True)
    while True:
        time.sleep(0.05)

nodes = [Node.parse(s) for s in sys.argv[2:]]
sys.exit(RunnerHost(nodes, serve, Path(sys.argv[1]), Path(sys.argv[1]) / "ready").run())
'''


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def _wait(cond, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return value


@pytest.fixture
def host(tmp_path):
    script = tmp_path / "host.py"
    script.write_text(HOST)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "logs"),
                             "a=127.0.0.1:1", "b=127.0.0.1:2"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    yield proc, tmp_path / "logs"
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_runner_per_node_with_its_own_log_and_ready_file(host):
    proc, logs = host
    _wait(lambda: (logs / "ready").is_dir() and len(list((logs / "ready").iterdir())) == 2,
          "ready files")
    _wait(lambda: all("serving" in (logs / f"{n}.log").read_text() for n in "ab"), "runner logs")
    kids = _children(proc.pid)
    assert len(kids) == 2
    assert "127.0.0.1:1" in (logs / "a.log").read_text() and "127.0.0.1:2" in (
        logs / "b.log").read_text()


def test_a_killed_runner_is_forked_again_and_sigterm_ends_them_all(host):
    proc, logs = host
    first = _wait(lambda: len(k := _children(proc.pid)) == 2 and k, "two runners")
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    again = _wait(lambda: len(k := _children(proc.pid)) == 2 and victim not in k and k,
                  "a runner forked again")
    assert len(again & first) == 1
    os.kill(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert "killed by signal 9: forking it again (1 of at most 5)" in out
    assert not any(_alive(p) for p in again)


def test_runners_die_with_a_host_killed_outright(host):
    proc, _ = host
    kids = _wait(lambda: len(k := _children(proc.pid)) == 2 and k, "two runners")
    proc.kill()
    proc.wait()
    _wait(lambda: not any(_alive(p) for p in kids), "runners gone with their host", 10)


@pytest.mark.parametrize("spec", ["a", "=h:1", "a=", "a/b=h:1"])
def test_a_malformed_node_is_refused(spec):
    with pytest.raises(ValueError, match="need NAME=HOST:PORT"):
        Node.parse(spec)


def test_two_nodes_with_one_name_are_refused(tmp_path):
    from supernode.runner_host import RunnerHost

    with pytest.raises(ValueError, match="two nodes with one name"):
        RunnerHost([Node("a", "h:1"), Node("a", "h:2")], print, tmp_path)
