import dataclasses

import numpy as np
import pytest

from conftest import attack_config as AttackConfig
from server.sampling import attack_stopped, is_attack_round, plan_round, sample_partitions
from server.update_stats import update_statistics


def test_sampling_is_seeded_distinct_and_sized():
    avail = list(range(100))
    a = sample_partitions(avail, 30, seed=7, server_round=3)
    assert a == sample_partitions(avail, 30, seed=7, server_round=3)
    assert len(a) == len(set(a)) == 30 and set(a) <= set(avail)
    assert a != sample_partitions(avail, 30, seed=7, server_round=4)
    assert a != sample_partitions(avail, 30, seed=8, server_round=3)


def test_sampling_takes_everyone_when_fewer_are_available():
    assert sample_partitions([5, 2, 9], 10, seed=0, server_round=1) == [2, 5, 9]


BENIGN, MALICIOUS = list(range(90)), list(range(90, 100))


def test_fixed_frequency_puts_one_attacker_in_the_reference_rounds():
    attack = AttackConfig(name="boosted", schedule="fixed_frequency", frequency=10)
    rounds = [r for r in range(1, 101)
              if set(plan_round(r, BENIGN, MALICIOUS, 30, attack, 0)) & set(MALICIOUS)]
    assert rounds == [r for r in range(1, 101) if (r - 1) % 10 == 5] == list(range(6, 101, 10))
    for r in rounds:
        plan = plan_round(r, BENIGN, MALICIOUS, 30, attack, 0)
        assert len(plan) == 30 and len(set(plan) & set(MALICIOUS)) == 1
    every = AttackConfig(name="boosted", schedule="fixed_frequency", frequency=1)
    assert all(is_attack_round(r, 1) for r in range(1, 20))
    assert all(len(set(plan_round(r, BENIGN, MALICIOUS, 30, every, 0)) & set(MALICIOUS)) == 1
               for r in range(1, 20))


def test_random_schedule_attackers_follow_the_hypergeometric_mean():
    attack = AttackConfig(name="boosted", schedule="random")
    counts = [len(set(plan_round(r, BENIGN, MALICIOUS, 30, attack, 0)) & set(MALICIOUS))
              for r in range(1, 2001)]
    # Hypergeometric: mean k m / K = 3, variance k (m/K)(1 - m/K)(K - k)/(K - 1) = 1.909.
    assert abs(np.mean(counts) - 3.0) < 0.12
    assert abs(np.var(counts) - 1.909) < 0.2


def test_no_schedule_or_attacks_off_means_benign_only():
    for attack, on in [(AttackConfig(), True),
                       (AttackConfig(name="boosted", schedule="random"), False)]:
        assert all(set(plan_round(r, BENIGN, MALICIOUS, 30, attack, 0, on)) <= set(BENIGN)
                   for r in range(1, 50))


@pytest.mark.parametrize("schedule", ["random", "fixed_frequency"])
def test_stop_round_ends_every_schedule_after_the_experiments_nth_round(schedule):
    # 5 pretraining rounds: the experiment's rounds are 6, 7, ...; stop_round=4 ends after 9.
    attack = AttackConfig(name="boosted", schedule=schedule, frequency=1, stop_round=4)
    attacked = [r for r in range(6, 30)
                if set(plan_round(r, BENIGN, MALICIOUS, 30, attack, 0, experiment_start=5))
                & set(MALICIOUS)]
    assert attacked and max(attacked) <= 9 and set(attacked) <= {6, 7, 8, 9}
    assert all(len(plan_round(r, BENIGN, MALICIOUS, 30, attack, 0, experiment_start=5)) == 30
               for r in range(10, 30))
    # The rounds before the stop are sampled exactly as without it.
    never = dataclasses.replace(attack, stop_round=0)
    assert all(plan_round(r, BENIGN, MALICIOUS, 30, attack, 0, experiment_start=5)
               == plan_round(r, BENIGN, MALICIOUS, 30, never, 0, experiment_start=5)
               for r in range(6, 10))
    assert any(set(plan_round(r, BENIGN, MALICIOUS, 30, never, 0)) & set(MALICIOUS)
               for r in range(10, 30))


def test_attack_stopped_counts_from_the_experiment_start():
    assert not any(attack_stopped(r, 0, 5) for r in range(1, 100))  # 0: never stop
    assert [r for r in range(1, 12) if not attack_stopped(r, 4, 5)] == list(range(1, 10))
    assert attack_stopped(5, 4) and not attack_stopped(4, 4)


def test_update_statistics():
    stats = update_statistics([1.0, 2.0, 3.0, 50.0], [False, False, False, True])
    assert stats["benign_norm_p50"] == 2.0 and stats["max_malicious_norm"] == 50.0
    assert update_statistics([1.0], [False])["max_malicious_norm"] is None
