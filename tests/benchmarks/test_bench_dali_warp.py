"""pytest-benchmark groups for the DALI graph's geometry, per batch on the CPU (``pytest --benchmark-only``).

The same 24 384x512 JPEGs through the step-by-step graph (each op's DALI form: ``fn.rotate``,
``fn.resize``, the flip folded into ``fn.crop_mirror_normalize``) and the fused one (one
``fn.warp_affine`` of the map built in the graph, then the antialiased resize of its canvas).
Compare within a group (a ratio in one run), never against numbers from another machine.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from feeding.plan import make_plan
from feeding.spec import AugSpec, CenterCrop, Resize, train_spec

pytest.importorskip("nvidia.dali")

BATCH = 8
THREADS = 2

GRAPHS = {"step by step (Op.dali forms)": 0, "one warp_affine": None}  # ``process_images``' fused argument


def batch_pipeline(files: list[str], spec: AugSpec, fused: int | None):
    """A CPU pipeline over ``files`` whose every ``run()`` makes one batch of ``spec``'s plan."""
    from nvidia.dali import fn, pipeline_def

    from feeding.backends.dali_graph import process_images

    steps = make_plan(spec).steps

    @pipeline_def(batch_size=BATCH, num_threads=THREADS, device_id=None, exec_dynamic=True, prefetch_queue_depth=1)
    def graph():
        encoded, _ = fn.readers.file(files=files, name="Reader")
        return process_images(encoded, steps, "cpu", fused)

    pipe = graph()
    pipe.build()
    pipe.run()  # the first batch allocates the buffers: outside the timing
    return pipe


def run_batch(pipe) -> tuple[int, ...]:
    (images,) = pipe.run()
    return tuple(np.asarray(images[0]).shape)


@pytest.fixture(scope="module")
def files(image_folder) -> list[str]:
    return sorted(str(path) for path in Path(image_folder).glob("*/*.jpg"))


@pytest.mark.benchmark(group="dali-geometry")
@pytest.mark.parametrize("graph", GRAPHS)
def test_dali_warp_written_order(benchmark, graph, files):
    """The benchmark spec: Rotate(10), Resize((224, 224)), HorizontalFlip(0.5), a batch of 8 on 2 threads."""
    pipe = batch_pipeline(files, train_spec((224, 224)), GRAPHS[graph])
    assert benchmark(run_batch, pipe) == (224, 224, 3)


@pytest.mark.benchmark(group="dali-geometry: Resize(256), CenterCrop(224), axis-aligned")
@pytest.mark.parametrize("graph", ["step by step (Op.dali forms)", "one warp_affine (forced)"])
def test_dali_warp_axis_aligned(benchmark, graph, files):
    """Why DALI leaves an axis-aligned plan step by step (``dali_graph.warp_steps``): there fn.resize and
    a crop are already one antialiased pass, which the warp and its canvas only add to."""
    pipe = batch_pipeline(files, AugSpec((Resize(256), CenterCrop(224))), 0 if graph.startswith("step") else 2)
    assert benchmark(run_batch, pipe) == (224, 224, 3)
