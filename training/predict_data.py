"""What ``training.predict`` reads: the images to predict, in output order, and their true
classes where known (as indices into the model's classes).

The layouts: the competition's eval layout (info.csv's ImageID order; answers.csv beside it holds
the true class indices), an ImageFolder or a CSV manifest (``feeding.sources.discover``'s order),
or a plain folder of images (name order, unlabelled).
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from feeding.errors import BadFile, FeedError

EVAL_LAYOUT = "eval"  # info.csv + images/: the competition's test set


@dataclass(frozen=True)
class TestSet:
    """The images to predict, in output order, and their true classes where known."""

    paths: tuple[str, ...]  # what the feeder reads
    names: tuple[str, ...]  # what the output calls them: info.csv's ImageID, or the path under the data root
    root: str
    layout: str  # EVAL_LAYOUT, "folder" (unlabelled), or a feeding.sources layout
    labels: np.ndarray | None = None  # int64 per image: indices into label_names, or class indices
    label_names: tuple[str, ...] | None = None  # None: the labels are the model's class indices
    problems: tuple[BadFile, ...] = ()  # listing rows left out (on_bad="skip")


def read_test_set(root: str | Path, on_bad: str = "skip") -> TestSet:
    """The eval layout in info.csv's order, a plain folder in name order, or what
    ``feeding.sources.discover`` reads (ImageFolder, CSV manifest) in its order."""
    from feeding.sources import competition_root, discover, is_image_file

    root = Path(root)
    if (root / "info.csv").is_file():
        return _read_eval_layout(root)
    if not root.exists():
        raise FeedError(f"test data {root} does not exist")
    if root.is_file() or competition_root(root) is not None:
        return _from_samples(discover(root, on_bad))
    entries = [e for e in os.scandir(root) if not e.name.startswith(".")]
    images = sorted(e.name for e in entries if e.is_file() and is_image_file(e.name))
    has_folders = any(e.is_dir() for e in entries)
    if images and has_folders:
        raise FeedError(f"{root} holds both images and sub-folders: give a folder of images only, or the "
                        "parent of one folder per class (ImageFolder)")
    if has_folders:
        return _from_samples(discover(root, on_bad))
    if not images:
        raise FeedError(f"no images in {root} (and no info.csv)")
    return TestSet(tuple(str(root / name) for name in images), tuple(images), str(root), "folder")


def _read_eval_layout(root: Path) -> TestSet:
    info = root / "info.csv"
    with open(info, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if "ImageID" not in (reader.fieldnames or ()):
            raise FeedError(f"{info} has no ImageID column (the eval layout's info.csv: ImageID, ans)")
        ids = [row["ImageID"] for row in reader]
    if not ids:
        raise FeedError(f"{info} lists no images")
    # A listed image that is missing is unreadable like any other: the feeder reports it.
    paths = tuple(str(root / "images" / image_id) for image_id in ids)
    return TestSet(paths, tuple(ids), str(root), EVAL_LAYOUT, labels=_answers(root / "answers.csv", ids))


def _answers(path: Path, ids: list[str]) -> np.ndarray | None:
    """answers.csv's class index (ans) per ImageID, in info.csv's order; None without the file."""
    if not path.is_file():
        return None
    truth = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for line, row in enumerate(csv.DictReader(fh), start=2):
            try:
                truth[row["ImageID"]] = int(row["ans"])
            except (KeyError, TypeError, ValueError):
                raise FeedError(f"{path}:{line}: need an ImageID and an integer ans (a class index)") from None
    if set(truth) != set(ids):
        raise FeedError(f"{path} does not list the same images as info.csv")
    return np.array([truth[i] for i in ids], dtype=np.int64)


def _from_samples(samples) -> TestSet:
    """A discovered data set; a manifest whose label column holds integers gives class indices."""
    base = Path(samples.root).parent if samples.layout == "csv" else Path(samples.root)
    paths = samples.paths.tolist()
    integer_labels = samples.layout == "csv" and samples.classes == tuple(map(str, range(len(samples.classes))))
    return TestSet(tuple(paths), tuple(os.path.relpath(p, base) for p in paths), samples.root, samples.layout,
                   labels=samples.labels, label_names=None if integer_labels else samples.classes,
                   problems=samples.problems)


def true_classes(test: TestSet, classes: tuple[str, ...]) -> np.ndarray | None:
    """Each image's true class as an index into the model's ``classes``; None where unlabelled."""
    if test.labels is None:
        return None
    if test.label_names is None:
        beyond = test.labels[(test.labels < 0) | (test.labels >= len(classes))]
        if beyond.size:
            raise FeedError(f"{test.root}: label {beyond[0]} is not a class index of the model "
                            f"(0..{len(classes) - 1}; integer labels are class indices)")
        return test.labels
    index = {name: i for i, name in enumerate(classes)}
    used = [test.label_names[label] for label in np.unique(test.labels)]
    unknown = [name for name in used if name not in index]
    if unknown:
        raise FeedError(f"{test.root}: class {unknown[0]!r} is not one the model knows "
                        f"(its classes: {', '.join(classes)})")
    return np.array([index.get(name, -1) for name in test.label_names], dtype=np.int64)[test.labels]
