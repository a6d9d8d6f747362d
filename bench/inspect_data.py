"""``feedbench data inspect DIR``: what a data set holds, before any training run.

The exploration done by hand in the mask competition (class counts, gender and
age ratios, seven images a person, image sizes), written as numbers (JSON with
provenance), tables (Markdown) and plots (PNG) under ``results/``:
``inspect-<name>-<n>img.md``, ``.json`` and ``-<plot>.png``.

Sizes, modes and formats come from the image headers only; one full-decode
validation scan (``feeding.scan``, cached) finds the files that do not decode.

    feedbench data inspect DIR [--out results] [--workers 2] [--max-pixels N]
    python -m bench.inspect_data DIR [...]
"""
from __future__ import annotations

import argparse
import io
import os
import re
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np
from matplotlib.figure import Figure  # the object API: no pyplot, no display, no global backend switch
from PIL import Image
from tqdm import tqdm

from bench.io import write_atomic, write_json
from bench.args import non_negative_int, positive_int
from bench.provenance import display_path, provenance
from feeding.decode import IMAGE_OPEN_FORMATS, probe
from feeding.errors import BadImageError, FeedError
from feeding.feeder import DEFAULT_MAX_PIXELS
from feeding.scan import scan
from feeding.sources import AGE_NAMES, GENDER_NAMES, MASK_NAMES, MASK_STEMS, Samples, decode_label, discover

# The formats a file name promises; PIL and OpenCV read by content, so a mismatch is a note, not an error.
EXTENSION_FORMATS = {
    ".jpg": ("JPEG", "MPO"), ".jpeg": ("JPEG", "MPO"), ".png": ("PNG",), ".bmp": ("BMP",),
    ".ppm": ("PPM",), ".pgm": ("PPM",), ".tif": ("TIFF",), ".tiff": ("TIFF",), ".webp": ("WEBP",),
}  # fmt: skip
BYTE_BINS = 20
TOP_SIZES = 10  # distinct W x H rows in the Markdown
MARKDOWN_ROWS = 50  # longer lists are cut in the Markdown; the JSON keeps them whole
LABELLED_BARS = 60  # above this many classes the counts plot drops the class names
BALANCED_RATIO = 2.0  # a largest/smallest class ratio up to this counts as balanced


class Header(NamedTuple):
    """What one file's header says; None where the file or its header cannot be read."""

    bytes: int | None
    size: tuple[int, int] | None  # (width, height) in pixels as delivered, after EXIF orientation
    mode: str | None  # PIL mode: RGB, L, CMYK, P, RGBA, ...
    format: str | None  # JPEG, PNG, ...


def read_header(path: str, max_pixels: int) -> Header:
    """Byte size, delivered size, PIL mode and format, without decoding any pixel."""
    try:
        n_bytes = os.stat(path).st_size
    except OSError:
        return Header(None, None, None, None)
    try:
        height, width = probe(path, max_pixels)
    except BadImageError:
        return Header(n_bytes, None, None, None)  # the validation scan gives the reason
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL's notes on odd headers; probe has already accepted this one
        with Image.open(path, formats=IMAGE_OPEN_FORMATS) as image:
            return Header(n_bytes, (width, height), image.mode, image.format)


# ---------------------------------------------------------------- the numbers


def dataset_name(samples: Samples) -> str:
    """A short name for file names: the data folder (the competition's parent of train/), or the CSV's stem."""
    root = Path(samples.root)
    if samples.layout == "csv":
        name = root.stem
    elif samples.layout == "competition" and root.name.lower() == "train":
        name = root.parent.name
    else:
        name = root.name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "data"


def class_stats(samples: Samples) -> dict:
    counts = np.bincount(samples.labels, minlength=len(samples.classes))
    largest, smallest = int(counts.argmax()), int(counts.argmin())
    return {
        "names": list(samples.classes),
        "counts": counts.tolist(),
        "missing": [name for name, n in zip(samples.classes, counts) if n == 0],
        "largest": {"class": samples.classes[largest], "images": int(counts[largest])},
        "smallest": {"class": samples.classes[smallest], "images": int(counts[smallest])},
        # None when a class has no image: the ratio is unbounded.
        "imbalance_ratio": round(float(counts.max() / counts.min()), 2) if counts.min() > 0 else None,
    }


def _first_of_each_group(groups: np.ndarray) -> np.ndarray:
    return np.unique(groups, return_index=True)[1]


def competition_stats(samples: Samples, class_counts: list[int]) -> dict:
    """Images by mask, gender and age group, and people and images by gender x age group."""
    by_mask, by_gender, by_age = Counter(), Counter(), Counter()
    images = {gender: dict.fromkeys(AGE_NAMES, 0) for gender in GENDER_NAMES}
    for label, count in enumerate(class_counts):
        mask, gender, age = decode_label(label)
        by_mask[mask] += count
        by_gender[gender] += count
        by_age[age] += count
        images[gender][age] += count
    people = {gender: dict.fromkeys(AGE_NAMES, 0) for gender in GENDER_NAMES}
    for label in samples.labels[_first_of_each_group(samples.groups)].tolist():  # gender and age are a person's
        _, gender, age = decode_label(label)
        people[gender][age] += 1
    return {
        "mask": {name: by_mask[name] for name in MASK_NAMES},
        "gender": {name: by_gender[name] for name in GENDER_NAMES},
        "age": {name: by_age[name] for name in AGE_NAMES},
        "gender_age": {"images": images, "people": people},
    }


def person_stats(samples: Samples) -> dict | None:
    """Images per person and the people off the usual count; None where every image is its own group."""
    per_group = np.bincount(samples.groups)
    present = np.flatnonzero(per_group)
    if per_group.max(initial=0) <= 1:
        return None  # no person ids (ImageFolder, CSV without a group column)
    histogram = Counter(per_group[present].tolist())
    usual = max(histogram, key=lambda n: (histogram[n], n))
    order = np.argsort(samples.groups, kind="stable")
    starts = np.searchsorted(samples.groups[order], present)
    deviations = []
    for group, start in zip(present.tolist(), starts.tolist()):
        if per_group[group] == usual:
            continue
        paths = samples.paths[order[start : start + per_group[group]]].tolist()
        record = {"person": f"group {group}", "images": int(per_group[group]), "example": paths[0]}
        if samples.layout == "competition":
            record["person"] = Path(paths[0]).parent.name
            record["missing"] = sorted(set(MASK_STEMS) - {Path(p).stem.lower() for p in paths})
        deviations.append(record)
    return {
        "people": len(present),
        "histogram": [{"images": n, "people": histogram[n]} for n in sorted(histogram)],
        "usual": usual,
        "deviations": sorted(deviations, key=lambda r: r["person"]),
    }


def header_stats(paths: list[str], headers: list[Header]) -> dict:
    """Sizes, modes, formats and byte sizes over the files whose header reads."""
    readable = [h for h in headers if h.size is not None]
    sizes = Counter(h.size for h in readable)
    n_bytes = np.array([h.bytes for h in headers if h.bytes is not None], dtype=np.int64)
    mismatched = [
        {"path": path, "format": h.format}
        for path, h in zip(paths, headers)
        if h.format and h.format not in EXTENSION_FORMATS.get(Path(path).suffix.lower(), (h.format,))
    ]
    byte_stats = None
    if n_bytes.size:
        counts, edges = np.histogram(n_bytes, bins=BYTE_BINS)
        byte_stats = {
            "total": int(n_bytes.sum()),
            "min": int(n_bytes.min()),
            "median": float(np.median(n_bytes)),
            "mean": round(float(n_bytes.mean()), 1),
            "max": int(n_bytes.max()),
            "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
        }
    return {
        "readable": len(readable),
        "unreadable": len(headers) - len(readable),
        "sizes": [
            {"width": w, "height": h, "images": n}
            for (w, h), n in sorted(sizes.items(), key=lambda item: (-item[1], item[0]))
        ],
        "modes": dict(Counter(h.mode for h in readable).most_common()),
        "formats": dict(Counter(h.format for h in readable).most_common()),
        "extension_mismatch": mismatched,
        "bytes": byte_stats,
    }


def collect(samples: Samples, max_pixels: int, workers: int) -> dict:
    """Every number the report shows: counts from the labels, headers of every file, one validation scan.

    ``workers``: processes for the scan's full decode (0: in this process).
    Byte sizes are in bytes; image sizes in pixels (width, height).
    """
    paths = samples.paths.tolist()
    headers = [
        read_header(path, max_pixels)
        for path in tqdm(paths, desc="reading headers", unit="img", file=sys.stderr, disable=None)
    ]
    print(f"validating {len(paths)} files (each decoded once; verdicts cached) ...", file=sys.stderr)
    checked = scan(samples, max_pixels, workers=workers)
    classes = class_stats(samples)
    per_person = person_stats(samples)
    stats = {
        "dataset": {
            "name": dataset_name(samples),
            "root": display_path(samples.root),
            "layout": samples.layout,
            "images": len(samples),
            "classes": len(samples.classes),
            "people": per_person["people"] if per_person else None,
            "max_pixels": max_pixels,
        },
        "classes": classes,
        "competition": competition_stats(samples, classes["counts"]) if samples.layout == "competition" else None,
        "per_person": per_person,
        "files": header_stats(paths, headers),
        # scan() lists the listing problems first, then the files that do not decode.
        "unreadable": [record.to_dict() for record in checked.bad[len(samples.problems) :]],
        "problems": [record.to_dict() for record in samples.problems],
        "scan_cached": checked.cached,
    }
    stats["advice"] = advice(stats)
    return stats


# ---------------------------------------------------------------- what the numbers say


def imbalance_sentence(classes: dict, images: int) -> str:
    largest, smallest, ratio = classes["largest"], classes["smallest"], classes["imbalance_ratio"]
    if ratio is None:
        return (f"{len(classes['missing'])} class(es) have no image at all ({', '.join(classes['missing'])}): "
                "no model can learn them, and their F1 is 0 in a macro average.")
    if ratio <= BALANCED_RATIO:
        return f"Classes are roughly balanced (largest/smallest = {ratio:g}): accuracy and macro-F1 agree."
    return (
        f"The largest class ({largest['class']}, {largest['images']} images) has {ratio:g}x the images of the "
        f"smallest ({smallest['class']}, {smallest['images']}). A model that never predicts the smallest class "
        f"loses only {smallest['images'] / images:.1%} accuracy; macro-F1 averages the per-class F1 scores, so "
        "every class weighs the same. Judge models by macro-F1 (the competition's metric), not accuracy."
    )


def advice(stats: dict) -> list[str]:
    """Short, numbered-by-the-data suggestions: what to do about what was found."""
    classes, files, per_person = stats["classes"], stats["files"], stats["per_person"]
    tips = []
    ratio = classes["imbalance_ratio"]
    if classes["missing"]:
        tips.append(f"{len(classes['missing'])} class(es) have no image: collect some or merge classes "
                    f"({', '.join(classes['missing'][:5])}{' ...' if len(classes['missing']) > 5 else ''}).")
    if ratio is None or ratio > BALANCED_RATIO:
        shown = "unbounded" if ratio is None else f"{ratio:g}"
        tips.append(f"Imbalanced classes (largest/smallest {shown}): use a class-weighted loss (weights "
                    "proportional to 1/images) or a weighted sampler, pick models by macro-F1, and keep the class "
                    "mix in every fold (stratified splits).")
    if per_person:
        tips.append(f"Split train/validation by person (feeding.person_folds, person_split): a person's "
                    f"{per_person['usual']} images are near-duplicates, and a split by image inflates validation "
                    "F1 (0.998 against 0.70 on the hidden test set, in the mask competition).")
        if per_person["deviations"]:
            tips.append(f"Off the usual {per_person['usual']} images: {len(per_person['deviations'])} of "
                        f"{per_person['people']} people; check their folders (see 'Images per person').")
    if stats["unreadable"]:
        tips.append(f"{len(stats['unreadable'])} file(s) do not decode: run with --on-bad skip (the default) to "
                    "leave them out and list them, or replace them; --on-bad fail stops at the first.")
    if stats["problems"]:
        tips.append(f"{len(stats['problems'])} listing problem(s): those files are not used; rename or remove them.")
    sizes = files["sizes"]
    if len(sizes) == 1:
        tips.append(f"Every readable image is {sizes[0]['width']}x{sizes[0]['height']}: one resize or crop "
                    "setting fits all.")
    elif sizes:
        widths = [s["width"] for s in sizes]
        heights = [s["height"] for s in sizes]
        tips.append(f"{len(sizes)} distinct sizes (width {min(widths)}-{max(widths)}, height {min(heights)}-"
                    f"{max(heights)} px): every pipeline resizes to one --size, so mind the aspect ratios "
                    "(crop or squash).")
    other_modes = {mode: n for mode, n in files["modes"].items() if mode != "RGB"}
    if other_modes:
        listed = ", ".join(f"{mode}: {n}" for mode, n in other_modes.items())
        tips.append(f"{sum(other_modes.values())} image(s) are not RGB ({listed}): the loaders convert them to "
                    "8-bit RGB and drop alpha; nothing to do unless colour matters.")
    if files["extension_mismatch"]:
        tips.append(f"{len(files['extension_mismatch'])} file(s) hold another format than their extension says: "
                    "the loaders read by content, but other tools may not.")
    if not stats["unreadable"] and not stats["problems"]:
        tips.append("No unreadable files and no listing problems: nothing to clean.")
    return tips


# ---------------------------------------------------------------- plots


def _bar_chart(ax, labels: list, values: list, title: str, xlabel: str = "images") -> None:
    """Horizontal bars, first label on top, each bar with its value."""
    positions = np.arange(len(values))
    bars = ax.barh(positions, values, color="tab:blue")
    ax.set_yticks(positions, [str(label).replace("$", r"\$") for label in labels])  # '$' would start mathtext
    ax.invert_yaxis()
    ax.bar_label(bars, padding=2, fontsize=8)
    ax.margins(x=0.15)  # room for the value labels
    ax.set_title(title)
    ax.set_xlabel(xlabel)


def _counts_figure(classes: dict) -> Figure:
    names, counts = classes["names"], classes["counts"]
    if len(names) > LABELLED_BARS:
        fig = Figure(figsize=(8, 4))
        ax = fig.subplots()
        ax.bar(np.arange(len(counts)), sorted(counts, reverse=True), width=1.0, color="tab:blue")
        ax.set(title=f"images per class, {len(counts)} classes, sorted", xlabel="class rank", ylabel="images")
        return fig
    fig = Figure(figsize=(8, 1 + 0.3 * len(names)))
    _bar_chart(fig.subplots(), names, counts, "images per class")
    return fig


def _groups_figure(competition: dict) -> Figure:
    fig = Figure(figsize=(12, 3))
    for ax, key in zip(fig.subplots(1, 3), ("mask", "gender", "age")):
        _bar_chart(ax, list(competition[key]), list(competition[key].values()), f"images by {key}")
    return fig


def _per_person_figure(per_person: dict) -> Figure:
    rows = per_person["histogram"]
    fig = Figure(figsize=(6, 1 + 0.4 * len(rows)))
    _bar_chart(fig.subplots(), [f"{r['images']} images" for r in rows], [r["people"] for r in rows],
               "images per person", xlabel="people")
    return fig


def _sizes_figure(sizes: list[dict]) -> Figure:
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    counts = np.array([s["images"] for s in sizes], dtype=np.float64)
    area = 20 + 300 * counts / counts.max()
    ax.scatter([s["width"] for s in sizes], [s["height"] for s in sizes], s=area, alpha=0.6, color="tab:blue")
    for s in sizes[:TOP_SIZES]:
        ax.annotate(str(s["images"]), (s["width"], s["height"]), textcoords="offset points", xytext=(6, 4),
                    fontsize=8)
    ax.set(title="image sizes (marker area: images)", xlabel="width (px)", ylabel="height (px)")
    ax.margins(0.15)
    return fig


def _bytes_figure(byte_stats: dict) -> Figure:
    fig = Figure(figsize=(7, 3.5))
    ax = fig.subplots()
    histogram = byte_stats["histogram"]
    ax.stairs(histogram["counts"], np.asarray(histogram["edges"]) / 1024, fill=True, color="tab:blue")
    ax.set(title="file sizes", xlabel="KiB", ylabel="files")
    return fig


def figures(stats: dict) -> dict[str, Figure]:
    """Plot name (file suffix) -> figure, for the plots the data supports."""
    plots = {"counts": _counts_figure(stats["classes"])}
    if stats["competition"]:
        plots["mask-gender-age"] = _groups_figure(stats["competition"])
    if stats["per_person"]:
        plots["per-person"] = _per_person_figure(stats["per_person"])
    if stats["files"]["sizes"]:
        plots["sizes"] = _sizes_figure(stats["files"]["sizes"])
    if stats["files"]["bytes"]:
        plots["bytes"] = _bytes_figure(stats["files"]["bytes"])
    return plots


def _write_png(fig: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    return write_atomic(path, buffer.getvalue())


# ---------------------------------------------------------------- Markdown


def _cell(value) -> str:
    return str(value).replace("|", r"\|").replace("\n", " ")


def _table(headers: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return lines + ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows] + [""]


def _capped(rows: list, what: str) -> tuple[list, list[str]]:
    """The first MARKDOWN_ROWS rows, and a note when some were cut."""
    if len(rows) <= MARKDOWN_ROWS:
        return rows, []
    return rows[:MARKDOWN_ROWS], [f"... and {len(rows) - MARKDOWN_ROWS} more {what} (all in the JSON).", ""]


def _share(n: int, total: int) -> str:
    return f"{n / total:.1%}" if total else "-"


def _image(plots: dict[str, Path], name: str) -> list[str]:
    return [f"![{name}]({plots[name].name})", ""] if name in plots else []


def _competition_section(competition: dict, images: int, plots: dict[str, Path]) -> list[str]:
    people = competition["gender_age"]["people"]
    lines = ["## Mask, gender, age group", ""]
    lines += _table(["mask", "images", "share"],
                    [[name, n, _share(n, images)] for name, n in competition["mask"].items()])
    lines += _table(["gender", "images", "people"],
                    [[name, n, sum(people[name].values())] for name, n in competition["gender"].items()])
    lines += _table(["age group", "images", "people"],
                    [[name, n, sum(people[g][name] for g in GENDER_NAMES)] for name, n in competition["age"].items()])
    lines += ["People (images) by gender and age group:", ""]
    cells = competition["gender_age"]
    lines += _table(["gender", *AGE_NAMES],
                    [[g, *(f"{cells['people'][g][a]} ({cells['images'][g][a]})" for a in AGE_NAMES)]
                     for g in GENDER_NAMES])
    return lines + _image(plots, "mask-gender-age")


def _person_section(per_person: dict, plots: dict[str, Path]) -> list[str]:
    lines = ["## Images per person", ""]
    lines += _table(["images", "people"], [[r["images"], r["people"]] for r in per_person["histogram"]])
    deviations = per_person["deviations"]
    if not deviations:
        lines += [f"Every one of the {per_person['people']} people has {per_person['usual']} images.", ""]
    else:
        lines += [f"Off the usual {per_person['usual']} images: {len(deviations)} of {per_person['people']} people.",
                  ""]
        rows, note = _capped(deviations, "people")
        lines += _table(["person", "images", "missing", "example"],
                        [[r["person"], r["images"], ", ".join(r.get("missing", [])) or "-", r["example"]]
                         for r in rows]) + note
    return lines + _image(plots, "per-person")


def _files_section(files: dict, images: int, plots: dict[str, Path]) -> list[str]:
    lines = ["## Image files", "",
             f"Headers read: {files['readable']} of {images} ({files['unreadable']} unreadable).", ""]
    sizes = files["sizes"]
    if sizes:
        lines += [f"{len(sizes)} distinct size(s); the most common:", ""]
        lines += _table(["width x height (px)", "images", "share"],
                        [[f"{s['width']}x{s['height']}", s["images"], _share(s["images"], images)]
                         for s in sizes[:TOP_SIZES]])
        lines += _image(plots, "sizes")
        lines += _table(["mode", "images"], [[m, n] for m, n in files["modes"].items()])
        lines += _table(["format", "images"], [[f, n] for f, n in files["formats"].items()])
    if files["extension_mismatch"]:
        rows, note = _capped(files["extension_mismatch"], "files")
        lines += ["Content and extension disagree:", ""]
        lines += _table(["path", "format"], [[r["path"], r["format"]] for r in rows]) + note
    byte_stats = files["bytes"]
    if byte_stats:
        kib = {key: byte_stats[key] / 1024 for key in ("min", "median", "mean", "max")}
        lines += [f"File sizes: {byte_stats['total'] / 2**20:.1f} MiB in all; min {kib['min']:.1f} KiB, "
                  f"median {kib['median']:.1f} KiB, mean {kib['mean']:.1f} KiB, max {kib['max']:.1f} KiB.", ""]
        lines += _image(plots, "bytes")
    return lines


def _bad_files_section(title: str, records: list[dict], none: str) -> list[str]:
    lines = [f"## {title}", ""]
    if not records:
        return lines + [none, ""]
    rows, note = _capped(records, "files")
    return lines + _table(["path", "reason"], [[r["path"], r["reason"]] for r in rows]) + note


def render_markdown(stats: dict, info: dict, plots: dict[str, Path]) -> str:
    """The report: tables and sentences from ``stats``, plots linked by file name (same folder)."""
    data, classes = stats["dataset"], stats["classes"]
    images = data["images"]
    commit = info["commit"]
    commit_text = f"{(commit['id'] or 'no git')[:12]}{' (dirty)' if commit['dirty'] else ''}"
    lines = [
        f"# Data inspection: {data['name']}",
        "",
        f"- root: `{data['root']}` ({data['layout']} layout)",
        f"- {images} images, {data['classes']} classes"
        + (f", {data['people']} people" if data["people"] else ""),
        f"- created {info['created']}, commit {commit_text}, max_pixels {data['max_pixels']}",
        "",
        "## Classes",
        "",
    ]
    lines += _table(["class", "images", "share"],
                    [[name, n, _share(n, images)] for name, n in zip(classes["names"], classes["counts"])])
    lines += [imbalance_sentence(classes, images), ""]
    lines += _image(plots, "counts")
    if stats["competition"]:
        lines += _competition_section(stats["competition"], images, plots)
    if stats["per_person"]:
        lines += _person_section(stats["per_person"], plots)
    lines += _files_section(stats["files"], images, plots)
    lines += _bad_files_section("Unreadable files", stats["unreadable"], "None: every file decodes.")
    lines += _bad_files_section("Listing problems", stats["problems"], "None.")
    lines += ["## What to do", ""] + [f"- {tip}" for tip in stats["advice"]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- writing and the command


def report_tag(stats: dict) -> str:
    """The run's conditions for file names: '<dataset name>-<images>img'."""
    return f"{stats['dataset']['name']}-{stats['dataset']['images']}img"


def write_report(stats: dict, out_dir: Path, tag: str) -> list[Path]:
    """Write ``inspect-<tag>.md``, ``.json`` (stats plus provenance) and ``-<plot>.png``, each atomically.

    The plots go first and the Markdown last, so a Markdown file that exists has its images.
    """
    out_dir = Path(out_dir)
    stem = f"inspect-{tag}"
    info = provenance()
    plots = {name: _write_png(fig, out_dir / f"{stem}-{name}.png") for name, fig in figures(stats).items()}
    record = write_json(out_dir / f"{stem}.json", {**stats, **info})
    markdown = write_atomic(out_dir / f"{stem}.md", render_markdown(stats, info, plots).encode("utf-8"))
    return [markdown, record, *plots.values()]


def make_parser() -> argparse.ArgumentParser:

    parser = argparse.ArgumentParser(
        prog="feedbench data inspect",
        description="Class counts, people, image sizes and unreadable files of a data set, "
        "as Markdown, PNG plots and JSON.",
    )
    parser.add_argument("dir", help="competition layout, ImageFolder, or CSV manifest")
    parser.add_argument("--out", type=Path, default=Path("results"), help="report folder (default results/)")
    parser.add_argument("--workers", type=non_negative_int, default=2,
                        help="processes for the validation decode (0: in this process; default 2)")
    parser.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                        help=f"refuse images with more pixels (default {DEFAULT_MAX_PIXELS})")
    return parser


def summary(stats: dict) -> str:
    data, classes = stats["dataset"], stats["classes"]
    ratio = classes["imbalance_ratio"]
    return (f"{data['name']}: {data['images']} images, {data['classes']} classes, "
            f"largest/smallest class {'unbounded' if ratio is None else f'{ratio:g}'}, "
            f"{len(stats['unreadable'])} unreadable, {len(stats['problems'])} listing problem(s)")


def inspect_main(argv: list[str]) -> int:
    """``feedbench data inspect DIR [--out results] [--workers 2] [--max-pixels N]``; 2 on bad input."""
    args = make_parser().parse_args(argv)
    try:
        samples = discover(args.dir)
        stats = collect(samples, args.max_pixels, args.workers)
        written = write_report(stats, args.out, report_tag(stats))
    except (FeedError, ValueError) as error:
        print(f"feedbench data inspect: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"feedbench data inspect: error: cannot write the report to {args.out}: {error}", file=sys.stderr)
        return 2
    print(summary(stats))
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(inspect_main(sys.argv[1:]))
