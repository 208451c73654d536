"""Model-replacement arithmetic (Sun et al. eq. 1), as pure functions on state dicts.

Delta_mal = beta * (w* - w_t), beta = sum_{k in S_t} n_k / (eta * n_attacker); m attackers in one
round split it evenly, each sending (beta / m) * (w*_i - w_t). The norm-bounded attack projects
w onto the L2 ball of radius M / b around w_t (b the factor this attacker boosts by), so the
boosted update has norm at most M; Neurotoxin also keeps w on the coordinate subspace a mask
allows (:func:`restrict`).
"""

from __future__ import annotations

from flbackdoor.updates import StateDict, add, clip_to_norm, difference, scale


def boost_factor(round_examples: float, server_lr: float, attacker_examples: float,
                 num_attackers: int = 1) -> float:
    """beta / m: the factor each of the round's ``num_attackers`` boosts its update by."""
    if round_examples <= 0 or server_lr <= 0 or attacker_examples <= 0 or num_attackers < 1:
        raise ValueError("boost_factor needs positive example counts, server lr and attackers")
    return round_examples / (server_lr * attacker_examples) / num_attackers


def boost(update: StateDict, factor: float) -> StateDict:
    return scale(update, factor)


def project_l2(weights: StateDict, center: StateDict, radius: float) -> StateDict:
    """The point of the L2 ball of ``radius`` around ``center`` closest to ``weights``."""
    clipped, _ = clip_to_norm(difference(weights, center), radius)
    return add(center, clipped)


def restrict(weights: StateDict, center: StateDict, mask: StateDict) -> StateDict:
    """``weights`` moved back to ``center`` wherever ``mask`` is 0: center + mask (w - center)
    on the mask's entries (a 0/1 mask: the projection onto those coordinates); the other
    entries as they are."""
    return {k: (center[k].float() + mask[k] * (v.float() - center[k].float())).to(v.dtype)
            if k in mask else v for k, v in weights.items()}
