"""The scripts that turn measurements into results/ tables: scripts/benchmarks_table.py, and the
regime rows of scripts/verdict_regimes.py."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _bench(group, name, median):
    stats = {"min": median * 0.9, "median": median, "mean": median, "max": median * 1.2, "stddev": 0.0,
             "rounds": 7}
    return {"group": group, "name": name, "stats": stats}


def test_benchmark_table_sorts_each_group_and_gives_ratios_to_its_fastest(tmp_path):
    table = _script("benchmarks_table")
    raw = {"benchmarks": [_bench("decode", "test_decode[pil]", 2e-3), _bench("decode", "test_decode[turbo]", 1e-3),
                          _bench("warp", "test_warp[rgbx]", 112e-6)],
           "machine_info": {"node": "a-host-name"}}
    path = tmp_path / "raw.json"
    path.write_text(json.dumps(raw))
    assert table.main([str(path), str(tmp_path)]) == 0
    md = next(tmp_path.glob("benchmarks-*c.md")).read_text()
    decode_lines = [line for line in md.splitlines() if line.startswith("| decode |")]
    assert "test_decode[turbo]" in decode_lines[0] and "| 1.00 |" in decode_lines[0]
    assert "test_decode[pil]" in decode_lines[1] and "| 2.00 |" in decode_lines[1] and "2 ms" in decode_lines[1]
    assert "112 µs" in md
    written = json.loads(next(tmp_path.glob("benchmarks-*c.json")).read_text())
    assert "a-host-name" not in json.dumps(written) and written["commit"]["id"]
    assert [b["name"] for b in written["benchmarks"]] == [b["name"] for b in raw["benchmarks"]]


def test_benchmark_table_refuses_a_file_without_benchmarks(tmp_path, capsys):
    path = tmp_path / "raw.json"
    path.write_text(json.dumps({"benchmarks": []}))
    assert _script("benchmarks_table").main([str(path), str(tmp_path)]) == 1
    assert "--benchmark-only" in capsys.readouterr().err


@pytest.mark.parametrize("multiple, named, wait, right", [
    (0.3, "model", 0.05, True), (0.3, "input", 0.05, False),  # below the ceiling the model binds
    (0.3, "model", 0.40, False),  # named model, but the loop waited: the regime was not reached
    (3.0, "input", 0.60, True), (3.0, "model", 0.60, False), (1.0, "input", 0.2, True)])
def test_a_regime_row_is_right_only_when_name_regime_and_loop_agree(multiple, named, wait, right):
    regimes = _script("verdict_regimes")
    record = {"bottleneck_stage": named, "data_wait_fraction": wait, "measured_ips": 90.0, "predicted_ips": 100.0,
              "model": "resnet18", "pipeline": "albumentations", "workers": 2, "batch": 64, "size": [224, 224],
              "stages": {}, "feed_ceiling_ips": 800.0}
    row = regimes.row("sample", "sim:240", multiple, record)
    assert row["right"] is right
    assert row["error"] == pytest.approx(-0.1) and row["within_tolerance"]


def test_antialias_budget_scores_the_shipped_path_as_the_fidelity_table_does(tmp_path, sample_dir, monkeypatch):
    budget = _script("antialias_budget")
    from bench.fidelity import measure
    from feeding import discover

    photos = [str(path) for path in discover(str(sample_dir)).paths[::7]]  # the suite's small sample, not the 420
    monkeypatch.setattr(budget, "sample_files", lambda count: photos[:count])
    assert budget.main([str(tmp_path), "--images", "4", "--rounds", "3"]) == 0
    report = json.loads(next(tmp_path.glob("antialias-budget-*c.json")).read_text())
    rows = {row["name"]: row for row in report["rows"]}
    assert list(rows) == [way.name for way in budget.WAYS]
    assert rows["decode only"]["ceiling_x_decode_only"] == 1.0 and "sample" not in rows["decode only"]
    # The shipped row is feedbench's own transform: the fidelity table's albumentations score on the same files.
    scored = measure(budget.sample_files(4), budget.SPEC, names=("feedbench albumentations",))[0]
    assert rows["feedbench (shipped)"]["sample"]["median_db"] == pytest.approx(scored["median_db"])
    # The filter is what the picture needs: without it, fine detail aliases well below the target.
    shipped, unfiltered = rows["feedbench (shipped)"]["detail"], rows["no filter"]["detail"]
    assert unfiltered["worst_db"] < budget.TARGET[1] <= shipped["worst_db"]
    md = next(tmp_path.glob("antialias-budget-*c.md")).read_text()
    assert f"{report['budget_ms']:.2f} ms per image" in md and md.count("\n| ") == len(rows) + 1


def test_antialias_budget_names_only_the_ways_that_meet_both_targets():
    budget = _script("antialias_budget")
    good = {"median_db": 40.0, "worst_db": 35.0}
    fast = {"ceiling_x_naive": 2.6, "ceiling_x_decode_only": 0.8}
    assert budget.meets({"sample": good, **fast}) == (True, True)
    assert budget.meets({"sample": {"median_db": 40.0, "worst_db": 32.9}, **fast}) == (False, True)
    assert budget.meets({"sample": good, "ceiling_x_naive": 2.6, "ceiling_x_decode_only": 0.69}) == (True, False)
    assert budget.meets({**fast}) == (False, True)  # the floor has no picture to score
