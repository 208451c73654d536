"""Wu et al.'s federated pruning math on hand-made tensors and networks: activations, rank
averaging, keep votes, masks, extreme weights, the stopping rule, the liars, and the config."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from attacker.lying import lie_accuracies, lie_activations
from defenses.pruning import (
    adjust_extreme_weights,
    aggregate_rankings,
    aggregate_votes,
    channel_activations,
    extreme_weight_mask,
    keep_votes,
    prune_mask,
    pruning_levels,
    ranking,
    set_channel_mask,
    stop_index,
)
from flbackdoor.config import ConfigError, ExperimentConfig, ModelConfig, PruningConfig, validate
from flbackdoor.models import ConvNet, build_model, with_channel_mask
from server.pruning import aggregate_curves, valid_vote


def hand_made_net() -> ConvNet:
    """One 1x1 conv with three channels: x, -x and 2x (+ bias 1 on the last), then ReLU."""
    conv = nn.Conv2d(1, 3, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0, 2.0]).view(3, 1, 1, 1))
        conv.bias.copy_(torch.tensor([0.0, 0.0, 1.0]))
    return ConvNet(nn.Sequential(conv, nn.ReLU()), (1, 2, 2), [], 2)


def test_channel_activations_sum_hw_after_relu_and_average_over_images():
    x = torch.stack([torch.ones(1, 2, 2), 2 * torch.ones(1, 2, 2)])
    acts = channel_activations(hand_made_net(), x, batch_size=1)
    # Per image: sums over the 4 pixels of relu(x), relu(-x), relu(2x + 1).
    assert acts.tolist() == pytest.approx([(4 + 8) / 2, 0.0, (12 + 20) / 2])


def test_ranking_positions_with_ties_broken_by_index():
    assert ranking(torch.tensor([3.0, 1.0, 2.0])).tolist() == [2, 0, 1]
    assert ranking(torch.tensor([1.0, 1.0, 0.0])).tolist() == [1, 2, 0]


def test_aggregate_rankings_mean_position_and_ties():
    r = [torch.tensor([0, 1, 2, 3]), torch.tensor([3, 0, 1, 2]), torch.tensor([0, 3, 2, 1])]
    # mean positions: 1, 4/3, 5/3, 2
    assert aggregate_rankings(r) == [0, 1, 2, 3]
    assert aggregate_rankings([torch.tensor([2, 0, 1]), torch.tensor([0, 2, 1])]) == [0, 1, 2]
    assert aggregate_rankings([torch.tensor([2, 1, 0])]) == [2, 1, 0]


def test_keep_votes_and_vote_sums_with_ties():
    assert keep_votes(torch.tensor([5.0, 1.0, 3.0, 0.0]), 0.5).tolist() == [1, 0, 1, 0]
    assert keep_votes(torch.ones(4), 0.5).tolist() == [0, 0, 1, 1]
    assert keep_votes(torch.tensor([5.0, 1.0, 3.0]), 0.5).tolist() == [1, 0, 1]  # floor(1.5)
    votes = [torch.tensor([1, 0, 1, 0]), torch.tensor([1, 1, 0, 0]), torch.tensor([0, 1, 1, 1])]
    assert aggregate_votes(votes) == [3, 0, 1, 2]  # sums 2, 2, 2, 1


def test_prune_mask_and_levels():
    assert prune_mask([2, 0, 1], 2, 4).tolist() == [0.0, 1.0, 0.0, 1.0]
    assert prune_mask([2, 0, 1], 0, 3).tolist() == [1.0, 1.0, 1.0]
    assert pruning_levels(5, 2) == [0, 2, 4]
    assert pruning_levels(4, 1) == [0, 1, 2, 3]


def test_mask_zeroes_exactly_the_channels_output():
    torch.manual_seed(0)
    model = build_model(ModelConfig(conv_channels=[4, 6], hidden=[8]), 1, 28, 10)
    x = torch.randn(5, 1, 28, 28)
    seen = []
    model.classifier.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    set_channel_mask(model, prune_mask([1, 4], 2, 6))
    masked = model(x)
    features = seen[-1].view(5, 6, -1)
    assert features[:, [1, 4]].abs().sum() == 0 and features[:, [0, 2, 3, 5]].abs().sum() > 0
    # The same network with those channels' conv weights and biases zeroed instead.
    zeroed = build_model(ModelConfig(conv_channels=[4, 6], hidden=[8]), 1, 28, 10)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["channel_mask"] = torch.ones(6)
    zeroed.load_state_dict(state)
    with torch.no_grad():
        zeroed.last_conv.weight[[1, 4]] = 0
        zeroed.last_conv.bias[[1, 4]] = 0
    assert torch.allclose(masked, zeroed(x), atol=1e-6)
    set_channel_mask(model, torch.ones(6))
    assert not torch.allclose(masked, model(x), atol=1e-6)  # the pruning changed the output


def test_mask_travels_in_the_state_dict_and_old_states_get_ones():
    model = build_model(ModelConfig(conv_channels=[4, 6], hidden=[8]), 1, 28, 10)
    set_channel_mask(model, prune_mask([3], 1, 6))
    state = model.state_dict()
    assert state["channel_mask"].tolist() == [1, 1, 1, 0, 1, 1]
    old = {k: v for k, v in state.items() if k != "channel_mask"}
    completed = with_channel_mask(old)
    assert list(completed) == list(state) and completed["channel_mask"].tolist() == [1.0] * 6
    assert with_channel_mask(state) is state


def test_extreme_weight_mask_on_a_known_tensor():
    weight = torch.zeros(10, 1, 1, 1)
    weight[7] = 10.0  # mean 1, population std 3: |10 - 1| = 9 = 3 sigma
    assert extreme_weight_mask(weight, 2.0).nonzero()[:, 0].tolist() == [7]
    assert extreme_weight_mask(weight, 3.0).sum() == 0  # on the boundary: kept
    # Restricted to the kept channels: channel 7 is pruned, so nothing is extreme.
    channels = torch.ones(10)
    channels[7] = 0
    assert extreme_weight_mask(weight, 2.0, channels).sum() == 0


def test_adjust_extreme_weights_zeroes_in_place_and_counts():
    model = build_model(ModelConfig(conv_channels=[4, 6], hidden=[8]), 1, 28, 10)
    with torch.no_grad():
        model.last_conv.weight.fill_(0.01)
        model.last_conv.weight[2, 0, 0, 0] = 5.0
        model.last_conv.weight[5, 1, 1, 1] = -5.0
    before = model.last_conv.weight.clone()
    assert adjust_extreme_weights(model, 3.0) == 2
    w = model.last_conv.weight
    assert w[2, 0, 0, 0] == 0 and w[5, 1, 1, 1] == 0
    assert (w != before).sum() == 2


def test_stop_index():
    assert stop_index([0.98, 0.979, 0.975, 0.96, 0.95], 0.01) == 2
    assert stop_index([0.98, 0.97, 0.965], 0.02) == 2  # never drops by more: the last
    assert stop_index([0.98, 0.90], 0.01) == 0
    assert stop_index([0.5], 0.01) == 0
    assert stop_index([0.90, 0.95, 0.94], 0.005) == 1  # a rise is not a drop


def test_liars():
    honest = torch.tensor([0.5, 3.0, 1.0, 2.0])
    assert ranking(lie_activations(honest, None, "reverse")).tolist() == \
        [3 - r for r in ranking(honest).tolist()]
    triggered = torch.tensor([0.5, 3.0, 9.0, 2.0])  # the trigger excites channel 2
    fake = lie_activations(honest, triggered, "keep_backdoor")
    assert ranking(fake)[2] == 3 and keep_votes(fake, 0.75)[2] == 1
    assert lie_accuracies([0.9, 0.89, 0.88], "false_accuracy") == [0.9, 0.0, 0.0]
    assert lie_accuracies([0.9, 0.89], "reverse") == [0.9, 0.89]


def test_vote_validation_and_client_curves():
    assert valid_vote([2, 0, 1], 3, "ranking") and not valid_vote([0, 0, 1], 3, "ranking")
    assert valid_vote([0, 1, 1], 3, "majority") and not valid_vote([0, 2, 1], 3, "majority")
    assert not valid_vote([0, 1], 3, "majority") and not valid_vote(None, 3, "ranking")
    honest = [[0.9, 0.9, 0.85], [0.95, 0.94, 0.9], [0.8, 0.8, 0.8]]
    liar = [0.9, 0.0, 0.0]
    assert aggregate_curves(honest + [liar, [0.9, 0.9, 0.9]], [1] * 5, "median") == \
        [0.9, 0.9, 0.85]
    assert aggregate_curves([[1.0, 0.0], [0.0, 1.0]], [3, 1], "mean") == [0.75, 0.25]


@pytest.mark.parametrize("change, message", [
    (dict(name="prune"), "pruning.name='prune' is not one of none, ranking, majority"),
    (dict(rate=1.0), "pruning.rate=1.0 must be in (0, 1)"),
    (dict(stop="oracle"), "pruning.stop='oracle' is not one of"),
    (dict(step=0), "pruning.step=0 must be at least 1"),
    (dict(delta_grid=[1.0, 2.0]), "must be positive and descending"),
    (dict(lie="always"), "pruning.lie='always' is not one of"),
])
def test_pruning_config_errors_are_one_line(change, message):
    cfg = dataclasses.replace(ExperimentConfig(),
                              pruning=PruningConfig(**{"name": "ranking", **change}))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")) as err:
        validate(cfg)
    assert "\n" not in str(err.value)


def test_defense_only_run_may_train_no_round():
    with pytest.raises(ConfigError, match="num_rounds=0"):
        validate(dataclasses.replace(ExperimentConfig(), num_rounds=0))
    validate(dataclasses.replace(ExperimentConfig(), num_rounds=0,
                                 pruning=PruningConfig(name="ranking")))


def test_paper_style_table_rows_and_means(tmp_path):
    import json

    from launcher.pruning_table import main

    for vic, atk, asr in ((9, 0, 0.02), (3, 9, 0.10)):
        run = tmp_path / f"honest_{vic}_{atk}"
        run.mkdir()
        block = {"main_accuracy": 0.95, "backdoor_accuracy": asr, "neurons_pruned": 10,
                 "weights_zeroed": 30}
        phases = {"train": {"main_accuracy": 0.97, "backdoor_accuracy": 1.0},
                  "prune": block, "adjust": block, "finetune_adjust": block}
        (run / "summary.json").write_text(json.dumps(
            {"config": {"attack": {"source_label": vic, "target_label": atk}}, "phases": phases}))
    out = tmp_path / "table.md"
    main([str(p) for p in sorted(tmp_path.glob("honest_*"))] + ["-o", str(out)])
    lines = out.read_text().splitlines()
    assert lines[2].startswith("| 3 | 9 | 97.0 | 100.0 | 10 | 95.0 | 10.0 | 30 |")
    assert lines[2].endswith("| 98.5 / 99.5 | 95 / 34.9 | 96 / 26.3 |")  # the paper's, beside
    assert lines[4].startswith(
        "| **mean** |  | **97.0** | **100.0** | **10.0** | **95.0** | **6.0** |")
    # A run outside Table IV's setting (Table V: Fashion-MNIST) gets no paper columns.
    summary = json.loads((tmp_path / "honest_3_9" / "summary.json").read_text())
    summary["config"]["dataset"] = {"name": "fashion_mnist"}
    (tmp_path / "honest_3_9" / "summary.json").write_text(json.dumps(summary))
    main([str(tmp_path / "honest_3_9"), "-o", str(out)])
    assert out.read_text().splitlines()[2].endswith("| - | - | - |")

