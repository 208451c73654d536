"""What every attack is made of: its config (the threat model every attack shares, plus its
own fields) and its reply to a train message on a malicious node.

An attack is one module in ``attacker/`` that registers a subclass of :class:`Attack` under its
Hydra option name, and one YAML in ``conf/attack/`` (docs/EXTENDING.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from flwr.app import ArrayRecord, RecordDict
from torch import nn

from flbackdoor.config import ExperimentConfig, check, one_of
from flbackdoor.registries import TASKS
from flbackdoor.training import TrainResult
from flbackdoor.updates import StateDict

SCHEDULES = ("none", "fixed_frequency", "random")


@dataclass
class AttackConfig:
    """Fields every attack shares (``conf/attack/base/threat.yaml``): who attacks and when
    (the server samples the malicious partitions by ``schedule``), and the backdoor task."""

    name: str = "none"
    num_malicious: int = 0  # malicious partitions (epsilon * K)
    schedule: str = "none"  # none | fixed_frequency | random: how the server samples them
    frequency: int = 1  # fixed_frequency: one attacker in rounds with round % f == f // 2
    # Durability (Neurotoxin, Chameleon): 0 = attack to the end; n = no attacker is sampled
    # after the experiment's n-th round (pretraining rounds do not count).
    stop_round: int = 0
    # The backdoor task (registered in TASKS): semantic | pixel_pattern | dba | label_flip
    task: str = "semantic"
    source_label: int = 7  # semantic: the target writers' digit; triggers: the victim label
    target_label: int = 1
    num_backdoor_tasks: int = 30  # semantic: target writers
    pattern_pixels: int = 9  # pixel_pattern: 1, 3, 5, 7 or 9
    dba_parts: int = 4  # dba: parts of the global pattern
    aux_samples: int = 200  # triggers: victim images drawn when the attacker holds none
    aux_train_samples: int = 0  # D_trn: true-distribution images the attacker holds besides its own
    epochs: int = 1  # the attacker's local epochs; conf: ${client.epochs}
    # How an attacker epoch visits its data: "union" = one shuffled pass over D_trn + D_mal;
    # "alternate" = a pass over D_trn, then one over D_mal (the TFF reference).
    data_mix: str = "union"

    # Whether the attack plants a backdoor task (D_mal, measured as backdoor accuracy).
    backdoor: ClassVar[bool] = True
    # What the testbed's side channel hands the round's attackers besides the boost hints
    # (server/rounds.py): the round's benign updates (omniscient attacks: their train messages go
    # out once the benign replies are in) and the last global update w_t - w_{t-1}.
    omniscient: ClassVar[bool] = False
    reads_global_update: ClassVar[bool] = False
    # Whether the attack re-optimises its trigger every round (A3FL): it keeps the trigger in
    # the node's state and reports it to the server's measurement (server/trigger_report.py);
    # only such an attack may use a task whose trigger is adaptive.
    adaptive_trigger: ClassVar[bool] = False
    # The backdoor task the attack is built around (DBA's split trigger, A3FL's patch, IBA's
    # generator); "": any registered task.
    own_task: ClassVar[str] = ""

    def check(self, cfg: ExperimentConfig) -> None:
        """Raise ConfigError on a value this attack cannot run with."""
        check(not self.own_task or self.task == self.own_task,
              f"attack={self.name} needs its own backdoor task: attack.task={self.task!r} must "
              f"be {self.own_task}")
        one_of("attack.schedule", self.schedule, SCHEDULES)
        one_of("attack.data_mix", self.data_mix, ("union", "alternate"))
        check(not TASKS[self.task].adaptive or self.adaptive_trigger,
              f"attack.task={self.task} has an adaptive trigger, which attack={self.name} does "
              "not optimise")
        labels = range(cfg.dataset.num_classes)
        check(self.source_label in labels and self.target_label in labels
              and self.source_label != self.target_label,
              f"attack.source_label={self.source_label} and attack.target_label="
              f"{self.target_label} must be different labels of the dataset")
        check(self.frequency >= 1, f"attack.frequency={self.frequency} must be at least 1")
        check(self.stop_round >= 0,
              f"attack.stop_round={self.stop_round} must be >= 0 (0: never stop)")
        check(self.epochs >= 1, f"attack.epochs={self.epochs} must be at least 1")
        check(1 <= self.pattern_pixels <= 9,
              f"attack.pattern_pixels={self.pattern_pixels} must be 1..9")
        check(self.dba_parts >= 1, f"attack.dba_parts={self.dba_parts} must be at least 1")
        check(1 <= self.num_malicious <= cfg.num_clients,
              f"attack={self.name} needs attack.num_malicious between 1 and num_clients "
              f"({cfg.num_clients}), not {self.num_malicious}")
        check(self.schedule != "none", f"attack={self.name} needs attack.schedule "
              "(fixed_frequency or random); schedule none samples no attacker")
        if self.backdoor and self.task == "semantic":
            check(self.num_backdoor_tasks >= 1,
                  f"attack.num_backdoor_tasks={self.num_backdoor_tasks} must be at least 1")


@dataclass
class TrainJob:
    """Everything a malicious node knows when a train message reaches it."""

    cfg: ExperimentConfig
    partition_id: int
    server_round: int
    model: nn.Module  # holds the global model w_t
    global_state: StateDict
    local: tuple[np.ndarray, np.ndarray]  # the node's own partition
    hints: dict  # the colluding attackers' side channel (flbackdoor.protocol.ATTACK_*)
    cache: Path  # the partition cache (other partitions, the test set)
    device: torch.device
    generator: torch.Generator
    honest: Callable[[], tuple[StateDict, TrainResult]]  # what a benign node would send
    # The side channel's arrays (AttackConfig.omniscient, .reads_global_update): the round's
    # benign updates w_k - w_t, and w_t - w_{t-1} (None in the first round or after a resume).
    benign_updates: list[StateDict] = field(default_factory=list)
    global_update: StateDict | None = None
    # The node's state for the whole run (Flower's ``context.state``; every message runs in a
    # fresh process in deployment): where an adaptive attack keeps its trigger.
    state: RecordDict | None = None


@dataclass
class Reply:
    arrays: ArrayRecord
    num_examples: float
    loss: float
    # The whole reply as a hostile node shapes it (records and metrics included); when set, the
    # ClientApp sends it as it is (attack=malformed).
    content: RecordDict | None = None


def state_reply(state: StateDict, result: TrainResult) -> Reply:
    return Reply(ArrayRecord({k: v.detach().cpu() for k, v in state.items()}),
                 result.num_examples, result.loss)


class Attack:
    """A malicious node's behaviour in a train round: :meth:`reply` is its whole answer."""

    Config: ClassVar[type[AttackConfig]] = AttackConfig

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self.config = cfg.attack

    def reply(self, job: TrainJob) -> Reply:
        raise NotImplementedError
