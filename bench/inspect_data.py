"""``feedbench data inspect DIR``: what a data set holds, before any training run.

Class counts (and labels that look like typos), people or groups, image sizes
(height x width) with their outliers, exact-duplicate files (and the labels or
groups they disagree on), a thumbnail sheet per class, and the files and rows
that cannot be used; for the mask competition's layout also the mask, gender
and age ratios. Written as numbers (JSON with provenance), tables (Markdown)
and plots (PNG) under ``results/``: ``inspect-<name>-<n>img.md``, ``.json``
and ``-<plot>.png``.

Sizes, modes and formats come from the image headers only; one full-decode
validation scan (``feeding.scan``, cached) finds the files that do not decode.
Only files that share a byte size with another are hashed.

    feedbench data inspect DIR [--out results] [--workers 2] [--max-pixels N]
    python -m bench.inspect_data DIR [...]
"""
from __future__ import annotations

import argparse
import difflib
import hashlib
import io
import os
import re
import sys
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from matplotlib.figure import Figure  # the object API: no pyplot, no display, no global backend switch
from PIL import Image
from tqdm import tqdm

from feeding.options import HelpFormatter, non_negative_int, positive_int
from feeding.io import write_atomic, write_json
from bench.provenance import provenance
from feeding.io import display_path
from feeding.decode import IMAGE_OPEN_FORMATS, load_pil, probe
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
TOP_SIZES = 10  # distinct height x width rows in the Markdown
MARKDOWN_ROWS = 50  # longer lists are cut in the Markdown; the JSON keeps them whole
LABELLED_BARS = 60  # above this many classes the counts plot drops the class names
BALANCED_RATIO = 2.0  # a largest/smallest class ratio up to this counts as balanced
# A suspected label typo: a class of at most TYPO_MAX_IMAGES images (or under TYPO_MEDIAN_SHARE of the
# median class), under half the median, whose name is close (difflib ratio) to a bigger class's name.
TYPO_MAX_IMAGES = 2
TYPO_MEDIAN_SHARE = 0.05
TYPO_NAME_SIMILARITY = 0.6  # difflib's own default; "cta" ~ "cat" is 0.67, "dog" ~ "cat" is 0
TYPO_FILES_SHOWN = 5
# An outlier (pixel count or bytes): beyond Q1 - 3 IQR or Q3 + 3 IQR, and at least 2x off the median
# (where most images share one size the IQR is 0, and a few pixels of difference are no outlier).
OUTLIER_IQR = 3.0
OUTLIER_FACTOR = 2.0
LOG_SCALE_RATIO = 20.0  # a plot axis goes logarithmic when max / median exceeds this
THUMBNAILS_PER_CLASS = 8
THUMBNAIL_CLASSES = 40  # rows on the thumbnail sheet; more would not be readable
THUMBNAIL_PX = 96  # longest side of a thumbnail, pixels
HASH_CHUNK = 1 << 20  # bytes read at a time while hashing


class Header(NamedTuple):
    """What one file's header says; None where the file or its header cannot be read."""

    bytes: int | None
    size: tuple[int, int] | None  # (height, width) in pixels as delivered, after EXIF orientation
    mode: str | None  # PIL mode: RGB, L, CMYK, P, RGBA, ...
    format: str | None  # JPEG, PNG, ...


def read_header(path: str, max_pixels: int) -> Header:
    """Byte size, delivered size (height, width), PIL mode and format, without decoding any pixel."""
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
            return Header(n_bytes, (height, width), image.mode, image.format)


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


def _is_typo_sized(count: int, median: float) -> bool:
    """Few images, against the median class: 1-2 images, or under 5% of the median."""
    few = count <= TYPO_MAX_IMAGES or count < TYPO_MEDIAN_SHARE * median
    return 0 < count < median / 2 and few


def suspected_typos(samples: Samples, counts: np.ndarray) -> list[dict]:
    """Classes that look like a mistyped label: very few images, and named like a bigger class.

    Only for class names the user wrote (folder names, manifest labels): the competition's
    classes are built from its columns, and integer labels are indices, not names.
    """
    names = samples.classes
    if samples.layout == "competition" or all(name.isdigit() for name in names):
        return []
    median = float(np.median(counts[counts > 0])) if counts.any() else 0.0
    typos = []
    for index, (name, count) in enumerate(zip(names, counts.tolist())):
        if not _is_typo_sized(count, median):
            continue
        bigger = {other.lower(): other for other, n in zip(names, counts.tolist()) if n > count and other != name}
        match = difflib.get_close_matches(name.lower(), list(bigger), n=1, cutoff=TYPO_NAME_SIMILARITY)
        if match:
            like = bigger[match[0]]
            typos.append({"class": name, "images": count, "like": like, "like_images": int(counts[names.index(like)]),
                          "paths": samples.paths[samples.labels == index].tolist()})
    return typos


def class_stats(samples: Samples) -> dict:
    """Images per class; largest, smallest and their ratio over the classes that are not suspected typos."""
    counts = np.bincount(samples.labels, minlength=len(samples.classes))
    typos = suspected_typos(samples, counts)
    typo_names = {typo["class"] for typo in typos}
    # A mistyped label is a labelling error to fix, not a class to reweight: leave it out of the ratio.
    kept = np.array([i for i, name in enumerate(samples.classes) if name not in typo_names])
    largest, smallest = int(kept[counts[kept].argmax()]), int(kept[counts[kept].argmin()])
    return {
        "names": list(samples.classes),
        "counts": counts.tolist(),
        "missing": [name for name, n in zip(samples.classes, counts) if n == 0],
        "suspected_typos": typos,
        "largest": {"class": samples.classes[largest], "images": int(counts[largest])},
        "smallest": {"class": samples.classes[smallest], "images": int(counts[smallest])},
        # None when a class has no image: the ratio is unbounded.
        "imbalance_ratio": round(float(counts[largest] / counts[smallest]), 2) if counts[smallest] > 0 else None,
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


def is_squashed(values) -> bool:
    """True where one large value would squash a linear axis: max / median above LOG_SCALE_RATIO."""
    values = np.asarray(values, dtype=np.float64)
    values = values[values > 0]
    return bool(values.size) and float(values.max()) > LOG_SCALE_RATIO * float(np.median(values))


def outlier_mask(values: np.ndarray) -> np.ndarray:
    """Which values lie beyond Q1 - 3 IQR / Q3 + 3 IQR and at least 2x off the median."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 3:
        return np.zeros(values.shape, dtype=bool)
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    spread = OUTLIER_IQR * (q3 - q1)
    beyond_fences = (values < q1 - spread) | (values > q3 + spread)
    far_from_median = (values > OUTLIER_FACTOR * median) | (values * OUTLIER_FACTOR < median)
    return beyond_fences & far_from_median


def outliers(paths: list[str], headers: list[Header]) -> list[dict]:
    """The files whose pixel count or byte size is far off the rest: path, height, width, bytes, by what."""
    sized = [i for i, h in enumerate(headers) if h.size is not None]
    weighed = [i for i, h in enumerate(headers) if h.bytes is not None]
    by_what = defaultdict(list)
    pixels = np.array([headers[i].size[0] * headers[i].size[1] for i in sized], dtype=np.float64)
    for i in np.asarray(sized)[outlier_mask(pixels)].tolist():
        by_what[i].append("pixels")
    n_bytes = np.array([headers[i].bytes for i in weighed], dtype=np.float64)
    for i in np.asarray(weighed)[outlier_mask(n_bytes)].tolist():
        by_what[i].append("bytes")
    records = []
    for i in sorted(by_what):
        height, width = headers[i].size or (None, None)
        records.append({"path": paths[i], "height": height, "width": width, "bytes": headers[i].bytes,
                        "by": by_what[i]})
    return records


def byte_stats(n_bytes: np.ndarray) -> dict | None:
    """Total, min, median, mean, max (bytes) and a histogram; log-spaced bins where one file squashes it."""
    if not n_bytes.size:
        return None
    log_scale = is_squashed(n_bytes) and n_bytes.min() > 0
    bins = np.geomspace(n_bytes.min(), n_bytes.max(), BYTE_BINS + 1) if log_scale else BYTE_BINS
    counts, edges = np.histogram(n_bytes, bins=bins)
    return {
        "total": int(n_bytes.sum()),
        "min": int(n_bytes.min()),
        "median": float(np.median(n_bytes)),
        "mean": round(float(n_bytes.mean()), 1),
        "max": int(n_bytes.max()),
        "log_scale": bool(log_scale),
        "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
    }


def header_stats(paths: list[str], headers: list[Header]) -> dict:
    """Sizes (height x width, pixels), modes, formats, byte sizes and outliers over the files whose header reads."""
    readable = [h for h in headers if h.size is not None]
    sizes = Counter(h.size for h in readable)
    mismatched = [
        {"path": path, "format": h.format}
        for path, h in zip(paths, headers)
        if h.format and h.format not in EXTENSION_FORMATS.get(Path(path).suffix.lower(), (h.format,))
    ]
    return {
        "readable": len(readable),
        "unreadable": len(headers) - len(readable),
        "sizes": [
            {"height": h, "width": w, "images": n}
            for (h, w), n in sorted(sizes.items(), key=lambda item: (-item[1], item[0]))
        ],
        "modes": dict(Counter(h.mode for h in readable).most_common()),
        "formats": dict(Counter(h.format for h in readable).most_common()),
        "extension_mismatch": mismatched,
        "bytes": byte_stats(np.array([h.bytes for h in headers if h.bytes is not None], dtype=np.int64)),
        "outliers": outliers(paths, headers),
    }


def file_digest(path: str) -> str | None:
    """BLAKE2b of the file's bytes (hex), or None where it cannot be read."""
    digest = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(HASH_CHUNK), b""):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def _group_name(samples: Samples, index: int) -> str:
    if samples.layout == "competition":
        return Path(samples.paths[index]).parent.name  # the person's folder
    return f"group {samples.groups[index]}"


def duplicates(samples: Samples, headers: list[Header], has_groups: bool) -> list[dict]:
    """Sets of files with the same bytes: paths, classes, and whether they disagree on the label or group.

    Only files that share a byte size with another can be equal, so only those are hashed.
    ``has_groups``: the samples carry person or group ids, so a copy in two groups leaks across a split.
    """
    by_size = defaultdict(list)
    for index, header in enumerate(headers):
        if header.bytes:
            by_size[header.bytes].append(index)
    same_size = sorted(index for indexes in by_size.values() if len(indexes) > 1 for index in indexes)
    by_digest = defaultdict(list)
    for index in same_size:
        digest = file_digest(samples.paths[index])
        if digest is not None:
            by_digest[digest].append(index)
    sets = []
    for indexes in by_digest.values():
        if len(indexes) < 2:
            continue
        classes = [samples.classes[samples.labels[i]] for i in indexes]
        record = {"paths": [str(samples.paths[i]) for i in indexes], "bytes": headers[indexes[0]].bytes,
                  "classes": classes, "label_conflict": len(set(classes)) > 1}
        if has_groups:
            record["groups"] = [_group_name(samples, i) for i in indexes]
            record["group_leak"] = len(set(record["groups"])) > 1
        sets.append(record)
    return sorted(sets, key=lambda record: record["paths"][0])


def thumbnail_picks(samples: Samples, headers: list[Header], bad: set[str]) -> dict[str, list[str]]:
    """Up to THUMBNAILS_PER_CLASS readable files per class, spread over the class's file list."""
    picks = {}
    for label, name in enumerate(samples.classes[:THUMBNAIL_CLASSES]):
        usable = [i for i in np.flatnonzero(samples.labels == label).tolist()
                  if headers[i].size is not None and samples.paths[i] not in bad]
        if not usable:
            continue
        # Evenly spaced, not the first few: those are often one person's or one session's.
        spots = np.unique(np.linspace(0, len(usable) - 1, num=min(THUMBNAILS_PER_CLASS, len(usable))).round())
        picks[name] = [str(samples.paths[usable[int(spot)]]) for spot in spots]
    return picks


def collect(samples: Samples, max_pixels: int, workers: int) -> dict:
    """Every number the report shows: counts from the labels, headers of every file, one validation scan.

    ``workers``: processes for the scan's full decode (0: in this process).
    Byte sizes are in bytes; image sizes in pixels, (height, width).
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
    unreadable = [record.to_dict() for record in checked.bad[len(samples.problems) :]]
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
        "duplicates": duplicates(samples, headers, has_groups=per_person is not None),
        # scan() lists the listing problems first, then the files that do not decode.
        "unreadable": unreadable,
        "problems": [record.to_dict() for record in samples.problems],
        "thumbnails": thumbnail_picks(samples, headers, bad={record["path"] for record in unreadable}),
        "scan_cached": checked.cached,
    }
    stats["advice"] = advice(stats)
    return stats


# ---------------------------------------------------------------- what the numbers say


def group_word(layout: str) -> str:
    """What one id of ``Samples.groups`` is: a person in the competition, else the manifest's group."""
    return "person" if layout == "competition" else "group"


def plural(word: str) -> str:
    return "people" if word == "person" else f"{word}s"


def imbalance_sentence(classes: dict, images: int, layout: str) -> str:
    largest, smallest, ratio = classes["largest"], classes["smallest"], classes["imbalance_ratio"]
    typos = classes["suspected_typos"]
    left_out = f"; suspected typo class(es) left out: {', '.join(t['class'] for t in typos)}" if typos else ""
    if ratio is None:
        return (f"{len(classes['missing'])} class(es) have no image at all ({', '.join(classes['missing'])}): "
                "no model can learn them, and their F1 is 0 in a macro average.")
    if ratio <= BALANCED_RATIO:
        return f"Classes are roughly balanced (largest/smallest = {ratio:g}{left_out}): accuracy and macro-F1 agree."
    metric = " (the competition's metric)" if layout == "competition" else ""
    return (
        f"The largest class ({largest['class']}, {largest['images']} images) has {ratio:g}x the images of the "
        f"smallest ({smallest['class']}, {smallest['images']}){left_out}. A model that never predicts the smallest "
        f"class loses only {smallest['images'] / images:.1%} accuracy; macro-F1 averages the per-class F1 scores, "
        f"so every class weighs the same. Judge models by macro-F1{metric}, not accuracy."
    )


def _few(items: list[str], shown: int = 3) -> str:
    return ", ".join(items[:shown]) + (f" and {len(items) - shown} more" if len(items) > shown else "")


def _label_tips(stats: dict) -> list[str]:
    classes = stats["classes"]
    tips = []
    for typo in classes["suspected_typos"]:
        tips.append(f"Class '{typo['class']}' has {typo['images']} image(s) and is named like '{typo['like']}' "
                    f"({typo['like_images']} images): a mistyped label? Relabel or move "
                    f"{_few(typo['paths'])}. It is left out of the largest/smallest ratio.")
    if classes["missing"]:
        tips.append(f"{len(classes['missing'])} class(es) have no image: collect some or merge classes "
                    f"({_few(classes['missing'], 5)}).")
    ratio = classes["imbalance_ratio"]
    if ratio is None or ratio > BALANCED_RATIO:
        shown = "unbounded" if ratio is None else f"{ratio:g}"
        tips.append(f"Imbalanced classes (largest/smallest {shown}): use a class-weighted loss (weights "
                    "proportional to 1/images) or a weighted sampler, pick models by macro-F1, and keep the class "
                    "mix in every fold (stratified splits).")
    if stats["problems"]:
        named = [f"{r['path']} ({r['reason']})" for r in stats["problems"]]
        tips.append(f"{len(named)} row(s) or file(s) were left out while listing (all under 'Listing problems'); "
                    f"fix or remove them: {_few(named)}.")
    return tips


def _group_tips(per_person: dict | None, layout: str) -> list[str]:
    if not per_person:
        return []
    word = group_word(layout)
    if layout == "competition":
        tips = [f"Split train/validation by person (feeding.person_folds, person_split): a person's "
                f"{per_person['usual']} images are near-duplicates, and a split by image inflates validation "
                "F1 (0.998 against 0.70 on the hidden test set, in the mask competition)."]
    else:
        tips = ["Split train/validation by group (feeding.person_folds, person_split keep a group on one side): "
                "images of one group are alike, and a split by image leaks them into validation (inflated F1)."]
    if per_person["deviations"]:
        tips.append(f"Off the usual {per_person['usual']} images: {len(per_person['deviations'])} of "
                    f"{per_person['people']} {plural(word)}; check them (see 'Images per {word}').")
    return tips


def _duplicate_tips(sets: list[dict], layout: str) -> list[str]:
    if not sets:
        return []
    extra = sum(len(record["paths"]) - 1 for record in sets)
    tips = [f"{len(sets)} set(s) of identical files ({extra} extra copies, see 'Duplicate files'): keep one of each "
            "(a copy counts an image twice, and may land in training and validation both)."]
    conflicts = sum(record["label_conflict"] for record in sets)
    if conflicts:
        tips.append(f"{conflicts} duplicate set(s) carry different labels (a label conflict): at most one label "
                    "is right; fix the others.")
    leaks = sum(record.get("group_leak", False) for record in sets)
    if leaks:
        word = group_word(layout)
        tips.append(f"{leaks} duplicate set(s) sit in different {plural(word)}: a split by {word} can put the same "
                    "file on both sides (a leak into validation).")
    return tips


def _size_tips(files: dict) -> list[str]:
    tips = []
    sizes = files["sizes"]
    if len(sizes) == 1:
        tips.append(f"Every readable image is {sizes[0]['height']}x{sizes[0]['width']} (height x width): one "
                    "resize or crop setting fits all.")
    elif sizes:
        heights = [s["height"] for s in sizes]
        widths = [s["width"] for s in sizes]
        tips.append(f"{len(sizes)} distinct sizes (height {min(heights)}-{max(heights)}, width {min(widths)}-"
                    f"{max(widths)} px): every pipeline resizes to one --size HxW, so mind the aspect ratios "
                    "(crop or squash).")
    if files["outliers"]:
        named = [f"{r['path']} ({_hxw(r)}, {r['bytes']} bytes)" for r in files["outliers"]]
        tips.append(f"{len(named)} file(s) far off the usual pixel count or byte size (see 'Outliers'): check "
                    f"that they belong to the data set: {_few(named)}.")
    other_modes = {mode: n for mode, n in files["modes"].items() if mode != "RGB"}
    if other_modes:
        modes = ", ".join(f"{mode}: {n}" for mode, n in other_modes.items())
        tips.append(f"{sum(other_modes.values())} image(s) are not RGB ({modes}): the loaders convert them to "
                    "8-bit RGB and drop alpha; nothing to do unless colour matters.")
    if files["extension_mismatch"]:
        tips.append(f"{len(files['extension_mismatch'])} file(s) hold another format than their extension says: "
                    "the loaders read by content, but other tools may not.")
    return tips


def _hxw(record: dict) -> str:
    """'HxW' of a record with height and width, or 'unreadable size'."""
    return f"{record['height']}x{record['width']}" if record.get("height") else "unreadable size"


def advice(stats: dict) -> list[str]:
    """Short, numbered-by-the-data suggestions: what to do about what was found."""
    layout = stats["dataset"]["layout"]
    tips = _label_tips(stats) + _group_tips(stats["per_person"], layout)
    if stats["unreadable"]:
        tips.append(f"{len(stats['unreadable'])} file(s) do not decode: run with --on-bad skip (the default) to "
                    "leave them out and list them, or replace them; --on-bad fail stops at the first.")
    tips += _duplicate_tips(stats["duplicates"], layout) + _size_tips(stats["files"])
    clean = not (stats["unreadable"] or stats["problems"] or stats["duplicates"]
                 or stats["classes"]["suspected_typos"])
    if clean:
        tips.append("No unreadable files, listing problems, duplicates or suspected label typos: nothing to clean.")
    return tips


# ---------------------------------------------------------------- plots


def _text(label) -> str:
    return str(label).replace("$", r"\$")  # '$' would start mathtext


def _bar_chart(ax, labels: list, values: list, title: str, xlabel: str = "images") -> None:
    """Horizontal bars, first label on top, each bar with its value; a log axis where one bar squashes the rest."""
    positions = np.arange(len(values))
    bars = ax.barh(positions, values, color="tab:blue")
    ax.set_yticks(positions, [_text(label) for label in labels])
    ax.invert_yaxis()
    ax.bar_label(bars, padding=2, fontsize=8)
    if is_squashed(values):
        ax.set_xscale("log")
        xlabel += " (log scale)"
    ax.margins(x=0.15)  # room for the value labels
    ax.set_title(title)
    ax.set_xlabel(xlabel)


def _counts_figure(classes: dict) -> Figure:
    names, counts = classes["names"], classes["counts"]
    if len(names) > LABELLED_BARS:
        fig = Figure(figsize=(8, 4))
        ax = fig.subplots()
        ax.bar(np.arange(len(counts)), sorted(counts, reverse=True), width=1.0, color="tab:blue")
        log = is_squashed(counts)
        if log:
            ax.set_yscale("log")
        ax.set(title=f"images per class, {len(counts)} classes, sorted", xlabel="class rank",
               ylabel="images (log scale)" if log else "images")
        return fig
    fig = Figure(figsize=(8, 1 + 0.3 * len(names)))
    _bar_chart(fig.subplots(), names, counts, "images per class")
    return fig


def _groups_figure(competition: dict) -> Figure:
    fig = Figure(figsize=(12, 3))
    for ax, key in zip(fig.subplots(1, 3), ("mask", "gender", "age")):
        _bar_chart(ax, list(competition[key]), list(competition[key].values()), f"images by {key}")
    return fig


def _per_person_figure(per_person: dict, word: str) -> Figure:
    rows = per_person["histogram"]
    fig = Figure(figsize=(6, 1 + 0.4 * len(rows)))
    _bar_chart(fig.subplots(), [f"{r['images']} images" for r in rows], [r["people"] for r in rows],
               f"images per {word}", xlabel=f"{plural(word)}")
    return fig


def _sizes_figure(sizes: list[dict]) -> Figure:
    """One marker per distinct height x width, its area by the images of that size."""
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    counts = np.array([s["images"] for s in sizes], dtype=np.float64)
    heights, widths = [s["height"] for s in sizes], [s["width"] for s in sizes]
    area = 20 + 300 * counts / counts.max()
    ax.scatter(widths, heights, s=area, alpha=0.6, color="tab:blue")
    for s in sizes[:TOP_SIZES]:
        ax.annotate(f"{s['height']}x{s['width']}: {s['images']}", (s["width"], s["height"]),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
    per_image = counts.astype(np.int64)  # the median is an image's, not a distinct size's
    log = is_squashed(np.repeat(heights, per_image)) or is_squashed(np.repeat(widths, per_image))
    if log:
        ax.set_xscale("log")
        ax.set_yscale("log")
    scale = ", log scale" if log else ""
    ax.set(title="image sizes, height x width (marker area: images)", xlabel=f"width (px{scale})",
           ylabel=f"height (px{scale})")
    ax.margins(0.15)
    return fig


def _bytes_figure(byte_stats: dict) -> Figure:
    fig = Figure(figsize=(7, 3.5))
    ax = fig.subplots()
    histogram = byte_stats["histogram"]
    ax.stairs(histogram["counts"], np.asarray(histogram["edges"]) / 1024, fill=True, color="tab:blue")
    if byte_stats["log_scale"]:  # decided with the bins, which are log-spaced then
        ax.set_xscale("log")
    ax.set(title="file sizes", xlabel="KiB (log scale)" if byte_stats["log_scale"] else "KiB", ylabel="files")
    return fig


def _thumbnail(path: str, max_pixels: int) -> np.ndarray | None:
    """The image shrunk to THUMBNAIL_PX on its longest side (RGB uint8), or None where it does not decode."""
    try:
        image = load_pil(path, max_pixels, draft_to=(THUMBNAIL_PX, THUMBNAIL_PX))
    except BadImageError:
        return None
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    return np.asarray(image)


def _thumbnails_figure(picks: dict[str, list[str]], max_pixels: int) -> Figure:
    """One row per class, its name on the left, up to THUMBNAILS_PER_CLASS of its images from the files."""
    fig = Figure(figsize=(1.2 * THUMBNAILS_PER_CLASS + 1.5, 1.2 * len(picks) + 0.3))
    axes = fig.subplots(len(picks), THUMBNAILS_PER_CLASS, squeeze=False)
    for row, (name, paths) in zip(axes, picks.items()):
        for column, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            pixels = _thumbnail(paths[column], max_pixels) if column < len(paths) else None
            if pixels is not None:
                ax.imshow(pixels)
        row[0].set_ylabel(_text(name), rotation=0, ha="right", va="center", fontsize=9)
    return fig


def figures(stats: dict) -> dict[str, Figure]:
    """Plot name (file suffix) -> figure, for the plots the data supports."""
    plots = {"counts": _counts_figure(stats["classes"])}
    if stats["thumbnails"]:
        plots["thumbnails"] = _thumbnails_figure(stats["thumbnails"], stats["dataset"]["max_pixels"])
    if stats["competition"]:
        plots["mask-gender-age"] = _groups_figure(stats["competition"])
    if stats["per_person"]:
        plots["per-person"] = _per_person_figure(stats["per_person"], group_word(stats["dataset"]["layout"]))
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


def _person_section(per_person: dict, word: str, plots: dict[str, Path]) -> list[str]:
    lines = [f"## Images per {word}", ""]
    lines += _table(["images", f"{plural(word)}"], [[r["images"], r["people"]] for r in per_person["histogram"]])
    deviations = per_person["deviations"]
    if not deviations:
        lines += [f"Every one of the {per_person['people']} {plural(word)} has {per_person['usual']} images.", ""]
    else:
        lines += [f"Off the usual {per_person['usual']} images: {len(deviations)} of {per_person['people']} "
                  f"{plural(word)}.", ""]
        rows, note = _capped(deviations, plural(word))
        masks = "missing" in deviations[0]  # the competition's photo names, so the missing ones are known
        lines += _table([word, "images", *(["missing"] if masks else []), "example"],
                        [[r["person"], r["images"], *([", ".join(r["missing"]) or "-"] if masks else []), r["example"]]
                         for r in rows]) + note
    return lines + _image(plots, "per-person")


def _typo_section(typos: list[dict]) -> list[str]:
    if not typos:
        return []
    lines = ["Suspected label typos (very few images, named like a bigger class; left out of the "
             "largest/smallest ratio):", ""]
    return lines + _table(["class", "images", "looks like", "files"],
                          [[t["class"], t["images"], f"{t['like']} ({t['like_images']} images)",
                            _few(t["paths"], TYPO_FILES_SHOWN)] for t in typos])


def _outlier_rows(outliers: list[dict]) -> list[str]:
    if not outliers:
        return ["No size or byte outliers.", ""]
    rows, note = _capped(outliers, "files")
    lines = [f"Outliers ({len(outliers)} file(s) beyond {OUTLIER_IQR:g} IQR of the quartiles and "
             f"{OUTLIER_FACTOR:g}x off the median, in pixels or bytes):", ""]
    return lines + _table(["path", "height x width (px)", "bytes", "off in"],
                          [[r["path"], _hxw(r), r["bytes"], ", ".join(r["by"])] for r in rows]) + note


def _files_section(files: dict, images: int, plots: dict[str, Path]) -> list[str]:
    lines = ["## Image files", "",
             f"Headers read: {files['readable']} of {images} ({files['unreadable']} unreadable).", ""]
    sizes = files["sizes"]
    if sizes:
        lines += [f"{len(sizes)} distinct size(s); the most common:", ""]
        lines += _table(["height x width (px)", "images", "share"],
                        [[_hxw(s), s["images"], _share(s["images"], images)] for s in sizes[:TOP_SIZES]])
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
    return lines + _outlier_rows(files["outliers"])


def _duplicates_section(sets: list[dict], layout: str) -> list[str]:
    lines = ["## Duplicate files", ""]
    if not sets:
        return lines + ["None: no two files have the same bytes.", ""]
    word = group_word(layout)
    grouped = "groups" in sets[0]
    rows, note = _capped(sets, "sets")
    headers = ["files", "classes", *([f"{plural(word)}"] if grouped else []), "bytes", "flag"]
    return lines + _table(headers, [[", ".join(r["paths"]), ", ".join(r["classes"]),
                                     *([", ".join(r["groups"])] if grouped else []), r["bytes"],
                                     _duplicate_flags(r, word)] for r in rows]) + note


def _duplicate_flags(record: dict, word: str) -> str:
    found = []
    if record["label_conflict"]:
        found.append("label conflict")
    if record.get("group_leak"):
        found.append(f"in different {plural(word)}")
    return ", ".join(found) or "-"


def _thumbnails_section(stats: dict, plots: dict[str, Path]) -> list[str]:
    if "thumbnails" not in plots:
        return []
    shown, classes = len(stats["thumbnails"]), stats["dataset"]["classes"]
    lines = ["## Thumbnails", "",
             f"Up to {THUMBNAILS_PER_CLASS} images per class, spread over each class's files"
             + (f" (the first {shown} of {classes} classes)." if shown < classes else "."), ""]
    return lines + _image(plots, "thumbnails")


def _bad_files_section(title: str, records: list[dict], none: str, intro: str = "") -> list[str]:
    lines = [f"## {title}", ""]
    if not records:
        return lines + [none, ""]
    rows, note = _capped(records, "files")
    lines += [intro, ""] if intro else []
    return lines + _table(["path", "reason"], [[r["path"], r["reason"]] for r in rows]) + note


def render_markdown(stats: dict, info: dict, plots: dict[str, Path]) -> str:
    """The report: tables and sentences from ``stats``, plots linked by file name (same folder)."""
    data, classes = stats["dataset"], stats["classes"]
    images, word = data["images"], group_word(data["layout"])
    commit = info["commit"]
    commit_text = f"{(commit['id'] or 'no git')[:12]}{' (dirty)' if commit['dirty'] else ''}"
    lines = [
        f"# Data inspection: {data['name']}",
        "",
        f"- root: `{data['root']}` ({data['layout']} layout)",
        f"- {images} images, {data['classes']} classes"
        + (f", {data['people']} {plural(word)}" if data["people"] else ""),
        f"- created {info['created']}, commit {commit_text}, max_pixels {data['max_pixels']}",
        "",
        "## Classes",
        "",
    ]
    lines += _table(["class", "images", "share"],
                    [[name, n, _share(n, images)] for name, n in zip(classes["names"], classes["counts"])])
    lines += _typo_section(classes["suspected_typos"])
    lines += [imbalance_sentence(classes, images, data["layout"]), ""]
    lines += _image(plots, "counts")
    lines += _thumbnails_section(stats, plots)
    if stats["competition"]:
        lines += _competition_section(stats["competition"], images, plots)
    if stats["per_person"]:
        lines += _person_section(stats["per_person"], word, plots)
    lines += _files_section(stats["files"], images, plots)
    lines += _duplicates_section(stats["duplicates"], data["layout"])
    lines += _bad_files_section("Unreadable files", stats["unreadable"], "None: every file decodes.")
    lines += _bad_files_section("Listing problems", stats["problems"], "None.",
                                intro="Rows and files left out while listing (not used by any pipeline):")
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


DESCRIPTION = """\
What a data set holds, before any training run: class counts and labels that
look like typos, people or groups, image sizes (height x width) and their
outliers, exact-duplicate files, a thumbnail sheet per class, and the files
and rows that cannot be used; as Markdown, PNG plots and JSON."""


@dataclass(frozen=True)
class InspectConfig:
    """One ``feedbench data inspect`` run."""

    data: str  # competition layout, ImageFolder, or CSV manifest
    out: Path = Path("results")
    workers: int = 2  # processes for the validation decode (0: in this process)
    max_pixels: int = DEFAULT_MAX_PIXELS  # images with more pixels are refused

    def __post_init__(self) -> None:
        if self.workers < 0 or self.max_pixels < 1:
            raise ValueError(f"need workers >= 0 and max_pixels >= 1, got {self.workers} and {self.max_pixels}")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``data inspect``, on a parser of its own or on the ``feedbench data`` sub-parser."""
    parser.add_argument("dir", help="competition layout, ImageFolder, or CSV manifest")
    parser.add_argument("--out", type=Path, default=Path("results"), help="report folder")
    parser.add_argument("--workers", type=non_negative_int, default=2,
                        help="processes for the validation decode (0: in this process)")
    parser.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS,
                        help="refuse images with more pixels than this (height x width)")
    return parser


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feedbench data inspect", description=DESCRIPTION,
                                     formatter_class=HelpFormatter)
    return add_arguments(parser)


def config_from_args(args: argparse.Namespace) -> InspectConfig:
    return InspectConfig(data=args.dir, out=args.out, workers=args.workers, max_pixels=args.max_pixels)


def summary(stats: dict) -> str:
    data, classes = stats["dataset"], stats["classes"]
    ratio = classes["imbalance_ratio"]
    conflicts = sum(record["label_conflict"] for record in stats["duplicates"])
    return (f"{data['name']}: {data['images']} images, {data['classes']} classes, "
            f"largest/smallest class {'unbounded' if ratio is None else f'{ratio:g}'}, "
            f"{len(classes['suspected_typos'])} suspected label typo(s), "
            f"{len(stats['duplicates'])} duplicate set(s) ({conflicts} with different labels), "
            f"{len(stats['files']['outliers'])} size/byte outlier(s), "
            f"{len(stats['unreadable'])} unreadable, {len(stats['problems'])} listing problem(s)")


def run_inspect(config: InspectConfig) -> int:
    """Inspect, write the report and print where; 2 (with a one-line error) on bad input."""
    try:
        # "skip": a bad row is left out and reported (under 'Listing problems'), not the end of the report.
        samples = discover(config.data, on_bad="skip")
        stats = collect(samples, config.max_pixels, config.workers)
        written = write_report(stats, config.out, report_tag(stats))
    except (FeedError, ValueError) as error:
        print(f"feedbench data inspect: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"feedbench data inspect: error: cannot write the report to {config.out}: {error}", file=sys.stderr)
        return 2
    print(summary(stats))
    for path in written:
        print(f"wrote {path}")
    return 0


def inspect_main(argv: list[str]) -> int:
    """``feedbench data inspect DIR [--out results] [--workers 2] [--max-pixels N]``; 2 on bad input."""
    return run_inspect(config_from_args(make_parser().parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(inspect_main(sys.argv[1:]))
