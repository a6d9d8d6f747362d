"""``pytest --benchmark-only`` runs the benchmark groups and prints their tables."""
import importlib.util
import subprocess
import sys
from pathlib import Path


def test_benchmark_only_prints_grouped_tables():
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/benchmarks", "--benchmark-only", "-q", "-p", "no:cacheprovider",
         "--benchmark-min-rounds=1", "--benchmark-max-time=0.01", "--benchmark-warmup=off",
         "--benchmark-columns=min,median,max,rounds", "-k", "not feeder"],
        cwd=root, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for group in ("decode 384x512 JPEG", "PIL: rotate and resize order", "device step: uint8 -> normalized float",
                  "JPEG decoder: full-size 384x512 to RGB",
                  "written order Rotate, Resize, Flip 384x512 -> 224: decode + geometry",
                  "antialiased shrink of the warp canvas 512x384 -> 224x224",
                  "JPEG DCT scaling for a 112x112 output: what the decode costs", "ColorJitter on 224x224 uint8",
                  "RandomResizedCrop + flip + ColorJitter: decode + augment", "JPEG header with EXIF orientation",
                  *(["dali-geometry"] if importlib.util.find_spec("nvidia.dali") else []),
                  "JPEG header: size and orientation",
                  "decode + warp of 24 different files: fresh vs reused memory",
                  "fused warp 384x512 -> 224: pixel format",
                  "collate: one 224x224 image into a batch of 64"):
        assert f"benchmark '{group}'" in result.stdout
