import numpy as np

from feeding import seeding


def test_worker_seeds_differ_across_workers_and_epochs_and_repeat_for_the_same_seed():
    seeds = {(e, w): seeding.worker_seed(7, e, w) for e in range(5) for w in range(8)}
    assert len(set(seeds.values())) == len(seeds)
    assert seeding.worker_seed(7, 3, 2) == seeds[(3, 2)]
    assert seeding.worker_seed(8, 3, 2) != seeds[(3, 2)]


def test_batch_streams_are_distinct_and_reproducible():
    first_draws = {seeding.batch_rng(0, e, b).random() for e in range(10) for b in range(50)}
    assert len(first_draws) == 500
    assert seeding.batch_rng(0, 2, 3).random() == seeding.batch_rng(0, 2, 3).random()


def test_epoch_permutations_change_per_epoch():
    a, b = seeding.epoch_permutation(100, 0, 0), seeding.epoch_permutation(100, 0, 1)
    assert sorted(a.tolist()) == list(range(100)) and not np.array_equal(a, b)
    assert np.array_equal(a, seeding.epoch_permutation(100, 0, 0))
