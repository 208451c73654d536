import pytest
import torch

from flbackdoor.updates import add as apply_update, difference, flatten, unflatten, weighted_mean


def test_fedavg_matches_hand_computation():
    w = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[0.0]])}
    # Two clients: n = 1 and 3; their models, hence deltas (+2, -2) and (+4, 0) on "a".
    w1 = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([[1.0]])}
    w2 = {"a": torch.tensor([5.0, 2.0]), "b": torch.tensor([[-1.0]])}
    out = apply_update(w, weighted_mean([difference(w1, w), difference(w2, w)], [1, 3]), 0.5)
    # mean delta a = (1*[2,-2] + 3*[4,0]) / 4 = [3.5, -0.5]; b = (1*1 + 3*-1)/4 = -0.5
    assert torch.allclose(out["a"], torch.tensor([1.0 + 0.5 * 3.5, 2.0 + 0.5 * -0.5]))
    assert torch.allclose(out["b"], torch.tensor([[-0.25]]))


def test_integer_buffers_keep_their_dtype():
    w = {"steps": torch.tensor(3, dtype=torch.int64)}
    out = apply_update(w, {"steps": torch.tensor(2.0)}, 1.0)
    assert out["steps"].dtype == torch.int64 and out["steps"].item() == 5


def test_weighted_mean_rejects_empty_or_zero_weight():
    with pytest.raises(ValueError):
        weighted_mean([], [])
    with pytest.raises(ValueError):
        weighted_mean([{"a": torch.ones(1)}], [0])


def test_flatten_round_trips():
    u = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([7.0])}
    flat = flatten([u, u])
    assert flat.shape == (2, 7)
    back = unflatten(flat[1], u)
    assert all(torch.equal(back[k], u[k]) for k in u)


def test_aggregation_cannot_move_the_pruning_mask():
    """Weak DP's noise (or a reply) changes every array it sees; the round keeps the server's
    channel mask as it was."""
    from defenses.weak_dp import noisy_clipped_mean
    from server.rounds import keep_server_buffers

    mask = torch.tensor([1.0, 0.0, 1.0])
    global_state = {"w": torch.zeros(3), "channel_mask": mask}
    reply = {"w": torch.ones(3), "channel_mask": torch.ones(3)}  # tries to un-prune channel 1
    delta = {k: reply[k] - global_state[k] for k in reply}
    mean = noisy_clipped_mean([delta], 10.0, 0.5, 1, torch.Generator().manual_seed(0))
    moved = {k: global_state[k] + mean[k] for k in mean}
    assert not torch.equal(moved["channel_mask"], mask)
    kept = keep_server_buffers(moved, global_state)
    assert torch.equal(kept["channel_mask"], mask) and torch.equal(kept["w"], moved["w"])
