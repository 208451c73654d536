"""DBA, the distributed backdoor attack (Xie, Huang, Chen, Li, ICLR 2020, section 2.2 and
Figure 1): the global pixel trigger is split into ``dba_parts`` local triggers; attacker i
poisons its training data with part i mod ``dba_parts`` only (data poisoning, its update sent as
trained: the paper's multiple-shot attack A-M, no scale factor), and the backdoor is measured
with the whole global trigger.

The split is the ``dba`` backdoor task (``attacker/tasks.py``), which ``attack=dba`` requires.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from attacker.data_poisoning import DataPoisoning, DataPoisoningConfig
from flbackdoor.registries import ATTACKS


@dataclass
class DBAConfig(DataPoisoningConfig):
    name: str = "dba"
    num_malicious: int = 4
    schedule: str = "random"
    task: str = "dba"
    own_task: ClassVar[str] = "dba"


@ATTACKS.register("dba")
class DBA(DataPoisoning):
    Config = DBAConfig
