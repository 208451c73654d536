"""The Simulation Engine on a Ray cluster (``federation.ray_address``): a local two-node cluster
(``ray start --head`` with no CPUs of its own, plus a second node with 2 CPUs) and a simulation
that joins it. The ClientApp actors can only run on the second node, and Ray's global state says
they did: the virtual clients ran in the cluster's workers, not in a private local Ray."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import data_args, flbackdoor, requires_shared_data, sweep_summary
from launcher.federation.processes import descendants, free_port

pytestmark = [requires_shared_data, pytest.mark.e2e]

RAY = str(Path(sys.executable).parent / "ray")

# What a test reads from the cluster: every node's CPUs and every ClientAppActor's node.
CLUSTER_STATE = """
import json, sys, ray
from ray._private import state
ray.init(address=sys.argv[1], logging_level="ERROR")
nodes = {n["NodeID"]: n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]}
actors = [a["Address"]["NodeID"] for a in state.actors().values()
          if a["ActorClassName"] == "ClientAppActor"]
print(json.dumps({"nodes": nodes, "actors": actors}))
"""


def cluster_state(address: str) -> dict:
    """``CLUSTER_STATE``'s answer for the cluster at ``address``."""
    out = subprocess.run([sys.executable, "-c", CLUSTER_STATE, address], capture_output=True,
                         text=True, check=True, timeout=120).stdout
    return json.loads(out.splitlines()[-1])


def _kill_cluster(temp_dir: str) -> None:
    """Only this test's cluster: the processes whose command line names its temp dir, and
    everything below them (``ray stop`` would stop every Ray on the machine)."""
    roots = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if temp_dir.encode() in cmdline.read_bytes():
                roots.append(int(cmdline.parent.name))
        except OSError:
            continue
    for pid in [*descendants(roots), *roots]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def ray_cluster():
    temp_dir = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray's socket paths
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        subprocess.run([RAY, "start", "--head", f"--port={port}", "--num-cpus=0",
                        "--include-dashboard=false", f"--temp-dir={temp_dir}"],
                       check=True, capture_output=True, env=env, timeout=180)
        subprocess.run([RAY, "start", f"--address=127.0.0.1:{port}", "--num-cpus=2"],
                       check=True, capture_output=True, env=env, timeout=180)
        yield f"127.0.0.1:{port}"
    finally:
        _kill_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_the_virtual_clients_run_in_the_clusters_workers(tmp_path, cache_dir, ray_cluster):
    before = cluster_state(ray_cluster)
    assert sorted(before["nodes"].values()) == [0, 2] and before["actors"] == []
    res = flbackdoor(["federation=simulation", f"federation.ray_address={ray_cluster}",
                      *data_args(cache_dir), "num_clients=2", "clients_per_round=2",
                      "num_rounds=1", "dataset.max_train_samples=1000",
                      "server.eval_max_samples=500", f"hydra.run.dir={tmp_path}"])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert json.loads((tmp_path / "summary.json").read_text())["rounds"] == 1
    after = cluster_state(ray_cluster)
    worker = next(n for n, cpus in after["nodes"].items() if cpus == 2)
    assert after["actors"] and set(after["actors"]) == {worker}, after


def test_a_sweep_runs_its_jobs_as_tasks_on_the_cluster(tmp_path, cache_dir, ray_cluster):
    """``hydra/launcher=ray``: each job of the sweep is a Ray task; the head has no CPUs, so
    both can only run on the second node, side by side (2 CPUs, 1 a job)."""
    import re

    sweep = tmp_path / "sweep"
    res = flbackdoor(["-m", "hydra/launcher=ray", f"hydra.launcher.address={ray_cluster}",
                      "federation=simulation", "federation.num_cpus=1", *data_args(cache_dir),
                      "num_clients=2", "clients_per_round=2", "num_rounds=1",
                      "dataset.max_train_samples=1000", "server.eval_max_samples=500",
                      "seed=0,1", f"hydra.sweep.dir={sweep}"])
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    done = sweep_summary(sweep)
    assert len(done) == 2 and all(r["status"] == "done" for r in done), done
    state = cluster_state(ray_cluster)
    worker = next(n for n, cpus in state["nodes"].items() if cpus == 2)
    ran_on = re.findall(r"#(\d) ran on Ray node (\w+): COMPLETED", out)
    assert sorted(ran_on) == [("0", worker), ("1", worker)], out[-4000:]
