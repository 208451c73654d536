"""The experiment's typed schema, its validation, and its trip through Flower's run config.

The schema is registered with Hydra (``schema`` in ``conf/config.yaml``), so Hydra type-checks
every YAML file and override against it; the YAML groups in ``conf/`` hold the values. The
ServerApp and ClientApps receive the resolved config as one JSON string and rebuild the same
dataclasses with :func:`from_dict`, without importing Hydra.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATASETS = ("mnist", "fashion_mnist", "cifar10", "femnist")
MODELS = ("sun_emnist_cnn", "wu_mnist_cnn", "wu_fmnist_cnn", "wu_cifar_cnn")
PARTITIONS = ("iid", "natural", "k_label", "dirichlet")
FEDERATIONS = ("local", "simulation", "remote")
DEVICES = ("auto", "cpu", "cuda")
ATTACKS = ("none", "boosted", "norm_bounded", "data_poisoning", "malformed")
MALFORMED = ("cycle", "nan", "inf", "wrong_shape", "wrong_dtype", "missing_array",
             "absurd_examples", "oversized")
TASKS = ("semantic", "pixel_pattern", "dba")
SCHEDULES = ("none", "fixed_frequency", "random")
DEFENSES = ("none", "norm_clipping", "weak_dp", "krum", "multikrum", "bulyan", "fedmedian",
            "fedtrimmedavg", "flower_dp_fixed")


class ConfigError(ValueError):
    """An experiment config that cannot run; the message is one line naming the key."""


@dataclass
class DataConfig:
    root: str = "data"  # torchvision layout (MNIST/raw, ...) and femnist/*.parquet
    cache_dir: str = ".cache/flbackdoor"  # memory-mapped partition caches, written once
    download: bool = True  # torchvision download when files are missing (needs a network)


@dataclass
class DatasetConfig:
    name: str = "mnist"
    num_classes: int = 10
    channels: int = 1
    image_size: int = 28
    mean: list[float] = field(default_factory=lambda: [0.1307])
    std: list[float] = field(default_factory=lambda: [0.3081])
    # FEMNIST ships dark ink on white (LEAF); inverting makes it look like MNIST to the model.
    invert: bool = False
    # FEMNIST only: a Hugging Face hub id, or a folder of parquet shards with the same schema.
    source: str = ""
    digits_only: bool = True
    test_fraction: float = 0.1  # per-writer held-out share (FEMNIST has one split)
    max_train_samples: int = 0  # >0: a seeded subset of the training set (quick runs, tests)


@dataclass
class ModelConfig:
    name: str = "wu_mnist_cnn"
    conv_channels: list[int] = field(default_factory=lambda: [20, 50])
    hidden: list[int] = field(default_factory=lambda: [500])
    dropout: list[float] = field(default_factory=list)


@dataclass
class PartitionConfig:
    name: str = "iid"
    labels_per_client: int = 3  # k_label
    alpha: float = 0.5  # dirichlet
    min_partition_size: int = 10  # dirichlet
    natural_key: str = "writer_id"  # natural


@dataclass
class ClientConfig:
    epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    # Threads per client process: 1 keeps N client processes on a few cores from thrashing.
    num_threads: int = 1


@dataclass
class ServerConfig:
    lr: float = 1.0  # eta in w_{t+1} = w_t + eta * sum(n_k * delta_k) / sum(n_k)
    round_timeout_s: float = 600.0
    min_replies: int = 1  # a round with fewer replies keeps the previous model
    poll_interval_s: float = 0.1
    eval_batch_size: int = 1000
    eval_max_samples: int = 0  # 0: the whole held-out test set
    identify_timeout_s: float = 300.0
    max_examples: int = 1_000_000  # a reply's num-examples must be in [1, max_examples]
    max_update_bytes: int = 200_000_000  # a reply's arrays may not be larger
    checkpoint_every: int = 1  # write <run>/checkpoint.pt every N rounds (resume point)


@dataclass
class FederationConfig:
    mode: str = "local"
    host: str = "127.0.0.1"  # local: address every local process binds to
    startup_timeout_s: float = 120.0
    max_local_nodes: int = 64  # local starts one OS process per client
    superexec_poll_interval_s: float = 0.2  # FLWR_SUPEREXEC_TASK_POLL_INTERVAL (default 1 s)
    client_num_cpus: int = 1  # simulation: Ray CPUs per virtual client (Flower takes whole CPUs)
    client_num_gpus: float = 0.0
    ray_address: str = ""  # simulation: join an existing Ray cluster ("auto" or host:port)
    address: str = ""  # remote: the SuperLink's Control API, host:port
    insecure: bool = True  # remote: plaintext (loopback or a trusted network only)
    root_certificates: str = ""  # remote: CA bundle for TLS
    results_dir: str = ""  # remote: results folder on the SuperLink host ("" = this run's path)


@dataclass
class AttackConfig:
    """A malicious node's update crafting (Sun et al. section 3) and its backdoor task."""

    name: str = "none"  # none | boosted | norm_bounded | data_poisoning
    task: str = "semantic"  # semantic | pixel_pattern | dba
    num_malicious: int = 0  # malicious partitions (epsilon * K)
    schedule: str = "none"  # none | fixed_frequency | random: how the server samples them
    frequency: int = 1  # fixed_frequency: one attacker in rounds with round % f == f // 2
    # 0: beta = sum_{k in S_t} n_k / (eta * n_attacker), split among the round's attackers;
    # > 0: a fixed amplification alpha per attacker (Wu et al.).
    boost_factor: float = 0.0
    norm_bound: float = 10.0  # norm_bounded: the boosted update's L2 norm is at most this M
    project_every: str = "epoch"  # norm_bounded: project after each "epoch" or "step"
    epochs: int = 0  # attacker's local epochs (0: client.epochs)
    source_label: int = 7  # semantic: the target writers' digit; triggers: the victim label
    target_label: int = 1
    num_backdoor_tasks: int = 30  # semantic: target writers
    pattern_pixels: int = 9  # pixel_pattern: 1, 3, 5, 7 or 9
    dba_parts: int = 4  # dba: parts of the global pattern
    aux_samples: int = 200  # triggers: victim images drawn when the attacker holds none
    aux_train_samples: int = 0  # D_trn: true-distribution images the attacker holds besides its own
    malformed_kind: str = "cycle"  # malformed: what to break (cycle: a different kind a round)
    oversized_bytes: int = 250_000_000  # malformed "oversized": padding added to the update


@dataclass
class DefenseConfig:
    """Server-side aggregation defense (Sun et al. section 4, and Flower's robust strategies)."""

    name: str = "none"
    norm_bound: float = 3.0  # M for norm_clipping, weak_dp and flower_dp_fixed
    noise_std: float = 0.0  # weak_dp: sigma of the noise added to the sum of clipped updates
    noise_multiplier: float = 0.0  # flower_dp_fixed: z, noise std z * M / m
    num_malicious: int = 0  # krum, multikrum, bulyan: f
    num_nodes_to_select: int = 1  # multikrum
    trim_fraction: float = 0.2  # fedtrimmedavg: beta


@dataclass
class ExperimentConfig:
    seed: int = 0
    num_rounds: int = 5
    num_clients: int = 10  # K
    clients_per_round: int = 10  # C*K
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    defense: DefenseConfig = field(default_factory=DefenseConfig)
    # Clean rounds before the experiment (attack) starts, from a checkpoint cached in
    # data.cache_dir and reused by every run with the same clean setting.
    pretrain_rounds: int = 0
    checkpoint: str = ""  # start from this saved model instead (a checkpoint.pt of a run)
    resume: str = ""  # a run folder: continue it from its last checkpointed round


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    _check(value in allowed, f"{key}={value!r} is not one of {', '.join(allowed)}")


def validate(cfg: ExperimentConfig) -> ExperimentConfig:
    """Raise :class:`ConfigError` on the first value that cannot run; return ``cfg``."""
    _one_of("dataset.name", cfg.dataset.name, DATASETS)
    _one_of("model.name", cfg.model.name, MODELS)
    _one_of("partition.name", cfg.partition.name, PARTITIONS)
    _one_of("federation.mode", cfg.federation.mode, FEDERATIONS)
    _one_of("device", cfg.device, DEVICES)
    _check(cfg.num_rounds >= 1, f"num_rounds={cfg.num_rounds} must be at least 1")
    _check(cfg.num_clients >= 1, f"num_clients={cfg.num_clients} must be at least 1")
    _check(
        1 <= cfg.clients_per_round <= cfg.num_clients,
        f"clients_per_round={cfg.clients_per_round} must be between 1 and "
        f"num_clients={cfg.num_clients}",
    )
    c = cfg.client
    _check(c.lr > 0, f"client.lr={c.lr} must be positive")
    _check(c.epochs >= 1, f"client.epochs={c.epochs} must be at least 1")
    _check(c.batch_size >= 1, f"client.batch_size={c.batch_size} must be at least 1")
    _check(0 <= c.momentum < 1, f"client.momentum={c.momentum} must be in [0, 1)")
    _check(c.weight_decay >= 0, f"client.weight_decay={c.weight_decay} must be >= 0")
    _check(c.num_threads >= 1, f"client.num_threads={c.num_threads} must be at least 1")
    s = cfg.server
    _check(s.lr > 0, f"server.lr={s.lr} must be positive")
    _check(s.round_timeout_s > 0, f"server.round_timeout_s={s.round_timeout_s} must be positive")
    _check(
        1 <= s.min_replies <= cfg.clients_per_round,
        f"server.min_replies={s.min_replies} must be between 1 and "
        f"clients_per_round={cfg.clients_per_round}",
    )
    _check(s.poll_interval_s > 0, f"server.poll_interval_s={s.poll_interval_s} must be positive")
    _check(s.eval_max_samples >= 0, f"server.eval_max_samples={s.eval_max_samples} must be >= 0")
    d = cfg.dataset
    _check(
        len(d.mean) == len(d.std) == d.channels,
        f"dataset.mean and dataset.std need one value per channel ({d.channels})",
    )
    _check(0 < d.test_fraction < 1, f"dataset.test_fraction={d.test_fraction} must be in (0, 1)")
    _check(d.max_train_samples >= 0, f"dataset.max_train_samples={d.max_train_samples} must be >= 0")
    p = cfg.partition
    if p.name == "k_label":
        _check(
            1 <= p.labels_per_client <= d.num_classes,
            f"partition.labels_per_client={p.labels_per_client} must be between 1 and "
            f"dataset.num_classes={d.num_classes}",
        )
    if p.name == "dirichlet":
        _check(p.alpha > 0, f"partition.alpha={p.alpha} must be positive")
    if p.name == "natural":
        _check(
            d.name == "femnist",
            f"partition=natural needs a dataset with writers (femnist), not {d.name}",
        )
    m = cfg.model
    _check(len(m.conv_channels) >= 1, "model.conv_channels needs at least one layer")
    _check(all(w >= 1 for w in m.conv_channels + m.hidden), "model widths must be >= 1")
    a = cfg.attack
    _one_of("attack.name", a.name, ATTACKS)
    _one_of("attack.task", a.task, TASKS)
    _one_of("attack.schedule", a.schedule, SCHEDULES)
    _one_of("attack.project_every", a.project_every, ("epoch", "step"))
    _one_of("attack.malformed_kind", a.malformed_kind, MALFORMED)
    labels = range(cfg.dataset.num_classes)
    _check(a.source_label in labels and a.target_label in labels and
           a.source_label != a.target_label,
           f"attack.source_label={a.source_label} and attack.target_label={a.target_label} "
           f"must be different labels of the dataset")
    if a.name != "none":
        _check(1 <= a.num_malicious <= cfg.num_clients,
               f"attack={a.name} needs attack.num_malicious between 1 and num_clients "
               f"({cfg.num_clients}), not {a.num_malicious}")
        _check(a.schedule != "none", f"attack={a.name} needs attack.schedule "
               "(fixed_frequency or random); schedule none samples no attacker")
    _check(a.frequency >= 1, f"attack.frequency={a.frequency} must be at least 1")
    _check(a.boost_factor >= 0, f"attack.boost_factor={a.boost_factor} must be >= 0")
    _check(a.norm_bound > 0, f"attack.norm_bound={a.norm_bound} must be positive")
    _check(1 <= a.pattern_pixels <= 9, f"attack.pattern_pixels={a.pattern_pixels} must be 1..9")
    _check(a.dba_parts >= 1, f"attack.dba_parts={a.dba_parts} must be at least 1")
    if a.task == "semantic" and a.name not in ("none", "malformed"):
        _check(a.num_backdoor_tasks >= 1,
               f"attack.num_backdoor_tasks={a.num_backdoor_tasks} must be at least 1")
    df = cfg.defense
    _one_of("defense.name", df.name, DEFENSES)
    _check(df.norm_bound > 0, f"defense.norm_bound={df.norm_bound} must be positive")
    _check(df.noise_std >= 0, f"defense.noise_std={df.noise_std} must be >= 0")
    _check(0 <= df.trim_fraction < 0.5, f"defense.trim_fraction={df.trim_fraction} must be in [0, 0.5)")
    _check(cfg.pretrain_rounds >= 0, f"pretrain_rounds={cfg.pretrain_rounds} must be >= 0")
    if cfg.checkpoint:
        _check(Path(cfg.checkpoint).is_file(), f"checkpoint={cfg.checkpoint} is not a file")
    _check(s.max_examples >= 1, f"server.max_examples={s.max_examples} must be at least 1")
    _check(s.max_update_bytes > 0, f"server.max_update_bytes={s.max_update_bytes} must be positive")
    _check(s.checkpoint_every >= 1, f"server.checkpoint_every={s.checkpoint_every} must be >= 1")
    if df.name == "bulyan":
        _check(cfg.clients_per_round >= 4 * df.num_malicious + 3,
               f"defense=bulyan needs clients_per_round >= 4 * defense.num_malicious + 3 "
               f"({4 * df.num_malicious + 3}), not {cfg.clients_per_round}")
    if df.name in ("krum", "multikrum"):
        _check(cfg.clients_per_round > 2 * df.num_malicious + 2,
               f"defense={df.name} needs clients_per_round > 2 * defense.num_malicious + 2")
    f = cfg.federation
    if f.mode == "local":
        _check(
            cfg.num_clients <= f.max_local_nodes,
            f"federation=local starts one process per client; num_clients={cfg.num_clients} "
            f"exceeds federation.max_local_nodes={f.max_local_nodes} (use federation=simulation)",
        )
    if f.mode == "remote":
        _check(bool(f.address), "federation=remote needs federation.address=<host:port>")
        _check(
            f.insecure or bool(f.root_certificates),
            "federation=remote with insecure=false needs federation.root_certificates",
        )
    return cfg


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build dataclass ``cls`` (recursively) from a plain dict; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown key(s) for {cls.__name__}: {', '.join(sorted(unknown))}")
    kwargs = {}
    for name, value in data.items():
        kind = hints[name]
        kwargs[name] = from_dict(kind, value) if dataclasses.is_dataclass(kind) else value
    return cls(**kwargs)


def to_json(cfg: ExperimentConfig) -> str:
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True)


def from_json(text: str) -> ExperimentConfig:
    return from_dict(ExperimentConfig, json.loads(text))


def from_run_config(run_config: dict[str, Any]) -> tuple[ExperimentConfig, Path | None]:
    """The experiment and output folder that ``flbackdoor`` put into Flower's run config."""
    cfg = from_json(str(run_config["experiment"]))
    out = str(run_config.get("output-dir", ""))
    return cfg, (Path(out) if out else None)
