"""The backends, and what each one can do: callers ask this record instead of comparing names.

Importing this package imports no backend (DALI and Ray load in feeding.factory's branch that
needs them); the records below are plain data, cheap to read anywhere.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Capabilities:
    """What one backend can do (``capabilities(name)``)."""

    name: str
    workers: str  # what its ``workers`` are, for help and reports
    worker_unit: str  # one of them, singular ("worker", "thread", "actor")
    loads_in_main: bool  # workers=0 loads in the training process itself (DALI and Ray always run their own)
    gpu_decode: bool  # decodes on a CUDA device when asked (DALI's "mixed" decode)
    skips_in_batch: bool  # leaves a bad file out at run time; False: a validation scan drops bad files first
    stage_timers: bool  # its workers time read, decode, augment and collate per image (bench.stages)
    keeps_file_order: bool  # shuffle=False delivers the files in list order (what prediction relies on)
    needs_cluster: bool  # only worth measuring where a cluster answers (RAY_ADDRESS)
    jpeg_decoder: str  # "turbo" (libjpeg-turbo via simplejpeg), "pil", or its own ("dali")
    gpu_reserve_bytes: int = 0  # GPU memory its pools want beside the model when it decodes there
    install_hint: str = ""  # the package to install where it is optional

    def worker_ladder(self, workers_max: int, on_cpu: bool) -> list[int]:
        """The worker counts a search climbs: 0 (load in the training process: only worth it on the
        CPU, and only where the backend can), then 1, 2, 4, ... up to ``workers_max``."""
        ladder = [0] if on_cpu and self.loads_in_main else []
        workers = 1
        while workers <= workers_max:
            ladder.append(workers)
            workers *= 2
        if ladder[-1] != workers_max:
            ladder.append(workers_max)
        return ladder

    def fewest_workers(self, on_cpu: bool) -> int:
        """The smallest worker count the backend runs with here."""
        return 0 if on_cpu and self.loads_in_main else 1

    def decode_device(self, training_device: str) -> str:
        """Where it decodes when the model trains on ``training_device``: that GPU where it can, else the CPU."""
        return training_device if self.gpu_decode and str(training_device).startswith("cuda") else "cpu"

    def describe_decoder(self) -> str:
        """Which library decodes the JPEGs (what the planner chose), for reports."""
        from feeding import decode

        if self.jpeg_decoder == "turbo":
            return decode.jpeg_decoder()
        if self.jpeg_decoder == "pil":
            return decode.pil_build_line()
        return f"{self.name}'s own decoder"

    def missing_dependency(self) -> str | None:
        """Why the backend cannot run here (its optional package is not installed), or None."""
        if not self.install_hint:
            return None
        import importlib.util

        module = {"dali": "nvidia.dali", "ray": "ray"}[self.name]
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        return None if found else f"{self.name} needs {self.install_hint}"


_HOST = dict(workers="worker processes or threads", worker_unit="worker", loads_in_main=True, gpu_decode=False,
             skips_in_batch=True, stage_timers=True, keeps_file_order=True, needs_cluster=False)

BACKENDS: dict[str, Capabilities] = {
    "pil": Capabilities("pil", jpeg_decoder="pil", **_HOST),
    "albumentations": Capabilities("albumentations", jpeg_decoder="turbo", **_HOST),
    "dali": Capabilities(
        "dali", workers="DALI CPU threads", worker_unit="thread", loads_in_main=False, gpu_decode=True,
        skips_in_batch=False, stage_timers=False, keeps_file_order=False, needs_cluster=False, jpeg_decoder="dali",
        gpu_reserve_bytes=2 * 2**30,  # DALI's nvJPEG and device pools when it decodes on the training GPU
        install_hint="pip install nvidia-dali-cuda130"),
    "ray": Capabilities(
        "ray", workers="Ray Data actors", worker_unit="actor", loads_in_main=False, gpu_decode=False,
        skips_in_batch=True, stage_timers=False, keeps_file_order=False, needs_cluster=True,
        jpeg_decoder="turbo",  # its actors run the albumentations transform
        install_hint="pip install 'feedbench[ray]'"),
}
PIPELINES = tuple(BACKENDS)  # ray: the optional feedbench[ray] extra


def capabilities(pipeline: str) -> Capabilities:
    """The record of ``pipeline``; ValueError naming the known ones."""
    try:
        return BACKENDS[pipeline]
    except KeyError:
        raise ValueError(f"unknown pipeline {pipeline!r}; choose one of {', '.join(PIPELINES)}") from None
