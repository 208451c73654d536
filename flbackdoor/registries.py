"""The registries of the experiment axes and the packages each one loads its entries from.

| registry      | Hydra group       | entries live in                    |
| ------------- | ----------------- | ---------------------------------- |
| DEFENSES      | ``defense``       | ``defenses/`` (server side)        |
| ATTACKS       | ``attack``        | ``attacker/``                      |
| TASKS         | ``attack.task``   | ``attacker/``                      |
| MODELS        | ``model``         | ``flbackdoor/models.py``           |
| DATASETS      | ``dataset``       | ``flbackdoor/data/sources.py``     |
| PARTITIONERS  | ``partition``     | ``flbackdoor/data/partition.py``   |
| TRACKERS      | ``tracking``      | ``flbackdoor/tracking.py``         |
"""

from __future__ import annotations

from flbackdoor.registry import Registry

DEFENSES: Registry = Registry("defense", ("defenses",))
ATTACKS: Registry = Registry("attack", ("attacker",))
TASKS: Registry = Registry("attack.task", ("attacker",))
MODELS: Registry = Registry("model", ("flbackdoor.models",))
DATASETS: Registry = Registry("dataset", ("flbackdoor.data.sources",))
PARTITIONERS: Registry = Registry("partition", ("flbackdoor.data.partition",))
TRACKERS: Registry = Registry("tracking", ("flbackdoor.tracking",))
