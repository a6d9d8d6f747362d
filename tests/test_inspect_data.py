"""bench.inspect_data: the numbers, the report files, and clear errors on bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from bench.inspect_data import inspect_main
from feeding.sources import discover

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PEOPLE = 6


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """The competition sample (6 people) with one truncated JPEG, one small grayscale PNG named .jpg,
    one person short of mask5, and one file with an unknown name."""
    from feeding.sample import write_sample

    root = write_sample(tmp_path_factory.mktemp("inspect") / "masks", people=PEOPLE, seed=0, eval_people=0)
    people = sorted((root / "train" / "images").iterdir())
    truncated = people[0] / "mask2.jpg"
    truncated.write_bytes(truncated.read_bytes()[:5000])
    odd_png = people[1] / "normal.jpg"
    Image.open(odd_png).convert("L").resize((192, 256)).save(odd_png, format="PNG")
    (people[2] / "mask5.jpg").unlink()
    stray = people[3] / "selfie.jpg"
    stray.write_bytes((people[3] / "mask1.jpg").read_bytes())
    return {"root": root, "truncated": truncated, "odd_png": odd_png, "short": people[2], "stray": stray}


@pytest.fixture(scope="module")
def report(messy, tmp_path_factory):
    """inspect_main run once on ``messy``: its exit code, output folder and JSON."""
    out = tmp_path_factory.mktemp("results")
    code = inspect_main([str(messy["root"]), "--out", str(out), "--workers", "2"])
    stem = f"inspect-masks-{PEOPLE * 7 - 1}img"
    return {"code": code, "out": out, "stem": stem, "json": json.loads((out / f"{stem}.json").read_text())}


def test_class_counts_sum_to_the_images(report, messy):
    stats = report["json"]
    assert report["code"] == 0
    images = len(discover(messy["root"]))
    assert images == PEOPLE * 7 - 1
    assert sum(stats["classes"]["counts"]) == images == stats["dataset"]["images"]
    assert len(stats["classes"]["counts"]) == 18
    counts = stats["classes"]["counts"]
    assert stats["classes"]["imbalance_ratio"] == pytest.approx(max(counts) / min(counts), abs=0.01)


def test_mask_gender_age_from_the_labels(report, messy):
    competition = report["json"]["competition"]
    # Five masked photos a person, one incorrect, one without; one masked photo was removed.
    assert competition["mask"] == {"wear": 5 * PEOPLE - 1, "incorrect": PEOPLE, "not_wear": PEOPLE}
    assert sum(competition["gender"].values()) == sum(competition["age"].values()) == PEOPLE * 7 - 1
    people = competition["gender_age"]["people"]
    images = competition["gender_age"]["images"]
    assert sum(sum(row.values()) for row in people.values()) == PEOPLE
    assert sum(sum(row.values()) for row in images.values()) == PEOPLE * 7 - 1
    short_gender = messy["short"].name.split("_")[1]  # folders are <id>_<gender>_<race>_<age>
    for gender, row in people.items():
        assert sum(images[gender].values()) == sum(row.values()) * 7 - (gender == short_gender)


def test_images_per_person_lists_the_short_person(report, messy):
    per_person = report["json"]["per_person"]
    assert per_person["usual"] == 7 and per_person["people"] == PEOPLE
    assert per_person["histogram"] == [{"images": 6, "people": 1}, {"images": 7, "people": PEOPLE - 1}]
    [short] = per_person["deviations"]
    assert short["person"] == messy["short"].name
    assert short["images"] == 6 and short["missing"] == ["mask5"]


def test_unreadable_is_exactly_the_truncated_file_and_problems_the_stray(report, messy):
    stats = report["json"]
    assert [r["path"] for r in stats["unreadable"]] == [str(messy["truncated"])]
    assert "truncated" in stats["unreadable"][0]["reason"]
    assert [r["path"] for r in stats["problems"]] == [str(messy["stray"])]


def test_header_stats_see_the_odd_png(report, messy):
    files = report["json"]["files"]
    images = PEOPLE * 7 - 1
    assert files["readable"] == images  # the truncated JPEG's header is whole
    assert files["sizes"] == [{"width": 384, "height": 512, "images": images - 1},
                              {"width": 192, "height": 256, "images": 1}]
    assert files["modes"] == {"RGB": images - 1, "L": 1}
    assert files["formats"] == {"JPEG": images - 1, "PNG": 1}
    assert files["extension_mismatch"] == [{"path": str(messy["odd_png"]), "format": "PNG"}]
    assert sum(files["bytes"]["histogram"]["counts"]) == images
    assert files["bytes"]["min"] == 5000  # the truncated file


def test_report_files_markdown_and_provenance(report, messy):
    out, stem = report["out"], report["stem"]
    for plot in ("counts", "mask-gender-age", "per-person", "sizes", "bytes"):
        data = (out / f"{stem}-{plot}.png").read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000, plot
    markdown = (out / f"{stem}.md").read_text()
    for header in ("| class | images | share |", "| mask | images | share |", "| gender | <30 | 30-59 | >=60 |",
                   "| images | people |", "| width x height (px) | images | share |", "## Unreadable files",
                   "## What to do"):
        assert header in markdown, header
    assert str(messy["truncated"]) in markdown and str(messy["stray"]) in markdown
    assert f"![counts]({stem}-counts.png)" in markdown
    assert "macro-F1" in markdown and "--on-bad skip" in markdown
    record = report["json"]
    assert {"machine", "commit", "created"} <= set(record)
    assert record["machine"]["cores"] >= 1 and record["created"].endswith("+00:00")


def test_image_folder_has_class_counts_only(image_folder, tmp_path):
    assert inspect_main([str(image_folder), "--out", str(tmp_path), "--workers", "0"]) == 0
    [record_path] = tmp_path.glob("inspect-*.json")
    assert record_path.name == f"inspect-{image_folder.name}-24img.json"
    stats = json.loads(record_path.read_text())
    assert stats["classes"]["counts"] == [8, 8, 8] and stats["classes"]["imbalance_ratio"] == 1.0
    assert stats["competition"] is None and stats["per_person"] is None
    assert stats["unreadable"] == [] and stats["files"]["sizes"] == [{"width": 384, "height": 512, "images": 24}]
    markdown = record_path.with_suffix(".md").read_text()
    assert "## Classes" in markdown
    assert "## Mask" not in markdown and "## Images per person" not in markdown
    assert sorted(p.name.split("24img-")[1] for p in tmp_path.glob("*.png")) == ["bytes.png", "counts.png",
                                                                                 "sizes.png"]


@pytest.mark.parametrize("make_dir", ["missing", "empty"])
def test_bad_dir_exits_2_with_a_message(make_dir, tmp_path, capsys):
    data = tmp_path / "data"
    if make_dir == "empty":
        data.mkdir()
    assert inspect_main([str(data), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "error" in err and str(data) in err
    assert not (tmp_path / "out").exists()


def test_module_entry_point_reports_a_missing_dir_without_traceback(tmp_path):
    missing = tmp_path / "nowhere"
    result = subprocess.run([sys.executable, "-m", "bench.inspect_data", str(missing)], capture_output=True,
                            text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr
