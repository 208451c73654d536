"""Faults with real processes: SuperNodes killed mid-round, a malicious SuperNode sending every
kind of malformed update, and an experiment killed and resumed."""

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

from conftest import (REPO, clientapp_runners, data_args, flbackdoor, flower_processes,
                      requires_shared_data)

pytestmark = [requires_shared_data, pytest.mark.e2e]


def base(cache_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return [*data_args(cache_dir), "num_clients=3",
            "clients_per_round=3", "dataset.max_train_samples=1500", f"hydra.run.dir={run_dir}",
            *extra]


def test_every_malformed_kind_from_a_real_malicious_node_is_rejected(tmp_path, cache_dir):
    """A real malicious SuperNode cycles through every kind (one a round): each reply is
    rejected with its reason, training goes on with the honest nodes, the model stays finite and
    metrics.jsonl stays strict JSON."""
    from attacker.malformed import KINDS

    res = flbackdoor(base(cache_dir, tmp_path, f"num_rounds={len(KINDS)}", "attack=malformed",
                          "attack.num_malicious=1", "attack.oversized_bytes=6000000",
                          "server.max_update_bytes=4000000"), timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    def strict(constant):
        raise AssertionError(f"metrics.jsonl holds {constant}")

    text = (tmp_path / "metrics.jsonl").read_text()
    rows = [json.loads(line, parse_constant=strict) for line in text.splitlines()]
    reasons = [r["rejected_updates"] for r in rows]
    assert [len(r) for r in reasons] == [1] * len(KINDS), reasons
    expected = ["non-finite", "non-finite", "shape", "dtype", "missing arrays", "num-examples",
                "exceeds server.max_update_bytes", "unexpected metrics: surprise",
                "missing metrics: train_loss", "are not exactly", "bytes decode to",
                "isolated_count=nan is not finite", "exceeds server.max_update_norm",
                "num-examples=1000000 outside 1..500"]
    assert len(expected) == len(KINDS)
    assert all(word in r[0]["reason"] for word, r in zip(expected, reasons)), reasons
    assert all(r["num_clients"] == 2 for r in rows)
    assert all(0.0 <= r["main_accuracy"] <= 1.0 and r["main_loss"] < 10 for r in rows)
    assert rows[-1]["main_accuracy"] > 0.7  # training went on with the honest nodes


def _supernode(partition: int) -> tuple[int, list[str], dict[str, str]]:
    """A live SuperNode's pid, command line and environment (to start it again as it was)."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        text = b" ".join(argv).decode(errors="replace")
        if ("flower-supernode" in text or "flbackdoor-supernode" in text) and \
                f"partition-id={partition} " in text:
            env = dict(e.decode().split("=", 1) for e in environ if b"=" in e)
            return int(proc.name), [a.decode() for a in argv if a], env


def test_supernodes_killed_mid_round_cost_only_their_replies(tmp_path, cache_dir):
    """Three trials: in rounds 2-4 one SuperNode (each of the three once) is killed (SIGKILL)
    as the round starts and restarted right away as a new process; the run completes with every
    round aggregated."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "launcher.cli",
         *base(cache_dir, tmp_path, "num_rounds=4", "server.round_timeout_s=15")],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    restarted: list[subprocess.Popen] = []
    killed_in: list[int] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "[train round " in line:
                done = int(line.split("[train round ")[1].split("/")[0])
                if done < 4:
                    victim = done % 3
                    pid, argv, env = _supernode(victim)
                    os.killpg(pid, signal.SIGKILL)
                    killed_in.append(done + 1)
                    # Same command, same Runtime API port: the node's warm ClientApp runner
                    # (if any) finds it again there.
                    log = (tmp_path / f"restarted-{victim}-{done + 1}.log").open("wb")
                    restarted.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                      env=env, start_new_session=True))
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in restarted:
            os.killpg(p.pid, signal.SIGKILL)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    for r in rows:  # docs/RELIABILITY.md quotes these (pytest -s)
        print(f"| {r['round']} | {r['main_accuracy']:.3f} | {r['num_clients']} / "
              f"{r['num_sampled']} | {r['missing_nodes']} | {r['round_time_s']:.1f} s |")
    assert killed_in == [2, 3, 4]
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    assert sum(r["missing_nodes"] for r in rows) == 3, rows
    assert all(r["num_clients"] >= 2 for r in rows)
    assert rows[-1]["main_accuracy"] > 0.7
    time.sleep(2)
    assert not flower_processes(tmp_path)


def test_killed_clientapp_runners_are_restarted_and_the_run_completes(tmp_path, cache_dir):
    """SIGKILL after round 1 of 4 to one SuperNode's warm ClientApp runner (its host forks it
    again), after round 2 to the host process itself (the launcher starts it again, its runners
    die with it and are forked anew): the run completes, the last round with every node's
    reply."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "launcher.cli",
         *base(cache_dir, tmp_path, "num_rounds=4", "server.round_timeout_s=90")],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed: list[int] = []
    try:
        assert proc.stdout is not None
        output = []
        for line in proc.stdout:
            output.append(line)
            if "[train round 1/4]" in line or "[train round 2/4]" in line:
                live = clientapp_runners(tmp_path)
                host = min(live)  # started first; the runners are its children
                killed.append(max(live) if not killed else host)
                os.kill(killed[-1], signal.SIGKILL)
        assert proc.wait(timeout=60) == 0, "".join(output)[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(killed) == 2
    text = "".join(output)
    assert "clientapps was killed by SIGKILL; see" in text, text
    assert "restarting it (1 of at most" in text, text
    assert "killed by signal 9: forking it again (1 of at most" in (
        tmp_path / "logs" / "clientapps.log").read_text()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["num_clients"] == 3, rows
    assert not set(killed) & set(clientapp_runners(tmp_path))
    time.sleep(2)
    assert not flower_processes(tmp_path)


def test_resume_after_a_kill_reproduces_the_uninterrupted_run(tmp_path, cache_dir):
    args = ["num_rounds=5", "federation=simulation", "defense=weak_dp",
            "defense.norm_bound=5", "defense.noise_std=0.01"]
    full = flbackdoor(base(cache_dir, tmp_path / "full", *args))
    assert full.returncode == 0, full.stderr[-3000:]

    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "launcher.cli", *base(cache_dir, run, *args)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "[train round 2/5]" in line:
            proc.send_signal(signal.SIGTERM)  # like a scheduler ending the job
            break
    proc.communicate(timeout=60)
    assert proc.returncode != 0 and not (run / "summary.json").exists()
    # Rounds finished between the log line and the signal's arrival are kept, not redone: how
    # many depends on the scheduler, only that some but not all are there does not.
    assert 1 <= len(read_metrics(run / "metrics.jsonl")) < 5

    resumed = flbackdoor([f"resume={run}", f"hydra.run.dir={tmp_path / 'resume_invocation'}"])
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    a, b = read_metrics(tmp_path / "full" / "metrics.jsonl"), read_metrics(run / "metrics.jsonl")
    assert [r["round"] for r in b] == [1, 2, 3, 4, 5], "no round missing or written twice"
    for ra, rb in zip(a, b):  # docs/RELIABILITY.md quotes these (pytest -s)
        print(f"| {ra['round']} | {ra['main_accuracy']:.4f}, {ra['main_loss']:.6f} | "
              f"{rb['main_accuracy']:.4f}, {rb['main_loss']:.6f} |")
    for key in ("main_accuracy", "main_loss", "num_clients"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final"]["main_accuracy"] == a[-1]["main_accuracy"]
