"""bench.inspect_data: the numbers, the report files, and clear errors on bad input."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.inspect_data import figures, inspect_main
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
    assert files["sizes"] == [{"height": 512, "width": 384, "images": images - 1},
                              {"height": 256, "width": 192, "images": 1}]
    assert files["modes"] == {"RGB": images - 1, "L": 1}
    assert files["formats"] == {"JPEG": images - 1, "PNG": 1}
    assert files["extension_mismatch"] == [{"path": str(messy["odd_png"]), "format": "PNG"}]
    assert sum(files["bytes"]["histogram"]["counts"]) == images
    assert files["bytes"]["min"] == 5000  # the truncated file


def test_report_files_markdown_and_provenance(report, messy):
    out, stem = report["out"], report["stem"]
    for plot in ("counts", "thumbnails", "mask-gender-age", "per-person", "sizes", "bytes"):
        data = (out / f"{stem}-{plot}.png").read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000, plot
    markdown = (out / f"{stem}.md").read_text()
    for header in ("| class | images | share |", "| mask | images | share |", "| gender | <30 | 30-59 | >=60 |",
                   "| images | people |", "| height x width (px) | images | share |", "## Unreadable files",
                   "## What to do"):
        assert header in markdown, header
    assert "| 512x384 | 40 |" in markdown and "| 256x192 | 1 |" in markdown  # height x width, as --size HxW
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
    assert stats["unreadable"] == [] and stats["files"]["sizes"] == [{"height": 512, "width": 384, "images": 24}]
    assert "Every readable image is 512x384 (height x width)" in " ".join(stats["advice"])
    assert stats["classes"]["suspected_typos"] == [] and stats["duplicates"] == []
    assert stats["files"]["outliers"] == []
    markdown = record_path.with_suffix(".md").read_text()
    assert "## Classes" in markdown
    assert "## Mask" not in markdown and "## Images per person" not in markdown
    assert "competition" not in markdown and "mask" not in markdown.lower()  # the user's data, not the competition
    assert sorted(p.name.split("24img-")[1] for p in tmp_path.glob("*.png")) == ["bytes.png", "counts.png",
                                                                                 "sizes.png", "thumbnails.png"]


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


# ---------------------------------------------------------------- a messy folder of the user's own


def _noise_jpeg(path: Path, rng: np.random.Generator, height: int = 48, width: int = 64) -> Path:
    """A JPEG of random pixels: every one has bytes of its own."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path, quality=90)
    return path


@pytest.fixture(scope="module")
def pets(tmp_path_factory):
    """ImageFolder: cat (6 + a copy of one of its own), dog (6 + one 1200x1600 giant + a copy of a cat),
    and 'cta', one image: a typo of cat."""
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("user") / "pets"
    for name in ("cat", "dog"):
        for i in range(6):
            _noise_jpeg(root / name / f"img{i:03d}.jpg", rng)
    typo = _noise_jpeg(root / "cta" / "img000.jpg", rng)
    giant = _noise_jpeg(root / "dog" / "giant.jpg", rng, height=1200, width=1600)
    shutil.copyfile(root / "cat" / "img000.jpg", root / "dog" / "copy_of_cat.jpg")
    shutil.copyfile(root / "cat" / "img001.jpg", root / "cat" / "again.jpg")
    out = tmp_path_factory.mktemp("pets-report")
    code = inspect_main([str(root), "--out", str(out), "--workers", "0"])
    [record] = out.glob("inspect-pets-*.json")
    return {"root": root, "typo": typo, "giant": giant, "code": code, "out": out,
            "json": json.loads(record.read_text()), "markdown": record.with_suffix(".md").read_text()}


def test_a_typo_class_is_flagged_and_not_taken_for_imbalance(pets):
    assert pets["code"] == 0
    classes = pets["json"]["classes"]
    assert classes["names"] == ["cat", "cta", "dog"] and classes["counts"] == [7, 1, 8]
    assert classes["suspected_typos"] == [{"class": "cta", "images": 1, "like": "cat", "like_images": 7,
                                           "paths": [str(pets["typo"])]}]
    assert classes["smallest"] == {"class": "cat", "images": 7}  # cta is a labelling error, not a small class
    assert classes["imbalance_ratio"] == pytest.approx(8 / 7, abs=0.01)
    advice = " ".join(pets["json"]["advice"])
    assert "class-weighted" not in advice and "Imbalanced" not in advice
    assert "Class 'cta' has 1 image(s) and is named like 'cat'" in advice and str(pets["typo"]) in advice
    assert "Suspected label typos" in pets["markdown"]


def test_size_and_byte_outliers_are_named_with_hxw_and_bytes(pets):
    [outlier] = pets["json"]["files"]["outliers"]
    giant = pets["giant"]
    assert outlier == {"path": str(giant), "height": 1200, "width": 1600, "bytes": giant.stat().st_size,
                       "by": ["pixels", "bytes"]}
    assert f"| {giant} | 1200x1600 | {giant.stat().st_size} | pixels, bytes |" in pets["markdown"]


def test_axes_go_logarithmic_where_one_outlier_squashes_them(pets):
    stats = pets["json"]
    assert stats["files"]["bytes"]["log_scale"]
    plots = figures(stats)
    assert plots["bytes"].axes[0].get_xscale() == "log"
    sizes = plots["sizes"].axes[0]
    assert sizes.get_xscale() == sizes.get_yscale() == "log"  # 1600 px wide against a median of 64
    assert plots["counts"].axes[0].get_xscale() == "linear"  # 8 images at most against a median of 7


def test_exact_duplicates_are_listed_and_a_cross_class_copy_is_a_label_conflict(pets):
    root = pets["root"]
    assert pets["json"]["duplicates"] == [
        {"paths": [str(root / "cat" / "again.jpg"), str(root / "cat" / "img001.jpg")],
         "bytes": (root / "cat" / "again.jpg").stat().st_size, "classes": ["cat", "cat"], "label_conflict": False},
        {"paths": [str(root / "cat" / "img000.jpg"), str(root / "dog" / "copy_of_cat.jpg")],
         "bytes": (root / "cat" / "img000.jpg").stat().st_size, "classes": ["cat", "dog"], "label_conflict": True},
    ]
    assert "## Duplicate files" in pets["markdown"] and "| cat, dog |" in pets["markdown"]
    assert "1 duplicate set(s) carry different labels" in " ".join(pets["json"]["advice"])


def test_thumbnail_sheet_has_a_row_per_class_from_the_files(pets):
    picks = pets["json"]["thumbnails"]
    assert {name: len(paths) for name, paths in picks.items()} == {"cat": 7, "cta": 1, "dog": 8}
    assert all(Path(path).is_file() for paths in picks.values() for path in paths)
    sheet = figures(pets["json"])["thumbnails"]
    rows = [sheet.axes[i : i + 8] for i in range(0, len(sheet.axes), 8)]
    assert [row[0].get_ylabel() for row in rows] == ["cat", "cta", "dog"]
    assert [sum(bool(ax.images) for ax in row) for row in rows] == [7, 1, 8]
    assert [ax.images[0].get_array().shape[:2] for ax in rows[2][:2]] == [(48, 64), (72, 96)]  # the giant, shrunk
    png = next(pets["out"].glob("inspect-pets-*-thumbnails.png")).read_bytes()
    assert png.startswith(PNG_MAGIC)
    assert "![thumbnails](" in pets["markdown"]


def test_a_manifest_typo_row_is_reported_and_copies_across_groups_are_a_leak(pets, tmp_path, capsys):
    root = pets["root"]
    manifest = tmp_path / "labels.csv"
    rows = [("cat/img000.jpg", "0", "p1"), ("cat/img002.jpg", "0", "p1"), ("dog/copy_of_cat.jpg", "0", "p2"),
            ("dog/img000.jpg", "1", "p2"), ("dog/img001.jpg", "kitty", "p3"), ("dog/img002.jpg", "1", "p3")]
    manifest.write_text("path,label,group\n" + "".join(f"{root / p},{label},{g}\n" for p, label, g in rows))
    out = tmp_path / "out"
    assert inspect_main([str(manifest), "--out", str(out), "--workers", "0"]) == 0
    stats = json.loads(next(out.glob("inspect-labels-*.json")).read_text())
    [problem] = stats["problems"]
    assert problem["path"] == f"{manifest}:6" and "'kitty'" in problem["reason"]
    [copies] = stats["duplicates"]
    assert copies["groups"] == ["group 0", "group 1"] and copies["group_leak"] and not copies["label_conflict"]
    markdown = next(out.glob("inspect-labels-*.md")).read_text()
    assert f"{manifest}:6" in markdown and "## Images per group" in markdown and "in different groups" in markdown
    assert "people" not in markdown and "competition" not in markdown  # its wording is about the user's groups


def test_the_report_names_files_under_the_cache_as_cache_not_as_this_machines_path(messy, tmp_path, monkeypatch):
    monkeypatch.setenv("FEEDBENCH_CACHE", str(messy["root"].parent))  # the data now lies in the cache
    out = tmp_path / "results"
    assert inspect_main([str(messy["root"]), "--out", str(out), "--workers", "0"]) == 0
    [record] = out.glob("inspect-*.json")
    text, markdown = record.read_text(), record.with_suffix(".md").read_text()
    machine_dir = str(messy["root"].parent.resolve())
    assert machine_dir not in text and machine_dir not in markdown
    stats = json.loads(text)
    assert all(path.startswith("<cache>/masks/") for paths in stats["thumbnails"].values() for path in paths)
    assert stats["unreadable"][0]["path"] == "<cache>/masks/" + str(messy["truncated"].relative_to(messy["root"]))
    assert "<cache>/masks/" in markdown
