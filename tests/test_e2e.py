"""End to end on the real MNIST in ../shared/data: real Flower SuperLink/SuperNodes as separate
OS processes talking gRPC on loopback, the Simulation Engine, and a Hydra multirun."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flbackdoor.results import read_metrics

from conftest import REPO, SHARED_DATA, data_args, flbackdoor, flower_processes, requires_shared_data

pytestmark = [requires_shared_data, pytest.mark.e2e]

ROW_KEYS = {"round", "phase", "main_accuracy", "main_loss", "num_clients", "wall_time_s"}


def small(cache_dir: Path, *extra: str) -> list[str]:
    """3 clients, 2 rounds, a 3,000-image MNIST subset."""
    return [*data_args(cache_dir), "num_clients=3",
            "clients_per_round=3", "num_rounds=2", "dataset.max_train_samples=3000", *extra]


def no_leftovers(run_dir: Path, timeout: float = 15.0) -> bool:
    """No process of the run in ``run_dir`` outlives it."""
    deadline = time.monotonic() + timeout
    while flower_processes(run_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    return not flower_processes(run_dir)


def assert_results_contract(run_dir: Path, rounds: int) -> list[dict]:
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["round"] for r in rows] == list(range(1, rounds + 1))
    assert all(ROW_KEYS <= set(r) and r["phase"] == "train" for r in rows)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final"]["main_accuracy"] == rows[-1]["main_accuracy"]
    assert summary["rounds"] == rounds and summary["wall_time_s"] > 0
    assert summary["config"]["num_rounds"] == rounds
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return rows


def test_local_deployment_over_grpc_warm_and_cold(tmp_path, cache_dir):
    """The default (a warm ClientApp runner beside each SuperNode) and Flower's own path (a new
    ClientApp process per message) run the same experiment to the same numbers."""
    runs = {}
    for path in ("warm", "cold"):
        run = tmp_path / path
        res = flbackdoor(small(cache_dir, f"hydra.run.dir={run}",
                               f"federation.warm_clientapps={str(path == 'warm').lower()}"))
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        rows = runs[path] = assert_results_contract(run, 2)
        assert rows[-1]["main_accuracy"] > 0.8, rows  # chance is 0.1
        assert rows[-1]["main_accuracy"] > rows[0]["main_accuracy"] - 0.02
        assert [r["num_clients"] for r in rows] == [3, 3]
        assert "[train round 1/2] main_accuracy=" in res.stdout and "[train round 2/2]" in res.stdout
        # One SuperLink, three SuperNodes, each its own process with its own log, over gRPC;
        # warm: a runner beside each node that served its identify query and both rounds,
        # each forked by one host process (clientapps.log).
        logs = sorted(p.name for p in (run / "logs").iterdir())
        nodes = ["superlink.log", "supernode-0.log", "supernode-1.log", "supernode-2.log"]
        if path == "warm":
            assert logs == [f"clientapps-{i}.log" for i in range(3)] + ["clientapps.log"] + nodes
            assert "3 runners forked" in (run / "logs" / "clientapps.log").read_text()
            for i in range(3):
                served = (run / "logs" / f"clientapps-{i}.log").read_text()
                assert served.count("task train completed") == 2, served[-2000:]
                assert served.count("task query.identify completed") == 1
        else:
            assert logs == nodes
        assert "grpc" in (run / "logs" / "superlink.log").read_text().lower()
        assert no_leftovers(run)
    for key in ("main_accuracy", "main_loss"):
        assert [r[key] for r in runs["warm"]] == [r[key] for r in runs["cold"]], key


def test_simulation_engine(tmp_path, cache_dir):
    res = flbackdoor(small(cache_dir, "federation=simulation", f"hydra.run.dir={tmp_path}"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = assert_results_contract(tmp_path, 2)
    assert rows[-1]["main_accuracy"] > 0.8, rows
    assert "Starting Flower Simulation" in res.stdout
    assert no_leftovers(tmp_path)


def test_multirun_records_a_failed_job_goes_on_and_exits_nonzero(tmp_path, cache_dir):
    """Job 0 is a bad config: a ``failed`` row with its reason; job 1 still runs; the command
    exits 1 after the last job."""
    res = flbackdoor(["-m", *small(cache_dir, "federation=simulation", "num_rounds=1",
                                   "client.lr=-1,0.05", f"hydra.sweep.dir={tmp_path}")])
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]
    with (tmp_path / "sweep_summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["job"] for r in rows] == ["0", "1"]
    assert [r["status"] for r in rows] == ["failed", "done"]
    assert rows[0]["error"] == "error: client.lr=-1.0 must be positive", rows[0]
    assert "client.lr=-1" in rows[0]["overrides"] and "client.lr=0.05" in rows[1]["overrides"]
    assert 0.1 < float(rows[1]["final_main_accuracy"]) <= 1.0 and rows[1]["rounds"] == "1"
    assert (tmp_path / "1" / "metrics.jsonl").exists()
    assert no_leftovers(tmp_path)


def test_failed_run_exits_nonzero_and_stops_everything(tmp_path, cache_dir):
    # An identify query that cannot be answered in 1 ms makes the ServerApp raise.
    res = flbackdoor(small(cache_dir, "server.identify_timeout_s=0.001", f"hydra.run.dir={tmp_path}"))
    assert res.returncode == 1
    assert "flbackdoor: run failed: run" in res.stderr and "finished:failed" in res.stderr
    assert no_leftovers(tmp_path)


def test_ctrl_c_stops_every_process(tmp_path, cache_dir):
    proc = subprocess.Popen(
        [sys.executable, "-m", "launcher.cli", *small(cache_dir, "num_rounds=50",
                                                        f"hydra.run.dir={tmp_path}")],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # A shell starting pytest in the background (`pytest &`) makes it ignore SIGINT, and
        # children inherit that: give the run the default a terminal's Ctrl-C meets.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout is not None
    for line in proc.stdout:  # wait until the federation is really running a round
        if "identified 3 of 3 partitions" in line:
            break
    assert len(flower_processes(tmp_path)) >= 4, "SuperLink and 3 SuperNodes should be up"
    proc.send_signal(signal.SIGINT)
    try:
        proc.communicate(timeout=60)
        assert no_leftovers(tmp_path)
    finally:  # a failure here must not leave a 50-round federation running
        proc.kill()
        for pid in flower_processes(tmp_path):
            os.kill(pid, signal.SIGKILL)


def test_remote_superlink_started_by_hand(tmp_path, cache_dir):
    """The README's multi-machine commands, on one machine: a user starts the SuperLink and
    SuperNodes themselves (two with the warm ClientApp runner beside them, one with Flower's
    process per message), then submits with federation=remote."""
    from launcher.federation.processes import ProcessGroup, free_port, port_open
    from launcher.federation.submit import flwr_env

    fleet, http = free_port(), free_port()
    env = flwr_env(tmp_path / "server_home")
    with ProcessGroup(tmp_path / "logs", env) as procs:
        procs.start("superlink", ["flower-superlink", "--insecure",
                                  "--disable-runtime-dependency-installation",
                                  "--fleet-api-address", f"127.0.0.1:{fleet}",
                                  "--host", "127.0.0.1", "--port", str(http)])
        procs.wait_for(lambda: port_open("127.0.0.1", http), 60, "SuperLink")
        for i in range(3):  # nodes 0 and 1 with a warm runner beside them, node 2 Flower's own
            port = free_port()
            warm = ["--isolation", "process"] if i < 2 else []
            procs.start(f"supernode-{i}", [
                "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{fleet}",
                "--port", str(port), *warm,
                "--node-config", f'partition-id={i} num-partitions=3 role="benign" '
                                 f'data-root="{SHARED_DATA}" cache-dir="{tmp_path / "node_cache"}"'])
            if warm:
                procs.start(f"runner-{i}", ["flbackdoor-clientapp-runner",
                                            "--runtime-api-address", f"127.0.0.1:{port}"])
        res = flbackdoor(small(cache_dir, "federation=remote", f"federation.address=127.0.0.1:{http}",
                               "federation.insecure=true", f"hydra.run.dir={tmp_path / 'run'}"))
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        procs.check_alive()  # the federation outlives the run: it is the user's
    rows = assert_results_contract(tmp_path / "run", 2)
    assert rows[-1]["main_accuracy"] > 0.8
    assert (tmp_path / "node_cache").is_dir(), "nodes built their cache from their own data-root"
    served = [(tmp_path / "logs" / f"runner-{i}.log").read_text().count("task train completed")
              for i in (0, 1)]
    assert served == [2, 2], served  # the warm runners served their nodes' rounds
    assert no_leftovers(tmp_path)
