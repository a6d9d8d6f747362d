import pytest

from feeding.errors import FeedError
from feeding.resources import batch_bytes, check_dali_memory, dali_held_bytes, fit_workers

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


def test_dali_holds_its_in_flight_batches_at_source_and_output_size():
    # prefetch 2: 3 batches in flight, each of 10 images decoded at 512x384 and resized to 224x224.
    assert dali_held_bytes(10, 2, (512, 384), (224, 224)) == 3 * 10 * 3 * (512 * 384 + 224 * 224)
    assert dali_held_bytes(20, 2, (512, 384), (224, 224)) == 2 * dali_held_bytes(10, 2, (512, 384), (224, 224))
    assert dali_held_bytes(10, 1, (4000, 3000), (224, 224)) > dali_held_bytes(10, 1, (512, 384), (224, 224))


def test_a_dali_batch_beyond_usable_memory_is_refused_in_one_line():
    # 100,000 images of 384x512: ~200 GiB in flight; half of 24 GiB is usable.
    with pytest.raises(FeedError) as raised:
        check_dali_memory(100_000, 2, (512, 384), (224, 224), free=24 * 2**30, where="RAM")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("DALI would hold ~")
    assert "for batch 100000 of up to 512x384 images (prefetch 2)" in message
    assert "12.0 GiB of RAM are usable: lower --batch" in message
    check_dali_memory(64, 2, (512, 384), (224, 224), free=24 * 2**30)  # ~0.2 GiB: fits
    check_dali_memory(100_000, 2, (512, 384), (224, 224), free=None)  # memory not known here: nothing to check
