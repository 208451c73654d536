"""``pip install .`` (not only ``-e``): the wheel carries every package, the Hydra configs and
the Flower App's manifest; installed into an environment of its own, run from a folder that is
not the checkout, it composes its configs and runs an experiment (local deployment: real
SuperLink/SuperNode processes) from the installed code alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, data_args, project_copy, requires_shared_data

PACKAGES = ("flbackdoor", "server", "client", "attacker", "defenses", "launcher", "supernode",
            "hydra_plugins/flbackdoor_ray_launcher")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    source = project_copy(tmp_path_factory.mktemp("source"))  # the build leaves build/ behind
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(out), str(source)], check=True,
                   timeout=300)
    (path,) = out.glob("flbackdoor-*.whl")
    return path


def test_the_wheel_carries_the_code_the_configs_and_the_app_manifest(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    yamls = {str(p.relative_to(REPO)) for p in (REPO / "conf").rglob("*.yaml")}
    assert yamls and yamls <= names, sorted(yamls - names)
    assert {f"{p}/__init__.py" for p in PACKAGES} <= names
    manifest = [n for n in names if n.endswith(".data/data/share/flbackdoor/pyproject.toml")]
    assert len(manifest) == 1
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/"))]


@pytest.mark.e2e
@requires_shared_data
def test_an_installed_flbackdoor_runs_an_experiment_outside_the_checkout(wheel, tmp_path,
                                                                         cache_dir):
    # A fresh environment with the wheel installed by pip; the heavy dependencies (torch,
    # flwr) are borrowed from this one through a .pth line instead of downloaded again.
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True).stdout.strip())
    (site / "borrowed.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", str(wheel)], check=True, timeout=300)
    work = tmp_path / "elsewhere"
    work.mkdir()
    found = subprocess.run([python, "-c", "import launcher, server; print(launcher.__file__); "
                            "print(server.__file__)"], cwd=work, capture_output=True, text=True,
                           check=True).stdout.split()
    assert all(f.startswith(str(site)) for f in found), found
    launchers = subprocess.run(  # hydra/launcher=ray: Hydra finds the installed plugin
        [python, "-c", "from hydra.core.plugins import Plugins; from hydra.plugins.launcher "
         "import Launcher; print([c.__module__ for c in Plugins.instance().discover(Launcher)])"],
        cwd=work, capture_output=True, text=True, check=True).stdout
    assert "hydra_plugins.flbackdoor_ray_launcher.ray_launcher" in launchers, launchers
    # Flower's own executables (flower-superlink, flower-supernode, flwr) come from PATH.
    env = {**os.environ, "PATH": f"{env_dir / 'bin'}{os.pathsep}{Path(sys.executable).parent}"
                                 f"{os.pathsep}{os.environ['PATH']}"}
    run = tmp_path / "run"
    res = subprocess.run(
        [env_dir / "bin" / "flbackdoor", *data_args(cache_dir), "num_clients=2",
         "clients_per_round=2", "num_rounds=1", "dataset.max_train_samples=1000",
         "server.eval_max_samples=500", f"hydra.run.dir={run}"],
        cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rounds"] == 1 and summary["final"]["main_accuracy"] > 0.3
    # The app the SuperNodes ran was made from the installed packages, not from the checkout.
    assert (run / "flower_app" / "pyproject.toml").read_text() == (
        REPO / "pyproject.toml").read_text()
    assert (run / "flower_app" / "server" / "rounds.py").exists()
