"""Shared fixtures: small generated data sets, built once per session; and helpers the tests share."""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
from PIL import Image

CLASS_TINTS = ((200, 40, 40), (40, 200, 40), (40, 40, 200))  # class k dominates channel k


def ctrl_c_swallowed_then_a_worker_dies() -> None:
    """What a measurement does when a Ctrl-C lands as its workers start: this process's SIGINT is
    swallowed (as Python swallows it in an at-fork hook), then the measurement fails with the error of
    a worker that the Ctrl-C stopped."""
    from feeding.errors import FeedError

    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)  # the handler runs here
    except KeyboardInterrupt:
        pass  # swallowed
    raise FeedError("a data-loading worker died: DataLoader worker (pid(s) 1234) exited unexpectedly")


def textured_image(rng: np.random.Generator, tint, height: int = 512, width: int = 384) -> Image.Image:
    """A JPEG-realistic image: smooth noise over a tint, so every class has a dominant channel."""
    coarse = rng.normal(0, 40, size=(height // 16, width // 16, 3))
    texture = np.asarray(Image.fromarray(np.clip(coarse + 128, 0, 255).astype(np.uint8)).resize(
        (width, height), Image.BICUBIC), dtype=np.float32) - 128
    fine = rng.normal(0, 12, size=(height, width, 3))
    pixels = np.clip(np.asarray(tint, dtype=np.float32) + texture * 0.6 + fine, 0, 255)
    return Image.fromarray(pixels.astype(np.uint8))


def write_image_folder(root, per_class: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    for label, tint in enumerate(CLASS_TINTS):
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            textured_image(rng, tint).save(folder / f"img{i:03d}.jpg", quality=90)
    return root


def dominant_channel(images) -> np.ndarray:
    """Per image, the index of the channel with the largest mean (uint8 NCHW input)."""
    arr = np.asarray(images, dtype=np.float64)
    return arr.mean(axis=(2, 3)).argmax(axis=1)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """3 classes x 8 textured 384x512 JPEGs; class k is tinted towards channel k."""
    return write_image_folder(tmp_path_factory.mktemp("imagefolder"))


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory):
    """A small competition-layout sample (6 people x 7 images) from the real generator."""
    from feeding.sample import write_sample

    return write_sample(tmp_path_factory.mktemp("sample"), people=6, seed=0, eval_people=2)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Scans and transcodes go to a per-session temporary cache, never the user's."""
    monkeypatch.setenv("FEEDBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip cleanly, with a reason, where CUDA is not available."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marker: gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
