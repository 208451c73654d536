"""``flbackdoor``: the Hydra entry point. Compose and validate the experiment, build the data
cache, launch the federation, report the result. ``flbackdoor -m a=1,2`` sweeps a grid."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from flbackdoor.config import ConfigError, ExperimentConfig, from_json, validate
from flbackdoor.data.sources import DataNotFoundError
from launcher.federation.processes import ProcessFailed
from launcher.federation.submit import RunFailed
from launcher.sweep import REMOTE_RESULTS_FILE

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
log = logging.getLogger("flbackdoor")

ConfigStore.instance().store(name="schema", node=ExperimentConfig)
# ${case:KEY,{A: x, B: y},DEFAULT}: the value for KEY, else DEFAULT. Lets one preset set a field
# per option of a swept group (experiment=matrix: no attackers in the attack=none column).
OmegaConf.register_new_resolver("case", lambda key, table, default=None: table.get(key, default),
                                replace=True)


def resolve(dcfg: DictConfig) -> ExperimentConfig:
    """The typed experiment, with data paths made absolute (every process has its own cwd).
    With ``resume=<run folder>`` it is that run's own experiment, whatever else was given."""
    cfg: ExperimentConfig = OmegaConf.to_object(dcfg)  # type: ignore[assignment]
    if cfg.resume:
        return resumed(Path(cfg.resume).expanduser().resolve())
    cfg.data.root = str(Path(cfg.data.root).expanduser().resolve())
    cfg.data.cache_dir = str(Path(cfg.data.cache_dir).expanduser().resolve())
    return validate(cfg)


def resumed(folder: Path) -> ExperimentConfig:
    import tomllib

    submitted = folder / "run_config.toml"
    if not submitted.exists() or not (folder / "checkpoint.pt").exists():
        raise ConfigError(f"resume={folder} is not a run folder with run_config.toml and "
                          "checkpoint.pt")
    cfg = from_json(tomllib.loads(submitted.read_text())["experiment"])
    cfg.resume = str(folder)
    return validate(cfg)


def results_folder(cfg: ExperimentConfig, run_dir: Path) -> Path:
    """Where the ServerApp writes this run's results (remote: ``federation.results_dir`` on the
    SuperLink's host, by default this run's own folder path, e.g. on a shared disk)."""
    remote = cfg.federation.mode == "remote" and cfg.federation.results_dir
    return Path(cfg.federation.results_dir) if remote else run_dir


def run(dcfg: DictConfig) -> dict:
    """One experiment: the whole job behind ``flbackdoor``; returns its summary."""
    from flbackdoor.data.cache import prepare
    from launcher.federation import launch
    from flbackdoor.results import read_summary

    cfg = resolve(dcfg)
    run_dir = Path(cfg.resume) if cfg.resume else Path(HydraConfig.get().runtime.output_dir)
    log.info("experiment %s, results in %s", HydraConfig.get().runtime.choices.get("experiment"),
             run_dir)
    if cfg.skip_done:
        from dataclasses import asdict

        from launcher.sweep import finished_run

        defaults = asdict(ExperimentConfig(attack={"name": cfg.attack.name},
                                           defense={"name": cfg.defense.name}))
        if (done := finished_run(run_dir, asdict(cfg), defaults)) is not None:
            log.info("skip_done: %s already holds this experiment's finished run", run_dir)
            return done
    if cfg.federation.mode != "remote":  # remote data lives on the SuperLink's host
        cache = prepare(cfg)  # fails here, before any process starts, if the data is missing
        log.info("data cache: %s", cache)
    if cfg.federation.mode == "centralized":  # one model in this process, no Flower
        from launcher.centralized import run_centralized

        run_id, summary = "centralized", run_centralized(cfg, run_dir)
    else:
        run_id = launch(cfg, run_dir)
        where = results_folder(cfg, run_dir)
        summary = read_summary(where)
        if where != run_dir:  # for this job's sweep row: where the ServerApp wrote
            (run_dir / REMOTE_RESULTS_FILE).write_text(f"{where}\n")
        if not summary and cfg.federation.mode == "remote":
            log.info("run %s done; its results are on the SuperLink's host in %s (not "
                     "readable from here)", run_id, where)
    if summary:
        log.info("run %s done: final main_accuracy=%.4f after %d rounds, %.1fs", run_id,
                 summary["final"]["main_accuracy"], summary["rounds"], summary["wall_time_s"])
    return summary


class JobFailed(Exception):
    """One job of a multirun failed: Hydra records it and goes on with the next job (an exit
    would end the whole sweep); ``sweep_summary.csv`` gets its line, and the command exits 1
    after the last job."""


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_main(dcfg: DictConfig) -> float | None:
    from hydra.types import RunMode

    try:
        summary = run(dcfg)
    except (ConfigError, DataNotFoundError, RunFailed, ProcessFailed) as err:
        bad_config = isinstance(err, (ConfigError, DataNotFoundError))
        line = f"{'error' if bad_config else 'run failed'}: {err}"
        folder = Path(dcfg.get("resume") or HydraConfig.get().runtime.output_dir)
        if not bad_config and (folder / "checkpoint.pt").exists():
            line += f"; `flbackdoor resume={folder}` continues it"
        print(f"flbackdoor: {line}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise JobFailed(line) from None
        sys.exit(2 if bad_config else 1)
    return summary.get("final", {}).get("main_accuracy")


def _terminate(signum: int, frame: object) -> None:
    # SIGTERM (a job scheduler, `kill`) and SIGHUP (the terminal or SSH session closed) unwind
    # like Ctrl-C: every started process is stopped, and the exit code is 128 + the signal.
    raise SystemExit(128 + signum)


def unknown_option(argv: list[str]) -> str | None:
    """The first ``<group>=<name>`` (or sweep of names) on the command line naming no
    registered option, as one line listing the registered ones; None if all are known.
    Hydra would also refuse a name with no YAML, over several lines; a YAML with no module
    would only fail later, in validation."""
    from flbackdoor import registries

    groups = {"defense": registries.DEFENSES, "attack": registries.ATTACKS,
              "attack.task": registries.TASKS, "model": registries.MODELS,
              "dataset": registries.DATASETS, "partition": registries.PARTITIONERS}
    for arg in argv:
        key, _, value = arg.lstrip("+~").partition("=")
        if key in groups and value and "(" not in value:  # not a sweep function: glob(*)
            for name in value.split(","):
                if name not in groups[key]:
                    return (f"{key}={name!r} is not registered; registered: "
                            f"{', '.join(groups[key].names())}")
    return None


def main() -> None:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN:  # `nohup flbackdoor ...` stays immune
            signal.signal(sig, _terminate)
    problem = unknown_option(sys.argv[1:])
    if problem:
        print(f"flbackdoor: error: {problem}", file=sys.stderr)
        sys.exit(2)
    _hydra_main()


if __name__ == "__main__":
    main()
