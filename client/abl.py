"""ABL as an honest client's training routine (``client_defense=abl``), the federated reading of
Li et al. 2021:

- rounds 1..R_te (``client_defense.lga_rounds``): LGA for ``client.epochs`` local epochs;
- at the node's first participation after round R_te: LGA once more, then isolation: the
  lowest ``isolation_fraction`` of its examples by the loss of the model it has just trained
  on them; the indices are kept in the node's ``context.state`` (each message runs in a fresh
  process in deployment; the state persists per node for the run), so later rounds unlearn the
  same set. Ranking by the *global* model it received instead isolated no poisoned example at
  all (precision 0.00 on the 3 poisoned clients, docs/REPRODUCTION.md): the average of ten
  clients has not fitted one client's poison the way the client's own LGA model has;
- at every later participation: GGA for ``unlearning_epochs`` (0: ``client.epochs``) local
  epochs at ``unlearning_lr`` (0: ``client.lr``).

The reply's metrics say how many examples the node isolated and, scored against the
outsider's poisoned indices (known to the testbed, never used for training), how many of them
were poisoned.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ConfigRecord, RecordDict
from torch import nn

from defenses import abl
from flbackdoor import protocol as P
from flbackdoor.config import ExperimentConfig
from flbackdoor.training import Normalizer, TrainResult

STATE_KEY = "abl"


def runs_abl(cfg: ExperimentConfig, poisoned: np.ndarray) -> bool:
    """Whether this honest client trains with ABL: every one with ``client_defense=abl``, or,
    with ``client_defense.clients=poisoned`` (an oracle bound), only one whose data the outsider
    poisoned."""
    cd = cfg.client_defense
    return cd.enabled and (cd.clients == "all" or len(poisoned) > 0)


def abl_train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, poisoned: np.ndarray,
              cfg: ExperimentConfig, server_round: int, state: RecordDict, normalize: Normalizer,
              generator: torch.Generator) -> tuple[TrainResult, dict[str, int]]:
    cd = cfg.client_defense
    saved = state.config_records.get(STATE_KEY)
    isolated = list(saved["isolated"]) if saved is not None else None
    if isolated is None:
        result = abl.train_lga(model, x, y, cfg.client, cd.gamma, normalize, cfg.client.epochs,
                               generator, per_example=cd.lga_sign == "example")
        if server_round > cd.lga_rounds:
            losses = abl.per_example_losses(model, x, y, normalize)
            isolated = [int(i) for i in abl.isolate(losses, cd.isolation_fraction).cpu()]
            state[STATE_KEY] = ConfigRecord({"isolated": isolated, "round": server_round})
    else:
        result = abl.train_gga(model, x, y, torch.tensor(isolated, dtype=torch.long), cfg.client,
                               cd.unlearning_lr, normalize,
                               cd.unlearning_epochs, generator, cd.ascent)
    return result, isolation_report(isolated or [], poisoned)


def isolation_report(isolated: list[int], poisoned: np.ndarray) -> dict[str, int]:
    """What a node reports about its isolation; every node of an ABL run reports the same keys
    (one that does not run ABL, none isolated), as Flower's metric aggregation requires."""
    found = np.asarray(isolated, dtype=np.int64)
    return {P.ISOLATED_COUNT: len(found), P.ISOLATED_POISONED: int(np.isin(found, poisoned).sum()),
            P.POISONED_COUNT: len(poisoned)}
