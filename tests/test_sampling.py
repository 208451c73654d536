from server.sampling import sample_partitions


def test_sampling_is_seeded_distinct_and_sized():
    avail = list(range(100))
    a = sample_partitions(avail, 30, seed=7, server_round=3)
    assert a == sample_partitions(avail, 30, seed=7, server_round=3)
    assert len(a) == len(set(a)) == 30 and set(a) <= set(avail)
    assert a != sample_partitions(avail, 30, seed=7, server_round=4)
    assert a != sample_partitions(avail, 30, seed=8, server_round=3)


def test_sampling_takes_everyone_when_fewer_are_available():
    assert sample_partitions([5, 2, 9], 10, seed=0, server_round=1) == [2, 5, 9]


def test_every_partition_gets_sampled_over_rounds():
    seen = set()
    for rnd in range(1, 60):
        seen |= set(sample_partitions(list(range(50)), 5, 0, rnd))
    assert seen == set(range(50))
