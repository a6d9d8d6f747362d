"""``pytest --benchmark-only`` runs the benchmark groups and prints their tables."""
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
                  "geometry 384x512 -> 224: one fused warp vs step by step", "JPEG decoder: full-size 384x512 to RGB",
                  "JPEG header: size and orientation",
                  "decode + warp of 24 different files: fresh vs reused memory",
                  "fused warp 384x512 -> 224: pixel format",
                  "collate: one 224x224 image into a batch of 64"):
        assert f"benchmark '{group}'" in result.stdout
