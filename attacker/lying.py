"""What a malicious node answers in the pruning rounds (Wu et al., "Possible attacks"): pure
transforms of its honest answer. Imported only on malicious nodes.

- ``reverse``: the honest activations negated, so its ranking (or keep votes) is reversed: the
  channels clean data uses most are offered up for pruning first.
- ``keep_backdoor``: the attacker measures its channels on its own triggered images; it reports
  each channel's excess activation under the trigger, so the channels its backdoor relies on
  look the busiest and are ranked (or voted) to be kept.
- ``false_accuracy``: in client-reported stopping, the unpruned candidate keeps its honest
  accuracy and every other candidate is reported at 0, to stop pruning (and adjustment) at once.
"""

from __future__ import annotations

import torch

ACTIVATION_LIES = ("reverse", "keep_backdoor")


def lie_activations(honest: torch.Tensor, triggered: torch.Tensor | None,
                    kind: str) -> torch.Tensor:
    """The activations a liar of ``kind`` reports instead of ``honest``."""
    if kind == "reverse":
        return -honest
    if kind == "keep_backdoor":
        if triggered is None:
            raise ValueError("keep_backdoor needs the activations on triggered images")
        return triggered - honest
    return honest


def lie_accuracies(honest: list[float], kind: str) -> list[float]:
    """The candidate accuracies a liar of ``kind`` reports (candidate 0 is the unchanged model)."""
    if kind != "false_accuracy" or not honest:
        return list(honest)
    return [honest[0]] + [0.0] * (len(honest) - 1)
