import pytest

from bench.stages import bounding_stage, measure_stages, split_stages
from feeding import FeedConfig, create_feeder, discover
from feeding.spec import train_spec


def test_unaccounted_worker_time_is_ipc():
    # 2 workers at 400 img/s: 5 ms of worker time per image; the timers saw 4 ms of it.
    stages = split_stages({"read": 0.1, "decode": 0.2, "augment": 0.09, "collate": 0.01}, 100, 400.0, 2)
    assert stages["read"] == pytest.approx(1.0) and stages["decode"] == pytest.approx(2.0)
    assert stages["collate/IPC"] == pytest.approx(0.1 + 1.0)
    assert bounding_stage(stages) == "decode"
    with pytest.raises(ValueError, match="measure longer"):
        split_stages({"read": 0.0}, 0, 1.0, 1)


@pytest.mark.parametrize("pipeline", ["pil", "albumentations"])
def test_stage_breakdown_in_the_real_worker_setup(pipeline, image_folder):
    config = FeedConfig(pipeline=pipeline, batch_size=4, workers=2, spec=train_spec((64, 64)))
    with create_feeder(discover(image_folder), config) as feeder:
        measured, breakdown = measure_stages(feeder, batches=2, repeats=1, warmup=1)
    assert set(breakdown.ms_per_image) == {"read", "decode", "augment", "collate/IPC"}
    assert all(ms >= 0 for ms in breakdown.ms_per_image.values())
    assert breakdown.ms_per_image["decode"] > 0 and breakdown.ms_per_image["augment"] > 0
    assert breakdown.bottleneck in breakdown.ms_per_image
    assert breakdown.ram_cached_ips > 0 and 0 <= breakdown.storage_share <= 1
    assert feeder.dataset.transform.byte_cache is None  # the RAM copy is dropped afterwards


def test_dali_has_no_stage_timers(image_folder):
    pytest.importorskip("nvidia.dali")
    config = FeedConfig(pipeline="dali", batch_size=4, workers=1, spec=train_spec((64, 64)))
    with create_feeder(discover(image_folder), config) as feeder:
        with pytest.raises(ValueError, match="host pipelines only"):
            measure_stages(feeder, batches=1, repeats=1, warmup=0)
