"""Sweeps on the maintained Hydra launchers: ``hydra/launcher=joblib`` runs jobs in parallel on
this machine (each its own federation on free ports), ``hydra/launcher=submitit_local`` runs
them through submitit, the same path as ``submitit_slurm`` on a SLURM cluster. Both record every
job in ``sweep_summary.csv`` as the basic launcher does."""

from __future__ import annotations

import os

import pytest

from conftest import data_args, flbackdoor, requires_shared_data, sweep_summary

pytestmark = [requires_shared_data, pytest.mark.e2e]


def tiny(cache_dir, sweep_dir, *extra):
    return ["-m", "federation=simulation", *data_args(cache_dir), "num_clients=2",
            "clients_per_round=2", "num_rounds=1", "dataset.max_train_samples=1000",
            "server.eval_max_samples=500", "seed=0,1", f"hydra.sweep.dir={sweep_dir}", *extra]


def test_joblib_runs_the_jobs_side_by_side(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    res = flbackdoor(tiny(cache_dir, sweep, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                          "federation.num_cpus=1"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    done = sweep_summary(sweep)
    assert sorted(o for r in done for o in r["overrides"].split() if o.startswith("seed=")) == [
        "seed=0", "seed=1"]
    assert all(r["status"] == "done" and float(r["final_main_accuracy"]) > 0.3 for r in done)
    # Side by side: each job started before the other one finished.
    spans = [(os.path.getmtime(sweep / j / ".hydra" / "config.yaml"),
              os.path.getmtime(sweep / j / "summary.json")) for j in ("0", "1")]
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1], spans
    assert "Joblib" in res.stdout + res.stderr


def test_submitit_local_runs_the_slurm_path_on_this_machine(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    res = flbackdoor(tiny(cache_dir, sweep, "hydra/launcher=submitit_local",
                          "hydra.launcher.timeout_min=20"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    done = sweep_summary(sweep)
    assert len(done) == 2 and all(r["status"] == "done" for r in done), done
    # submitit's own records of the two jobs: its log folder with each job's stdout.
    assert len(list(sweep.glob(".submitit/*/*_log.out"))) == 2
