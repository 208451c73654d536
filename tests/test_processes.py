"""ProcessGroup without Flower: what it starts dies with a SIGKILLed launcher, grandchildren too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from launcher.federation.processes import ProcessGroup, _alive

from conftest import REPO

LAUNCHER = """
import sys, time
from pathlib import Path
from launcher.federation.processes import ProcessGroup
g = ProcessGroup(Path(sys.argv[1]), {"PATH": "/usr/bin:/bin"})
a = g.start("a", ["sleep", "300"])
# b's child is not ours to give a death signal: only the reaper's marker finds it
b = g.start("b", ["sh", "-c", "sleep 301 & echo $! > {0}/g.tmp; mv {0}/g.tmp {0}/grandchild; "
                   "wait".format(sys.argv[1])])
while not (Path(sys.argv[1]) / "grandchild").exists():
    time.sleep(0.05)
print(a.pid, b.pid, (Path(sys.argv[1]) / "grandchild").read_text().strip(), g.reaper.pid,
      flush=True)
time.sleep(300)
"""


def test_a_sigkilled_launcher_takes_children_and_grandchildren_along(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(tmp_path)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    pids = [int(p) for p in proc.stdout.readline().split()]
    try:
        assert len(pids) == 4 and all(_alive(p) for p in pids)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in pids if _alive(p)]
        assert "reaper: the launcher died" in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_normal_stop_ends_the_reaper_too(tmp_path):
    group = ProcessGroup(tmp_path, {"PATH": "/usr/bin:/bin"})
    child = group.start("a", ["sleep", "300"])
    reaper = group.reaper
    assert reaper is not None and reaper.poll() is None
    group.stop(grace=2)
    assert child.poll() is not None and reaper.poll() == 0 and group.reaper is None


STOPPING_LAUNCHER = """
import sys, time
from pathlib import Path
from launcher.federation.processes import ProcessGroup
g = ProcessGroup(Path(sys.argv[1]), {"PATH": "/usr/bin:/bin"})
# a straggler: in a session of its own and reparented away, so no longer the group's descendant
g.start("a", ["sh", "-c", "setsid sleep 302 & echo $! > {0}/straggler".format(sys.argv[1])])
while not (Path(sys.argv[1]) / "straggler").exists():
    time.sleep(0.05)
time.sleep(0.5)
g.stop(grace=2)
"""


def test_a_straggler_after_a_normal_stop_is_swept_up_without_a_death_notice(tmp_path):
    res = subprocess.run([sys.executable, "-c", STOPPING_LAUNCHER, str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    straggler = int((tmp_path / "straggler").read_text())
    try:
        assert res.returncode == 0, res.stderr
        assert not _alive(straggler)
        assert "launcher died" not in res.stderr
    finally:
        try:
            os.kill(straggler, signal.SIGKILL)
        except ProcessLookupError:
            pass
