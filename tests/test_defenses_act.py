"""Every registered server defense acts on a real round.

Ten real ClientApps (the project's own ``client/app.py`` train handler, called in this process)
train one round on real MNIST partitions from the same global model: eight benign nodes and the
matrix's two boosted BadNets attackers. The round loop (``RoundRunner`` over an in-process Grid)
validates their replies and turns them into the round's updates once; then every registered
defense aggregates those same updates. A defense that silently did nothing would hand back
FedAvg's aggregate: each must differ from it, and a detector must flag at least one attacker.
A new defense is checked here without editing this file.
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
# Detectors that give these attackers less weight in this one round but no zero: FoolsGold
# zeroes clients whose update histories look alike (sybils); two boosted attackers with their
# own data and one round of history do not (alpha >= 0.76 measured). Its recall is the
# matrix's to show over the attack rounds (docs/MATRIX.md).
REWEIGHTS_ONLY_HERE = ("foolsgold",)


class Recorder(Defense):
    """FedAvg that keeps the updates it was given."""

    def aggregate(self, updates: Updates) -> Aggregate:
        self.updates = updates
        return build_defense(self.cfg, defended=False).aggregate(updates)


@pytest.fixture(scope="module")
def real_round(tmp_path_factory):
    """(the round's Updates, the attackers' partitions, FedAvg's aggregate)."""
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
        # Two clean rounds first, as the matrix pretrains: the attackers then stand out from a
        # model that already learnt the main task, not from a random one.
        arrays = ArrayRecord(start)
        for rnd in (1, 2):
            arrays, _ = runner.run(rnd, arrays, recorder, attacks_on=False)
        _, row = runner.run(3, arrays, recorder)
    finally:
        for k, v in saved.items():
            setattr(TaskIdentity, k, v)
    assert row["num_clients"] == 10 and row["num_malicious"] == 2 and not row["rejected_updates"]
    updates = recorder.updates
    fedavg = build_defense(cfg, defended=False).aggregate(updates).delta
    return updates, set(roles.malicious), fedavg, cache


def test_the_attackers_stand_out_in_the_real_round(real_round):
    updates, malicious, _, _ = real_round
    norms = flatten(updates.deltas).norm(dim=1)
    bad = [i for i, p in enumerate(updates.partitions) if p in malicious]
    good = [i for i in range(len(norms)) if i not in bad]
    assert norms[bad].min() > 2 * norms[good].max(), norms  # boosted model replacement


@pytest.mark.parametrize("name", [n for n in DEFENSES.names() if n != "none"])
def test_defense_changes_the_aggregate_and_a_detector_catches_an_attacker(name, real_round):
    updates, malicious, fedavg, cache = real_round
    # The same data as the round's (FLTrust trains on the server's root set of it).
    cfg = resolved(*MATRIX, f"defense={name}", f"data.cache_dir={cache}",
                   data_root=str(SHARED_DATA))
    out = build_defense(cfg).aggregate(updates)
    reference = flatten([fedavg])[0]
    if out.delta is None:  # the defense kept the model: the attackers' step was refused
        moved = float("inf")
    else:
        moved = (flatten([out.delta])[0] - reference).norm() / reference.norm()
    assert moved > 0.01, f"{name}: aggregate within 1% of FedAvg's ({moved:.2e})"
    if name in REWEIGHTS_ONLY_HERE:
        assert out.stats["foolsgold_min_alpha"] < 1.0 and not out.flagged, out.stats
    elif DEFENSES[name].detects:
        assert out.flagged & malicious, f"{name} flagged {sorted(out.flagged)}, " \
                                        f"attackers {sorted(malicious)}"
