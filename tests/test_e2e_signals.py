"""Signals and deaths with real processes (federation=local): the SuperLink killed mid-run and
the run resumed, SIGHUP to the launcher, a second Ctrl-C during cleanup, and the launcher itself
killed with SIGKILL. Each time no process of the run may be left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flbackdoor.results import read_metrics
from launcher.federation.processes import _alive, descendants

from conftest import REPO, data_args, flbackdoor, flower_processes, requires_shared_data

pytestmark = [requires_shared_data, pytest.mark.e2e]


def base(cache_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    """3 clients, a 1,500-image MNIST subset (as in test_e2e_faults.py)."""
    return [*data_args(cache_dir), "num_clients=3", "clients_per_round=3",
            "dataset.max_train_samples=1500", f"hydra.run.dir={run_dir}", *extra]


def no_leftovers(run_dir: Path, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while flower_processes(run_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not flower_processes(run_dir)


def launch(args: list[str]) -> subprocess.Popen:
    """``flbackdoor`` in the background, stdout and stderr in one stream, with the default
    SIGINT a terminal's Ctrl-C meets (a backgrounded pytest would pass on SIG_IGN)."""
    return subprocess.Popen(
        [sys.executable, "-m", "launcher.cli", *args], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(proc: subprocess.Popen, text: str) -> list[str]:
    """Read the run's output up to the first line holding ``text``."""
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"{text!r} never came; exit {proc.wait()}:\n{''.join(seen[-40:])}")


def cleanup(proc: subprocess.Popen, run_dir: Path, extra: list[int] = ()) -> None:
    """A failing test must not leave a 50-round federation running."""
    if proc.poll() is None:
        proc.kill()
    for pid in {*flower_processes(run_dir), *extra}:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def superlink_pid(launcher: subprocess.Popen) -> int:
    for pid in descendants([launcher.pid]):
        try:
            if b"flower-superlink" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    raise AssertionError("no SuperLink below the launcher")


def test_superlink_killed_mid_run_fails_cleanly_and_resumes(tmp_path, cache_dir):
    """SIGKILL to the SuperLink after round 2 of 3: exit 1 with one line naming it, nothing left
    behind; ``resume=<run>`` (a new SuperLink on the same state database) finishes the run,
    each round in metrics.jsonl exactly once."""
    run = tmp_path / "run"
    proc = launch(base(cache_dir, run, "num_rounds=3", "federation.superlink_database=true"))
    try:
        wait_for(proc, "[train round 2/3]")
        os.kill(superlink_pid(proc), signal.SIGKILL)
        killed = time.monotonic()
        out, _ = proc.communicate(timeout=120)
        took = time.monotonic() - killed
        assert proc.returncode == 1, out[-3000:]
        errors = [ln for ln in out.splitlines() if ln.startswith("flbackdoor: ")]
        assert len(errors) == 1, errors
        assert errors[0].startswith("flbackdoor: run failed: superlink was killed by SIGKILL; "
                                    f"see {run}/logs/superlink.log"), errors
        assert f"`flbackdoor resume={run}` continues it" in errors[0]
        assert no_leftovers(run)
        print(f"SuperLink killed: launcher exited {proc.returncode} after {took:.1f}s")
    finally:
        cleanup(proc, run)
    assert (run / "superlink.db").stat().st_size > 0  # its state outlived it
    before = [r["round"] for r in read_metrics(run / "metrics.jsonl")]
    assert before and before == list(range(1, len(before) + 1)) and len(before) < 3, before

    started = time.monotonic()
    resumed = flbackdoor([f"resume={run}", f"hydra.run.dir={tmp_path / 'resume_invocation'}"])
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2, 3], "no round missing or written twice"
    assert all(r["num_clients"] == 3 for r in rows), rows
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rounds"] == 3 and summary["final"]["main_accuracy"] == rows[-1]["main_accuracy"]
    assert no_leftovers(run)
    print(f"resumed after round {before[-1]} in {time.monotonic() - started:.1f}s; "
          f"final accuracy {rows[-1]['main_accuracy']:.4f}")


def test_sighup_stops_the_run_like_sigterm(tmp_path, cache_dir):
    """The terminal or SSH session closing (SIGHUP): every process stopped, exit 128 + 1."""
    proc = launch(base(cache_dir, tmp_path, "num_rounds=50"))
    try:
        wait_for(proc, "identified 3 of 3 partitions")
        assert len(flower_processes(tmp_path)) >= 4
        proc.send_signal(signal.SIGHUP)
        sent = time.monotonic()
        out, _ = proc.communicate(timeout=60)
        took = time.monotonic() - sent
        assert proc.returncode == 128 + signal.SIGHUP, out[-3000:]
        assert no_leftovers(tmp_path, timeout=0)  # stopped before the launcher exited
        assert not (tmp_path / "summary.json").exists()
        print(f"SIGHUP: exit {proc.returncode} after {took:.1f}s")
    finally:
        cleanup(proc, tmp_path)


def test_second_ctrl_c_during_cleanup_leaves_nothing_behind(tmp_path, cache_dir):
    """Ctrl-C, then Ctrl-C again while the launcher is stopping the federation (its first
    process already gone, the launcher still running): the cleanup is not cut short."""
    proc = launch(base(cache_dir, tmp_path, "num_rounds=50"))
    try:
        wait_for(proc, "identified 3 of 3 partitions")
        family = descendants([proc.pid])
        assert len(flower_processes(tmp_path)) >= 4
        proc.send_signal(signal.SIGINT)
        sent = time.monotonic()
        while all(_alive(pid) for pid in family) and time.monotonic() - sent < 30:
            time.sleep(0.02)
        assert proc.poll() is None, "the launcher should still be cleaning up"
        proc.send_signal(signal.SIGINT)
        second = time.monotonic() - sent
        out, _ = proc.communicate(timeout=60)
        took = time.monotonic() - sent
        assert proc.returncode != 0, out[-3000:]
        assert no_leftovers(tmp_path, timeout=0), out[-3000:]
        assert not any(_alive(pid) for pid in family)
        print(f"second SIGINT {second:.2f}s after the first; exit {proc.returncode} after "
              f"{took:.1f}s")
    finally:
        cleanup(proc, tmp_path)


def test_launcher_killed_with_sigkill_takes_its_federation_along(tmp_path, cache_dir):
    """``kill -9`` of the launcher mid-round: the SuperLink, SuperNodes, their SuperExecs,
    the ServerApp and ClientApps all die within seconds (parent-death signal, Flower's parent
    watch, the reaper)."""
    proc = launch(base(cache_dir, tmp_path, "num_rounds=50"))
    family: list[int] = []
    try:
        wait_for(proc, "[train round 1/50]")
        family = descendants([proc.pid])
        names = " ".join(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                         for pid in family if _alive(pid))
        for name in ("flower-superlink", "-supernode", "flower-superexec",
                     "flwr-serverapp", "reaper.py"):
            assert name in names, name
        proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        proc.wait(timeout=10)
        deadline = killed + 10
        while any(_alive(pid) for pid in family) and time.monotonic() < deadline:
            time.sleep(0.1)
        took = time.monotonic() - killed
        assert not [pid for pid in family if _alive(pid)], "processes outlived the launcher"
        assert no_leftovers(tmp_path, timeout=0)
        print(f"launcher SIGKILLed: {len(family)} processes gone after {took:.1f}s")
    finally:
        cleanup(proc, tmp_path, family)
