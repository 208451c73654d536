"""``hydra/launcher=ray``: the jobs of a Hydra sweep as tasks on a Ray cluster.

``hydra-ray-launcher`` (1.2.2, its last release) cannot be installed beside flwr 1.39: it pins
``cloudpickle==2.2.1`` where joblib 1.6 needs 3 or later, and its dependencies pull
``packaging>=26`` where flwr needs less (README, Sweeps). This is the same launcher on Ray's
own task API, which flwr's simulation extra installs: Hydra's ``Launcher`` interface
(``hydra/plugins/launcher.py``), and per job one Ray task that reserves ``num_cpus`` and
``num_gpus`` of the cluster and runs Hydra's ``run_job`` there, as Hydra's joblib launcher does
in its worker processes. A job's callbacks (``sweep_summary.csv``) run where the job runs.

Every host of the cluster needs the same code, data root and ``data.cache_dir`` at the same
paths, and the sweep folder on a disk they share: a job starts in the launching process's
working directory and writes its run folder there.

    flbackdoor -m hydra/launcher=ray hydra.launcher.address=HEAD:6379 seed=0,1,2 ...
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


def run_one(cwd: str, idx: int, overrides: Sequence[str], hydra_context: HydraContext,
            config: DictConfig, task_function: TaskFunction,
            singleton_state: dict[Any, Any]) -> tuple[JobReturn, str]:
    """One job, in a Ray worker: the launching process's working directory and Hydra state,
    then Hydra's own ``run_job``; returns its result and the Ray node it ran on."""
    import ray

    os.chdir(cwd)
    setup_globals()
    Singleton.set_state(singleton_state)
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
        sweep_config.hydra.job.num = idx
    HydraConfig.instance().set_config(sweep_config)
    ret = run_job(hydra_context=hydra_context, task_function=task_function, config=sweep_config,
                  job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    return ret, ray.get_runtime_context().get_node_id()


class RayLauncher(Launcher):
    def __init__(self, address: str = "auto", num_cpus: float = 1.0,
                 num_gpus: float = 0.0) -> None:
        if num_cpus < 0 or num_gpus < 0:
            raise ValueError(f"hydra.launcher: num_cpus={num_cpus} and num_gpus={num_gpus} "
                             "must not be negative")
        self.address, self.num_cpus, self.num_gpus = address, num_cpus, num_gpus
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config, self.task_function = config, task_function
        self.hydra_context = hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        import ray

        assert self.config is not None and self.hydra_context is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if not ray.is_initialized():
            ray.init(address=self.address or None, logging_level=logging.WARNING,
                     log_to_driver=True)
        log.info("Ray (%s) is launching %d jobs, %s CPUs and %s GPUs each; sweep output dir: %s",
                 self.address or "this machine", len(job_overrides), self.num_cpus,
                 self.num_gpus, sweep_dir)
        for idx, overrides in enumerate(job_overrides):
            log.info("\t#%d : %s", initial_job_idx + idx, " ".join(filter_overrides(overrides)))
        job = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=0)(run_one)
        state = Singleton.get_state()
        done = ray.get([job.remote(os.getcwd(), initial_job_idx + idx, list(overrides),
                                   self.hydra_context, self.config, self.task_function, state)
                        for idx, overrides in enumerate(job_overrides)])
        for idx, (ret, node) in enumerate(done):
            log.info("\t#%d ran on Ray node %s: %s", initial_job_idx + idx, node, ret.status.name)
        return [ret for ret, _ in done]
