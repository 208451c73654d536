"""The experiment's typed schema, its validation, and its trip through Flower's run config.

The schema is registered with Hydra (``schema`` in ``conf/config.yaml``), so Hydra type-checks
every YAML file and override against it; the YAML groups in ``conf/`` hold the values. The
ServerApp and ClientApps receive the resolved config as one JSON string and rebuild the same
dataclasses with :func:`from_dict`, without importing Hydra.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import ipaddress
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flbackdoor.errors import ConfigError
from flbackdoor.registries import ATTACKS, DATASETS, DEFENSES, MODELS, PARTITIONERS, TRACKERS
from flbackdoor.registry import option_config

FEDERATIONS = ("local", "simulation", "remote", "centralized", "docker")
DEVICES = ("auto", "cpu", "cuda")
POISONINGS = ("none", "badnets", "blend", "sig")
CLIENT_DEFENSES = ("none", "abl")
PRUNINGS = ("none", "ranking", "majority")
PRUNING_STOPS = ("server_validation", "client_reports")
PRUNING_LIES = ("none", "reverse", "keep_backdoor", "false_accuracy")


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
    momentum: float = 0.9
    weight_decay: float = 0.0
    # Threads per client process: 1 keeps N client processes on a few cores from thrashing.
    num_threads: int = 1


NUM_EXAMPLES_POLICIES = ("known", "cap", "trust")


@dataclass
class ServerConfig:
    lr: float = 1.0  # eta in w_{t+1} = w_t + eta * sum(n_k * delta_k) / sum(n_k)
    round_timeout_s: float = 600.0
    min_replies: int = 1  # a round with fewer replies keeps the previous model
    poll_interval_s: float = 0.1
    # Messages of a wave pushed but not yet answered at one time. 0: the whole wave at once;
    # -1: auto (simulation: twice the Ray workers this machine runs, because Flower's engine
    # rescans every pending message for every virtual node ten times a second; otherwise 0).
    max_in_flight: int = -1
    eval_batch_size: int = 1000
    eval_max_samples: int = 0  # 0: the whole held-out test set
    identify_timeout_s: float = 300.0
    # Before each round, how long the nodes that missed a round get to say they are alive (a
    # late node returns to sampling; a dead one's partition may pass to a new node).
    ping_timeout_s: float = 10.0
    max_examples: int = 1_000_000  # a reply's num-examples must be in [1, max_examples]
    max_update_bytes: int = 200_000_000  # a reply's arrays may not be larger
    # A reply's update ||w_k - w_t|| may not be larger: far above any attack here (boosted
    # model replacement reaches ~1e2-1e3), low enough that no statistic overflows.
    max_update_norm: float = 1.0e6
    # The FedAvg weight n_k of a reply. known: the size of the node's partition, which the
    # server computes itself (a count above it is rejected); cap: the reported count, at most
    # that size; trust: the reported count (an attack surface: one node can claim ~all weight).
    num_examples: str = "known"
    checkpoint_every: int = 1  # write <run>/checkpoint.pt every N rounds (resume point)


@dataclass
class TrackingConfig:
    """An experiment tracker besides the results files (flbackdoor/tracking.py)."""

    name: str = "none"  # none | tensorboard | mlflow
    uri: str = ""  # tensorboard: the log dir (default <run>/tensorboard); mlflow: tracking URI
    experiment: str = "flbackdoor"  # mlflow: the experiment the runs go to


@dataclass
class FederationConfig:
    mode: str = "local"
    host: str = "127.0.0.1"  # local: address every local process binds to
    startup_timeout_s: float = 120.0
    max_local_nodes: int = 64  # local starts one OS process per client
    superexec_poll_interval_s: float = 0.2  # FLWR_SUPEREXEC_TASK_POLL_INTERVAL (default 1 s)
    # local, docker, compose: one long-lived ClientApp runner per SuperNode (supernode/
    # clientapp_runner.py) instead of Flower's new process per message; false: Flower's own path
    warm_clientapps: bool = True
    # The SuperNode's sleep after a pull that found nothing (Flower's fixed 3 s); below 3 the
    # node runs through flbackdoor-supernode (supernode/short_poll.py), which caps it. 1 s: a
    # message waits for its node's next pull ~1 s less on average, at no CPU measurable on idle
    # nodes (docs/BENCHMARKS.md)
    supernode_idle_poll_s: float = 1.0
    # local: at most this many ClientApps compute at once on the machine (0: one per CPU), as
    # the Simulation Engine runs one virtual client per CPU; ten at once on 2 cores each took
    # 1.2-1.5 times the CPU (supernode/compute_slots.py, docs/BENCHMARKS.md)
    compute_slots: int = 0
    # local: the SuperLink's state in <run>/superlink.db (SQLite) instead of memory. Off by
    # default: on 2 cores its queries took 75-80% of a core and seconds of every round
    # (docs/BENCHMARKS.md); a resumed run needs only the ServerApp's checkpoint
    superlink_database: bool = False
    client_num_cpus: int = 1  # simulation: Ray CPUs per virtual client (Flower takes whole CPUs)
    client_num_gpus: float = 0.0
    # simulation: the CPUs this run's private Ray may use (0: every core); with a parallel
    # sweep launcher, cores // n_jobs, so the jobs share the machine instead of oversubscribing
    num_cpus: int = 0
    ray_address: str = ""  # simulation: join an existing Ray cluster ("auto" or host:port)
    address: str = ""  # remote: the SuperLink's Control API, host:port
    insecure: bool = False  # remote: plaintext (loopback, or allow_insecure on a trusted network)
    root_certificates: str = ""  # remote: CA bundle for TLS
    results_dir: str = ""  # remote: results folder on the SuperLink host ("" = this run's path)
    # docker: the image built from ./Dockerfile (the engine cannot pull it from anywhere)
    image: str = "flbackdoor:latest"
    # docker: GPUs for the SuperNode containers: auto (if the engine has NVIDIA's runtime), all,
    # none; "all" on a host without the NVIDIA Container Toolkit fails to start them
    gpus: str = "auto"
    # docker: TLS and SuperNode authentication on the containers' network (it is not loopback)
    tls: bool = True
    # Plaintext off loopback (remote insecure=true to another host, local/simulation on a
    # non-loopback federation.host, docker with tls=false) is refused unless this is true.
    allow_insecure: bool = False


@dataclass
class PoisoningConfig:
    """An outsider poisoned honest data before training (ABL's threat model): the whole
    training set in centralized mode, ``num_clients`` honest partitions in a federation."""

    kind: str = "none"  # none | badnets | blend | sig (sig is clean-label)
    rate: float = 0.1  # share of a poisoned dataset (or partition) that carries the trigger
    target_label: int = 0
    num_clients: int = 0  # federated: honest partitions poisoned (a seeded choice)
    blend_alpha: float = 0.2  # blend: (1 - alpha) x + alpha * pattern
    sig_delta: float = 20.0  # sig: amplitude of the sinusoid, in raw 0..255 pixel units
    sig_frequency: float = 6.0  # sig: periods across the image width

    @property
    def enabled(self) -> bool:
        return self.kind != "none"


@dataclass
class ClientDefenseConfig:
    """A defense each honest client runs on its own data (or the single model, centralized):
    Anti-Backdoor Learning (Li et al. 2021)."""

    name: str = "none"  # none | abl
    gamma: float = 0.5  # LGA loss floor
    isolation_fraction: float = 0.01  # p: the lowest-loss share of the examples isolated
    # T_te: LGA epochs (centralized) or server rounds (federated) before isolation; a client
    # isolates at its first participation after round lga_rounds.
    lga_rounds: int = 20
    # Federated: local GGA epochs per round once isolated. Centralized:
    # GGA runs for the num_rounds - lga_rounds epochs that are left.
    unlearning_epochs: int = 1  # conf: ${client.epochs}
    unlearning_lr: float = 0.05  # GGA learning rate; conf: ${client.lr}
    # LGA's sign on the minibatch mean loss ("batch", the authors' code) or per example
    # ("example", eq. 3 read literally).
    lga_sign: str = "batch"
    # GGA's ascent on the isolated set: "complement" descends -log(1 - p_y) (never saturates,
    # never diverges), "ce" ascends the cross-entropy itself (eq. 3 literally).
    ascent: str = "complement"
    # Federated: which honest clients run ABL. "all" (the defense as deployed: no client knows
    # whether an outsider poisoned its data) or "poisoned" (only those the outsider poisoned,
    # the others train plainly): an oracle bound, a diagnostic of what ABL costs on clean clients.
    clients: str = "all"

    @property
    def enabled(self) -> bool:
        return self.name != "none"


@dataclass
class PruningConfig:
    """Wu et al.'s post-training defense: federated pruning of the last conv layer's channels,
    extreme-weight adjustment, federated fine-tuning, then adjustment again."""

    name: str = "none"  # none | ranking (ranking vote) | majority (majority vote)
    prune_neurons: bool = True  # false: no pruning rounds, adjust extreme weights only (Table III)
    rate: float = 0.6  # majority: p, the share of channels each client votes to prune
    # How many to prune, and which delta: the server tests candidates on its own validation
    # set, or asks the clients for their local accuracies of the candidates.
    stop: str = "server_validation"  # server_validation | client_reports
    validation_size: int = 1000  # server_validation: seeded slice of the training images
    max_drop: float = 0.01  # stop when accuracy drops more than this between two test points
    step: int = 1  # channels pruned between two test points
    report_aggregate: str = "median"  # client_reports: median or mean of the clients' curves
    activation_samples: int = 0  # >0: clients measure activations on at most this many images
    delta: float = 3.0  # extreme weights: zero last-conv weights outside mu +- delta * sigma
    delta_search: bool = False  # search delta over delta_grid, large to small, until acc drops
    delta_grid: list[float] = field(default_factory=lambda: [6.0, 5.0, 4.0, 3.5, 3.0, 2.5, 2.0,
                                                             1.5, 1.0])
    finetune_rounds: int = 0  # federated rounds on the pruned model (attackers take part)
    # What a malicious node answers in pruning rounds: its honest view, its ranking reversed,
    # a view that keeps the channels its backdoor uses, or false accuracies of the candidates.
    lie: str = "none"  # none | reverse | keep_backdoor | false_accuracy

    @property
    def enabled(self) -> bool:
        return self.name != "none"


@dataclass
class ExperimentConfig:
    seed: int = 0
    num_rounds: int = 3
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
    # An attack and a server defense: each option's own typed dataclass (its registered
    # ``Config``), built from its YAML in ``conf/attack/`` or ``conf/defense/``.
    attack: Any = field(default_factory=lambda: {"name": "none"})
    defense: Any = field(default_factory=lambda: {"name": "none"})
    pruning: PruningConfig = field(default_factory=PruningConfig)
    poisoning: PoisoningConfig = field(default_factory=PoisoningConfig)
    client_defense: ClientDefenseConfig = field(default_factory=ClientDefenseConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    # Clean rounds before the experiment (attack) starts, from a checkpoint cached in
    # data.cache_dir and reused by every run with the same clean setting.
    pretrain_rounds: int = 0
    checkpoint: str = ""  # start from this saved model instead (a checkpoint.pt of a run)
    resume: str = ""  # a run folder: continue it from its last checkpointed round
    # A job whose output folder already holds the finished run of this same experiment is not
    # run again (resumable sweeps with name-based job folders: experiment=matrix).
    skip_done: bool = False

    def __post_init__(self) -> None:
        # Hydra and the run config hand the options over as plain mappings; the registries
        # turn each into its option's dataclass (unknown keys and wrong types fail here).
        self.attack = option_config(ATTACKS, self.attack)
        self.defense = option_config(DEFENSES, self.defense)


def check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    check(value in allowed, f"{key}={value!r} is not one of {', '.join(allowed)}")


def is_loopback(address: str) -> bool:
    """``address`` (a host, ``host:port`` or ``[v6]:port``) names this machine's loopback."""
    host = address.strip()
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_plaintext(f: FederationConfig) -> None:
    """Plaintext gRPC/HTTP is for loopback; anywhere else only with allow_insecure=true."""
    if f.allow_insecure:
        return
    hint = "use TLS or set federation.allow_insecure=true (a trusted network only)"
    if f.mode == "remote" and f.insecure and f.address:
        check(is_loopback(f.address), f"federation.insecure=true sends plaintext to "
                                      f"{f.address}, not loopback: {hint}")
    if f.mode in ("local", "simulation"):
        check(is_loopback(f.host), f"federation={f.mode} runs plaintext on federation.host="
                                   f"{f.host}, not loopback: {hint}")
    if f.mode == "docker":
        check(f.tls, f"federation.tls=false runs plaintext on the containers' network: {hint}")


def validate(cfg: ExperimentConfig) -> ExperimentConfig:
    """Raise :class:`ConfigError` on the first value that cannot run; return ``cfg``."""
    DATASETS[cfg.dataset.name], MODELS[cfg.model.name], PARTITIONERS[cfg.partition.name]
    # A tracker's package is an optional dependency: missing, the run fails here, not later.
    need = TRACKERS[cfg.tracking.name].requires
    check(not need or importlib.util.find_spec(need) is not None,
          f"tracking={cfg.tracking.name} needs the {need} package: pip install -e '.[track]'")
    one_of("federation.mode", cfg.federation.mode, FEDERATIONS)
    one_of("device", cfg.device, DEVICES)
    # A defense-only run (pruning a checkpoint) may train no round.
    check(cfg.num_rounds >= (0 if cfg.pruning.name != "none" else 1),
           f"num_rounds={cfg.num_rounds} must be at least 1 (0 only with pruning)")
    check(cfg.num_clients >= 1, f"num_clients={cfg.num_clients} must be at least 1")
    check(
        1 <= cfg.clients_per_round <= cfg.num_clients,
        f"clients_per_round={cfg.clients_per_round} must be between 1 and "
        f"num_clients={cfg.num_clients}",
    )
    c = cfg.client
    check(c.lr > 0, f"client.lr={c.lr} must be positive")
    check(c.epochs >= 1, f"client.epochs={c.epochs} must be at least 1")
    check(c.batch_size >= 1, f"client.batch_size={c.batch_size} must be at least 1")
    check(0 <= c.momentum < 1, f"client.momentum={c.momentum} must be in [0, 1)")
    check(c.weight_decay >= 0, f"client.weight_decay={c.weight_decay} must be >= 0")
    check(c.num_threads >= 1, f"client.num_threads={c.num_threads} must be at least 1")
    s = cfg.server
    check(s.lr > 0, f"server.lr={s.lr} must be positive")
    check(s.round_timeout_s > 0, f"server.round_timeout_s={s.round_timeout_s} must be positive")
    check(
        1 <= s.min_replies <= cfg.clients_per_round,
        f"server.min_replies={s.min_replies} must be between 1 and "
        f"clients_per_round={cfg.clients_per_round}",
    )
    check(s.poll_interval_s > 0, f"server.poll_interval_s={s.poll_interval_s} must be positive")
    check(s.max_in_flight >= -1, f"server.max_in_flight={s.max_in_flight} must be -1 (auto), "
           "0 (the whole wave) or a positive count")
    check(s.eval_max_samples >= 0, f"server.eval_max_samples={s.eval_max_samples} must be >= 0")
    d = cfg.dataset
    check(
        len(d.mean) == len(d.std) == d.channels,
        f"dataset.mean and dataset.std need one value per channel ({d.channels})",
    )
    check(0 < d.test_fraction < 1, f"dataset.test_fraction={d.test_fraction} must be in (0, 1)")
    check(d.max_train_samples >= 0, f"dataset.max_train_samples={d.max_train_samples} must be >= 0")
    p = cfg.partition
    if p.name == "k_label":
        check(
            1 <= p.labels_per_client <= d.num_classes,
            f"partition.labels_per_client={p.labels_per_client} must be between 1 and "
            f"dataset.num_classes={d.num_classes}",
        )
    if p.name == "dirichlet":
        check(p.alpha > 0, f"partition.alpha={p.alpha} must be positive")
    if PARTITIONERS[p.name].natural:
        check(DATASETS[d.name].has_writers,
              f"partition={p.name} needs a dataset with writers (femnist), not {d.name}")
    m = cfg.model
    check(len(m.conv_channels) >= 1, "model.conv_channels needs at least one layer")
    check(all(w >= 1 for w in m.conv_channels + m.hidden), "model widths must be >= 1")
    cfg.attack.check(cfg)
    cfg.defense.check(cfg)
    check(cfg.pretrain_rounds >= 0, f"pretrain_rounds={cfg.pretrain_rounds} must be >= 0")
    _validate_abl(cfg)
    if cfg.checkpoint:
        check(Path(cfg.checkpoint).is_file(), f"checkpoint={cfg.checkpoint} is not a file")
    check(s.max_examples >= 1, f"server.max_examples={s.max_examples} must be at least 1")
    check(s.max_update_bytes > 0, f"server.max_update_bytes={s.max_update_bytes} must be positive")
    check(s.ping_timeout_s > 0, f"server.ping_timeout_s={s.ping_timeout_s} must be positive")
    check(s.max_update_norm > 0, f"server.max_update_norm={s.max_update_norm} must be positive")
    one_of("server.num_examples", s.num_examples, NUM_EXAMPLES_POLICIES)
    check(s.checkpoint_every >= 1, f"server.checkpoint_every={s.checkpoint_every} must be >= 1")
    _validate_pruning(cfg.pruning)
    f = cfg.federation
    if f.mode == "local":
        check(
            cfg.num_clients <= f.max_local_nodes,
            f"federation=local starts one process per client; num_clients={cfg.num_clients} "
            f"exceeds federation.max_local_nodes={f.max_local_nodes} (use federation=simulation)",
        )
    if f.mode == "simulation":
        check(f.client_num_cpus >= 1, f"federation.client_num_cpus={f.client_num_cpus} must be "
                                      "at least 1 (Flower gives a virtual client whole CPUs)")
        check(f.num_cpus == 0 or f.num_cpus >= f.client_num_cpus,
              f"federation.num_cpus={f.num_cpus} must be 0 (every core) or at least "
              f"federation.client_num_cpus={f.client_num_cpus}")
    if f.mode == "remote":
        check(bool(f.address), "federation=remote needs federation.address=<host:port>")
        check(
            f.insecure or bool(f.root_certificates),
            "federation=remote with insecure=false needs federation.root_certificates",
        )
    _check_plaintext(f)
    check(0.01 <= f.supernode_idle_poll_s <= 3.0,
          f"federation.supernode_idle_poll_s={f.supernode_idle_poll_s} must be in 0.01..3 "
          "(3 is Flower's own sleep)")
    check(f.compute_slots >= 0,
          f"federation.compute_slots={f.compute_slots} must be 0 (one per CPU) or more")
    check(0.01 <= f.superexec_poll_interval_s <= 60,
          f"federation.superexec_poll_interval_s={f.superexec_poll_interval_s} must be in 0.01..60")
    if f.mode == "docker":
        one_of("federation.gpus", f.gpus, ("auto", "all", "none"))
        check(bool(f.image), "federation=docker needs federation.image (docker build -t NAME .)")
        check(
            cfg.num_clients <= f.max_local_nodes,
            f"federation=docker starts one container per client; num_clients={cfg.num_clients} "
            f"exceeds federation.max_local_nodes={f.max_local_nodes}",
        )
    return cfg


def _validate_abl(cfg: ExperimentConfig) -> None:
    """The outsider's poisoning and the client-side defense (ABL)."""
    p, cd = cfg.poisoning, cfg.client_defense
    centralized = cfg.federation.mode == "centralized"
    one_of("poisoning.kind", p.kind, POISONINGS)
    check(0 < p.rate < 1, f"poisoning.rate={p.rate} must be in (0, 1)")
    check(p.target_label in range(cfg.dataset.num_classes),
           f"poisoning.target_label={p.target_label} is not a label of the dataset")
    check(0 < p.blend_alpha <= 1, f"poisoning.blend_alpha={p.blend_alpha} must be in (0, 1]")
    check(p.sig_delta > 0, f"poisoning.sig_delta={p.sig_delta} must be positive")
    check(p.sig_frequency > 0, f"poisoning.sig_frequency={p.sig_frequency} must be positive")
    honest = cfg.num_clients - cfg.attack.num_malicious
    check(0 <= p.num_clients <= honest,
           f"poisoning.num_clients={p.num_clients} must be between 0 and the {honest} honest "
           f"clients")
    if p.kind != "none" and not centralized:
        check(p.num_clients >= 1, f"poisoning={p.kind} in a federation needs "
               "poisoning.num_clients >= 1 (how many honest clients' data is poisoned)")
    one_of("client_defense.name", cd.name, CLIENT_DEFENSES)
    check(cd.gamma >= 0, f"client_defense.gamma={cd.gamma} must be >= 0")
    one_of("client_defense.lga_sign", cd.lga_sign, ("batch", "example"))
    one_of("client_defense.ascent", cd.ascent, ("complement", "ce"))
    one_of("client_defense.clients", cd.clients, ("all", "poisoned"))
    check(0 < cd.isolation_fraction < 1,
           f"client_defense.isolation_fraction={cd.isolation_fraction} must be in (0, 1)")
    check(cd.unlearning_epochs >= 1,
           f"client_defense.unlearning_epochs={cd.unlearning_epochs} must be at least 1")
    check(cd.unlearning_lr > 0, f"client_defense.unlearning_lr={cd.unlearning_lr} must be positive")
    if cd.name == "abl":
        # The schedule counts server rounds from 1; pretraining rounds would be counted too.
        check(cfg.pretrain_rounds == 0 or centralized,
               f"client_defense=abl needs pretrain_rounds=0, not {cfg.pretrain_rounds} (ABL "
               "trains from the first round on the poisoned data)")
        check(1 <= cd.lga_rounds < cfg.num_rounds,
               f"client_defense.lga_rounds={cd.lga_rounds} must be between 1 and "
               f"num_rounds={cfg.num_rounds} - 1 (ABL isolates after it, then unlearns)")
    if centralized:
        check(cfg.attack.num_malicious == 0,
               f"attack={cfg.attack.name} needs a federation (federation=centralized trains one "
               "model on the poisoned training set)")


def _validate_pruning(p: PruningConfig) -> None:
    one_of("pruning.name", p.name, PRUNINGS)
    one_of("pruning.stop", p.stop, PRUNING_STOPS)
    one_of("pruning.report_aggregate", p.report_aggregate, ("median", "mean"))
    one_of("pruning.lie", p.lie, PRUNING_LIES)
    check(0 < p.rate < 1, f"pruning.rate={p.rate} must be in (0, 1)")
    check(p.validation_size >= 1, f"pruning.validation_size={p.validation_size} must be >= 1")
    check(p.max_drop >= 0, f"pruning.max_drop={p.max_drop} must be >= 0")
    check(p.step >= 1, f"pruning.step={p.step} must be at least 1")
    check(p.activation_samples >= 0,
           f"pruning.activation_samples={p.activation_samples} must be >= 0")
    check(p.delta > 0, f"pruning.delta={p.delta} must be positive")
    check(len(p.delta_grid) >= 1 and all(d > 0 for d in p.delta_grid)
           and list(p.delta_grid) == sorted(p.delta_grid, reverse=True),
           f"pruning.delta_grid={list(p.delta_grid)} must be positive and descending")
    check(p.finetune_rounds >= 0, f"pruning.finetune_rounds={p.finetune_rounds} must be >= 0")


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
