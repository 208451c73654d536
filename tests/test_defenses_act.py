"""Every registered server defense acts on a real round.

Ten real ClientApps (the project's own ``client/app.py`` train handler, called in this process)
train three rounds on real MNIST partitions: eight benign nodes and the matrix's two boosted
BadNets attackers. The round loop (``RoundRunner`` over an in-process Grid) validates their
replies and turns them into each round's updates once (FedAvg steps the model); then every
registered defense aggregates those same rounds and is judged on the last (the earlier ones
build the history of the defenses that keep one). A defense that silently did nothing would
hand back FedAvg's aggregate: each must differ from it, and a detector must flag at least one
attacker. A new defense is checked here without editing this file.
"""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord, Context, RecordDict

from conftest import SHARED_DATA, FakeGrid, requires_shared_data, resolved
from defenses.base import Aggregate, Defense, Updates, build_defense
from flbackdoor.registries import DEFENSES
from flbackdoor.updates import flatten

pytestmark = [requires_shared_data, pytest.mark.usefixtures("run_identity")]

MATRIX = ("experiment=matrix", "attack=boosted", "dataset.max_train_samples=2000")
# Detectors whose verdict (their flagged set) is for a narrower case than these attackers: they
# act here by weighting or clipping, and their recall is the matrix's to show (docs/MATRIX.md).
NOT_FLAGGING_HERE = {
    "foolsgold": "zero only for sybil-like histories: these two attackers train on their own "
                 "data (lowest alpha 0.76 measured)",
    "fltrust": "zero trust only for updates at 90 degrees or more from the server's; these "
               "keep a positive cosine and are scaled down to the server update's norm",
    "deepsight": "labels suspicious only updates whose output-layer energy sits on few labels; "
                 "attackers training on their own data plus triggered images spread it (0 "
                 "suspicious measured) and are clipped at the median norm instead",
}
# FLDetector's first verdict comes after 2N rounds of history (N = 10: round 21); here it has
# two earlier rounds, so N = 1. DeepSight's DDifs on 500 random images instead of 2,000: the
# same code path at a quarter of the suite's time.
OPTIONS = {"fldetector": {"window_size": 1}, "deepsight": {"num_samples": 500}}


class Recorder(Defense):
    """FedAvg that keeps the updates of every round it aggregated."""

    rounds: list[Updates]

    def aggregate(self, updates: Updates) -> Aggregate:
        self.rounds = [*getattr(self, "rounds", []), updates]
        return build_defense(self.cfg, defended=False).aggregate(updates)


@pytest.fixture(scope="module")
def real_round(tmp_path_factory):
    """(every round's Updates, the attackers' partitions, FedAvg's aggregate of the attack
    round, the data cache)."""
    import client.app as client_app
    from flbackdoor.config import to_json
    from flbackdoor.data.cache import load_partition, prepare
    from flbackdoor.models import build_model
    from flbackdoor.roles import roles_for
    from server.nodes import Membership, Node
    from server.rounds import RoundRunner
    from flwr.supercore.task_identity import TaskIdentity

    # The module-scoped round needs the run identity the per-test fixture sets.
    saved = {k: getattr(TaskIdentity, k) for k in ("_run_id", "_node_id", "_task_id")}
    for k in saved:
        setattr(TaskIdentity, k, 1)
    try:
        cache = tmp_path_factory.mktemp("cache")
        cfg = resolved(*MATRIX, f"data.cache_dir={cache}", data_root=str(SHARED_DATA))
        folder = prepare(cfg)
        roles = roles_for(cfg, folder)
        nodes = {p: Node(100 + p, p, roles.role(p), len(load_partition(folder, p)[1]))
                 for p in range(cfg.num_clients)}
        run_config = {"experiment": to_json(cfg), "output-dir": ""}

        def respond(node_id, msg):
            p = node_id - 100
            context = Context(1, node_id, {"partition-id": p, "num-partitions": cfg.num_clients,
                                           "role": nodes[p].role}, RecordDict(), run_config)
            return client_app.train(msg, context).content

        grid = FakeGrid([n.node_id for n in nodes.values()], respond)
        members = Membership(grid, nodes, cfg.num_clients, 60.0, 0.01)
        no_eval = lambda state: {"main_accuracy": 0.0, "main_loss": 0.0}  # noqa: E731
        recorder = Recorder(DEFENSES["none"].Config(), cfg)
        d = cfg.dataset
        torch.manual_seed(cfg.seed)
        start = build_model(cfg.model, d.channels, d.image_size, d.num_classes).state_dict()
        runner = RoundRunner(grid, cfg, members, no_eval)
        # Three attack rounds: the defenses that keep a history (FoolsGold, FLDetector) see
        # the attackers before the round that is judged.
        arrays = ArrayRecord(start)
        for rnd in (1, 2):
            arrays, _ = runner.run(rnd, arrays, recorder)
        _, row = runner.run(3, arrays, recorder)
    finally:
        for k, v in saved.items():
            setattr(TaskIdentity, k, v)
    assert row["num_clients"] == 10 and row["num_malicious"] == 2 and not row["rejected_updates"]
    fedavg = build_defense(cfg, defended=False).aggregate(recorder.rounds[-1]).delta
    return recorder.rounds, set(roles.malicious), fedavg, cache


def test_the_attackers_stand_out_in_the_real_round(real_round):
    rounds, malicious, _, _ = real_round
    updates = rounds[-1]
    norms = flatten(updates.deltas).norm(dim=1)
    bad = [i for i, p in enumerate(updates.partitions) if p in malicious]
    good = [i for i in range(len(norms)) if i not in bad]
    assert norms[bad].min() > 2 * norms[good].max(), norms  # boosted model replacement


@pytest.mark.parametrize("name", [n for n in DEFENSES.names() if n != "none"])
def test_defense_changes_the_aggregate_and_a_detector_catches_an_attacker(name, real_round):
    rounds, malicious, fedavg, cache = real_round
    # The same data as the round's (FLTrust trains on the server's root set of it).
    cfg = resolved(*MATRIX, f"defense={name}", f"data.cache_dir={cache}",
                   *(f"defense.{k}={v}" for k, v in OPTIONS.get(name, {}).items()),
                   data_root=str(SHARED_DATA))
    defense = build_defense(cfg)
    for earlier in rounds[:-1]:  # history, for the defenses that keep one
        defense.aggregate(earlier)
    out = defense.aggregate(rounds[-1])
    reference = flatten([fedavg])[0]
    if out.delta is None:  # the defense kept the model: the attackers' step was refused
        moved = float("inf")
    else:
        moved = (flatten([out.delta])[0] - reference).norm() / reference.norm()
    assert moved > 0.01, f"{name}: aggregate within 1% of FedAvg's ({moved:.2e})"
    if DEFENSES[name].detects and name not in NOT_FLAGGING_HERE:
        assert out.flagged & malicious, f"{name} flagged {sorted(out.flagged)}, " \
                                        f"attackers {sorted(malicious)}"
