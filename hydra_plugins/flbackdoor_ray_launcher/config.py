"""``hydra/launcher=ray``'s options (Hydra's plugin layout: the config beside the launcher,
registered when Hydra scans ``hydra_plugins``)."""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore


@dataclass
class RayLauncherConf:
    _target_: str = "hydra_plugins.flbackdoor_ray_launcher.ray_launcher.RayLauncher"
    # The cluster: "auto" (the one this machine has joined), HEAD:PORT, or "" for a Ray of
    # this process's own on this machine
    address: str = "auto"
    num_cpus: float = 1.0  # reserved by each job: a simulation job's Ray takes federation.num_cpus
    num_gpus: float = 0.0


ConfigStore.instance().store(group="hydra/launcher", name="ray", node=RayLauncherConf,
                             provider="flbackdoor")
