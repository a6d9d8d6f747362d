import pytest

from feeding.errors import FeedError
from feeding.resources import batch_bytes, fit_workers

MiB = 2**20


def test_enough_memory_keeps_the_setting():
    budget = fit_workers(8, 2, 10 * MiB, shm=1024 * MiB, ram=4096 * MiB)
    assert (budget.workers, budget.prefetch_factor, budget.notes) == (8, 2, ())


def test_short_shm_reduces_prefetch_then_workers_and_says_why():
    budget = fit_workers(8, 2, 10 * MiB, shm=100 * MiB, ram=4096 * MiB)  # 50 MiB usable
    assert budget.workers * budget.prefetch_factor * 10 <= 50
    assert budget.prefetch_factor == 1 and budget.workers == 5
    assert "/dev/shm" in budget.notes[0] and "reduced to 5 workers" in budget.notes[0]


def test_hopeless_memory_is_a_clear_error():
    with pytest.raises(FeedError, match="shm-size"):
        fit_workers(2, 2, batch_bytes(64, 224, 224), shm=1 * MiB, ram=None)
