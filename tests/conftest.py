"""Shared fixtures: the real data beside the repo, and helpers to run ``flbackdoor`` for real."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


def compose(*overrides: str):
    """The Hydra config ``flbackdoor`` would compose from these overrides."""
    from hydra import compose as hydra_compose, initialize_config_dir

    from launcher.cli import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def resolved(*overrides: str, data_root: str | None = None):
    """The typed, validated experiment of these overrides, as ``flbackdoor`` resolves it."""
    from launcher.cli import resolve

    extra = [f"data.root={data_root}"] if data_root else []
    return resolve(compose(*overrides, *extra))


def attack_config(**fields):
    """One attack option's typed config, as Hydra's ``attack=<name>`` plus overrides would
    give it (the name defaults to ``none``)."""
    from flbackdoor.registries import ATTACKS
    from flbackdoor.registry import option_config

    return option_config(ATTACKS, {"name": "none", **fields})


def _has_mnist() -> bool:
    return (SHARED_DATA / "MNIST" / "raw" / "train-images-idx3-ubyte").exists()


requires_shared_data = pytest.mark.skipif(
    not _has_mnist(), reason=f"real data not found at {SHARED_DATA} (CI always has it)")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One partition cache for the whole session, like a user's ``.cache/flbackdoor``."""
    return tmp_path_factory.mktemp("cache")


def data_args(cache_dir: Path) -> list[str]:
    """The overrides every end-to-end run starts with: the real data, the session's cache."""
    return [f"data.root={SHARED_DATA}", f"data.cache_dir={cache_dir}"]


def flbackdoor(args: list[str], timeout: float = 600, env: dict | None = None,
               **popen) -> subprocess.CompletedProcess:
    """Run the real ``flbackdoor`` command (Hydra app) in a fresh Python process."""
    return subprocess.run(
        [sys.executable, "-m", "launcher.cli", *args], cwd=REPO, capture_output=True, text=True,
        timeout=timeout, env={**os.environ, **(env or {})}, **popen)


def sweep_summary(sweep_dir: Path) -> list[dict]:
    """The rows of a sweep's ``sweep_summary.csv``, as the jobs' callbacks wrote them."""
    import csv

    with (sweep_dir / "sweep_summary.csv").open() as f:
        return list(csv.DictReader(f))


def node_log(run_dir: Path, partition: int) -> str:
    """What a local deployment's node ``partition`` logged: its SuperNode's log, then its warm
    ClientApp runner's (where the ClientApp's own lines go; with Flower's process per message
    they are in the SuperNode's log)."""
    logs = run_dir / "logs"
    runner = logs / f"clientapps-{partition}.log"
    return (logs / f"supernode-{partition}.log").read_text() + (
        runner.read_text() if runner.exists() else "")


def clientapp_runners(under: Path) -> list[int]:
    """The live warm ClientApp runners whose FLWR_HOME lies under ``under``."""
    return sorted(flower_processes(under, ("flbackdoor-clientapp-runner",)))


FLOWER_PROCESSES = ("flower-superlink", "flower-supernode", "flower-superexec", "flwr-serverapp",
                    "flwr-clientapp", "flbackdoor-clientapp-runner", "flbackdoor-supernode",
                    "flwr-simulation", "ray::", "raylet", "gcs_server")


def flower_processes(run_dir: Path | None = None,
                     names: tuple[str, ...] = FLOWER_PROCESSES) -> set[int]:
    """Live (non-zombie) Flower processes: the ones a run must not leave behind. With
    ``run_dir``, only those of that run (their FLWR_HOME lies under it), so runs elsewhere on
    the machine do not count."""
    found = set()
    marker = f"FLWR_HOME={run_dir}".encode() if run_dir is not None else None
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if marker is not None and marker not in (proc / "environ").read_bytes():
                continue
        except OSError:
            continue
        if state != "Z" and any(n in cmd for n in names):
            found.add(int(proc.name))
    return found


@pytest.fixture
def run_identity(monkeypatch):
    """Messages need the run identity a ServerApp process gets from its SuperLink."""
    from flwr.supercore.task_identity import TaskIdentity
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


class FakeGrid:
    """Answers each pushed train message with ``respond(node_id, message)``, or never (None)."""

    def __init__(self, node_ids, respond):
        self.node_ids, self.respond = list(node_ids), respond
        self.replies, self.sent = [], []

    def get_node_ids(self):
        return list(self.node_ids)

    def push_messages(self, messages):
        ids = []
        for i, msg in enumerate(messages):
            mid = f"m{len(self.sent)}"
            msg.metadata.__dict__["_message_id"] = mid
            self.sent.append(msg)
            content = self.respond(msg.metadata.dst_node_id, msg)
            if content is not None:
                from flwr.app import Message

                reply = Message(content, reply_to=msg)
                reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
                self.replies.append(reply)
            ids.append(mid)
        return ids

    def pull_messages(self, ids):
        out = [r for r in self.replies if r.metadata.reply_to_message_id in ids]
        self.replies = [r for r in self.replies if r not in out]
        return out


def project_copy(dest: Path) -> Path:
    """The checkout's tracked and untracked-but-not-ignored files, copied to ``dest``."""
    import shutil

    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


@pytest.fixture
def one_thread():
    """Tiny models: threads only add contention on a shared machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
