"""Submit the Flower App with ``flwr run``, stream its logs, and learn how the run ended.

``flwr run --stream`` exits 0 even when the ServerApp crashed, so the verdict comes from
``flwr ls --run-id <id> --format json``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable
from pathlib import Path

import tomli_w

from flbackdoor.config import ExperimentConfig, to_json
from launcher.federation.commands import FLOWER_ENV
from launcher.federation.processes import ProcessFailed, ProcessGroup, die_with_parent

# The checkout (its pyproject.toml holds [tool.flwr.app]), or site-packages after `pip install .`.
SOURCE_DIR = Path(__file__).resolve().parents[2]
APP_PACKAGES = ("server", "client", "attacker", "defenses", "flbackdoor")  # fab-include's
CONNECTION = "flbackdoor"


class RunFailed(RuntimeError):
    """The Flower run did not finish successfully."""


def installed_manifests() -> list[Path]:
    """Where ``pip install .`` puts the project's pyproject.toml (its data-files), for this
    environment and for a ``--user`` install."""
    schemes = [sysconfig.get_path("data"), sysconfig.get_path("data", f"{os.name}_user")]
    return [Path(p) / "share" / "flbackdoor" / "pyproject.toml" for p in schemes]


def flower_app_dir(run_dir: Path) -> Path:
    """The folder ``flwr run`` builds the Flower App (FAB) from, ``<run>/flower_app``: the
    manifest (the checkout's pyproject.toml, or the one ``pip install .`` put in
    ``<prefix>/share/flbackdoor``) beside copies of the app packages. Never the checkout itself:
    ``flwr build`` walks every file under its folder before filtering, and a checkout's
    ``.venv`` (50,000 files) made that 5.6 s against 1.3 s here, for the same FAB (same
    hash)."""
    manifest = next((m for m in [SOURCE_DIR / "pyproject.toml", *installed_manifests()]
                     if m.exists()), None)
    if manifest is None:
        raise RunFailed(f"no Flower App manifest: neither {SOURCE_DIR / 'pyproject.toml'} nor "
                        f"{' or '.join(map(str, installed_manifests()))}; reinstall flbackdoor")
    app = run_dir / "flower_app"
    shutil.rmtree(app, ignore_errors=True)
    app.mkdir(parents=True)
    shutil.copy(manifest, app / "pyproject.toml")
    for package in APP_PACKAGES:
        shutil.copytree(SOURCE_DIR / package, app / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return app


def flwr_bin(name: str) -> str:
    """A Flower executable from the same environment as this Python."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def write_flwr_home(run_dir: Path, address: str, insecure: bool = True,
                    root_certificates: str = "") -> Path:
    """A private FLWR_HOME with one SuperLink connection, so nothing touches ~/.flwr."""
    home = run_dir / "flwr_home"
    home.mkdir(parents=True, exist_ok=True)
    conn: dict = {"address": address, "insecure": insecure}
    if root_certificates:
        conn["root-certificates"] = str(Path(root_certificates).resolve())
    config = {"superlink": {"default": CONNECTION, CONNECTION: conn}}
    (home / "config.toml").write_text(tomli_w.dumps(config))
    return home


def write_run_config(cfg: ExperimentConfig, run_dir: Path, output_dir: Path) -> Path:
    path = run_dir / "run_config.toml"
    path.write_text(tomli_w.dumps({"experiment": to_json(cfg), "output-dir": str(output_dir)}))
    return path


def flwr_env(flwr_home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    # Flower starts its own helpers (flower-superexec, flwr-clientapp) by name from PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(FLOWER_ENV, FLWR_HOME=str(flwr_home))
    env.update(extra or {})
    return env


def submit(
    run_dir: Path,
    run_config: Path,
    env: dict[str, str],
    procs: ProcessGroup | None = None,
    federation_config: str | None = None,
    prefix_cmd: list[str] | None = None,
    app_dir: str | Path | None = None,
    started: Callable[[], None] | None = None,
) -> int:
    """``flwr run`` the app, echo its log stream, and raise :class:`RunFailed` unless it
    finished; a federation process dying meanwhile ends the run too. ``prefix_cmd``: run
    ``flwr`` through it (``docker exec <container>``; then ``run_config`` and ``app_dir`` are
    paths in that container). ``started``: called once ``flwr run`` is under way, for the
    launcher's last readiness waits; what it raises ends the submission."""
    app_dir = app_dir or flower_app_dir(run_dir)
    cmd = [*_flwr(prefix_cmd), "run", str(app_dir), CONNECTION, "--run-config", str(run_config),
           "--stream"]
    if federation_config:
        cmd += ["--federation-config", federation_config]
    log_path = run_dir / "run.log"
    run_id: int | None = None
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env, stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=die_with_parent(signal.SIGTERM))
        watchdog_error: list[Exception] = []
        done = threading.Event()

        def watch() -> None:  # a dead SuperLink would leave the stream hanging forever
            while not done.wait(1.0):
                try:
                    if procs:
                        procs.check_alive()
                except ProcessFailed as err:
                    watchdog_error.append(err)
                    proc.terminate()
                    return

        threading.Thread(target=watch, daemon=True).start()
        try:
            if started is not None:
                started()
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                log.flush()
                sys.stdout.write(line)
                sys.stdout.flush()
                if run_id is None and (m := re.search(r"Successfully started run (\d+)", line)):
                    run_id = int(m.group(1))
            proc.wait()
        finally:
            done.set()
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
    if watchdog_error:
        raise RunFailed(str(watchdog_error[0]))
    if run_id is None:
        raise RunFailed(f"flwr run did not start a run (exit {proc.returncode}); see {log_path}")
    status = wait_for_end(run_id, env, procs, prefix_cmd=prefix_cmd)
    if status != "finished:completed":
        if procs is not None:  # a dead SuperLink is the cause to name, not the status it hid
            try:
                procs.check_alive()
            except ProcessFailed as err:
                raise RunFailed(str(err)) from err
        raise RunFailed(f"run {run_id} ended with status {status!r}; see {log_path}")
    return run_id


def _flwr(prefix_cmd: list[str] | None) -> list[str]:
    return [*prefix_cmd, "flwr"] if prefix_cmd else [flwr_bin("flwr")]


def wait_for_end(run_id: int, env: dict[str, str], procs: ProcessGroup | None,
                 poll: float = 2.0, prefix_cmd: list[str] | None = None) -> str:
    """The run's final status. The log stream can end before the run does (its client was
    killed, the connection dropped): then poll the SuperLink until the run is over."""
    while True:
        status = run_status(run_id, env, prefix_cmd)
        if status.startswith("finished") or status.startswith("unknown"):
            return status
        if procs is not None:
            procs.check_alive()
        time.sleep(poll)


def run_status(run_id: int, env: dict[str, str], prefix_cmd: list[str] | None = None) -> str:
    out = subprocess.run(
        [*_flwr(prefix_cmd), "ls", CONNECTION, "--run-id", str(run_id), "--format", "json"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    try:
        runs = json.loads(out.stdout)["runs"]
        return str(runs[0]["status"])
    except (ValueError, KeyError, IndexError):
        return f"unknown ({out.stdout.strip() or out.stderr.strip()})"
