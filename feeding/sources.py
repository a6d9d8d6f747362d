"""Find the images and their labels: competition layout, ImageFolder, or CSV manifest.

File lists are numpy arrays (fixed-width unicode paths, int64 labels), not
Python lists of objects: every worker process reads them, and reading a list of
Python objects touches their reference counts, which copies the pages that
hold them into each worker (the "copy-on-read" memory growth of DataLoader).
"""
from __future__ import annotations

import csv
import hashlib
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from feeding.errors import BadFile, FeedError
from feeding.io import display_path

# torchvision.datasets.folder.IMG_EXTENSIONS: anything else is not an image.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

MASK_STEMS = {
    "mask1": 0, "mask2": 0, "mask3": 0, "mask4": 0, "mask5": 0,
    "incorrect_mask": 1,
    "normal": 2,
}  # fmt: skip
MASK_NAMES = ("wear", "incorrect", "not_wear")
GENDER_NAMES = ("male", "female")
AGE_NAMES = ("<30", "30-59", ">=60")


def is_image_file(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def age_group(age: int) -> int:
    """0 for under 30, 1 for 30-59, 2 for 60 and over."""
    if age < 0:
        raise ValueError(f"age must be non-negative, got {age}")
    return 0 if age < 30 else 1 if age < 60 else 2


def mask_label(mask: int, gender: int, age: int) -> int:
    """The competition's 18 classes: mask * 6 + gender * 3 + age_group(age)."""
    return mask * 6 + gender * 3 + age_group(age)


def decode_label(label: int) -> tuple[str, str, str]:
    """(mask, gender, age group) names of a competition class index."""
    if not 0 <= label < 18:
        raise ValueError(f"label must be within [0, 18), got {label}")
    return MASK_NAMES[label // 6], GENDER_NAMES[(label // 3) % 2], AGE_NAMES[label % 3]


COMPETITION_CLASSES = tuple("/".join(decode_label(i)) for i in range(18))


@dataclass(frozen=True)
class Samples:
    """What a feeder reads: one path, label and group (person) per image."""

    paths: np.ndarray  # dtype '<U…', absolute paths
    labels: np.ndarray  # int64
    groups: np.ndarray  # int64: images of one person share a group
    classes: tuple[str, ...]
    root: str
    layout: str  # "competition" | "imagefolder" | "csv"
    problems: tuple[BadFile, ...] = field(default=())  # found while listing (e.g. unknown file name)

    def __post_init__(self) -> None:
        n = len(self.paths)
        if len(self.labels) != n or len(self.groups) != n:
            raise ValueError("paths, labels and groups must have the same length")
        if self.labels.dtype != np.int64 or self.groups.dtype != np.int64:
            raise TypeError("labels and groups must be int64 arrays")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise FeedError(f"labels out of range for {len(self.classes)} classes in {self.root}")

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: np.ndarray) -> "Samples":
        index = np.asarray(index)
        return Samples(
            paths=self.paths[index],
            labels=self.labels[index],
            groups=self.groups[index],
            classes=self.classes,
            root=self.root,
            layout=self.layout,
            problems=self.problems,
        )

    def without(self, bad_paths: set[str]) -> "Samples":
        """The samples minus the given paths (used after a validation scan)."""
        if not bad_paths:
            return self
        keep = np.array([p not in bad_paths for p in self.paths.tolist()], dtype=bool)
        return self.subset(np.flatnonzero(keep))


def _as_samples(paths, labels, groups, classes, root, layout, problems=()) -> Samples:
    if not paths:
        raise FeedError(f"no images found in {root} ({layout} layout); image extensions: {IMAGE_EXTENSIONS}")
    return Samples(
        paths=np.array(paths, dtype=np.str_),
        labels=np.array(labels, dtype=np.int64),
        groups=np.unique(np.array(groups, dtype=np.str_), return_inverse=True)[1].astype(np.int64),
        classes=tuple(classes),
        root=str(root),
        layout=layout,
        problems=tuple(problems),
    )


# ---------------------------------------------------------------- competition layout


def competition_root(root: Path) -> Path | None:
    """The folder that holds train.csv and images/, given ROOT or ROOT/train."""
    for candidate in (root / "train", root):
        if (candidate / "train.csv").is_file() and (candidate / "images").is_dir():
            return candidate
    return None


class _RowProblem(ValueError):
    """One listing row that cannot be used; the reason, without the row's location."""


def _parse_person(row: dict[str, str], csv_path: Path) -> tuple[str, int, int, str]:
    try:
        person, gender_text, age_text, folder = row["id"], row["gender"], row["age"], row["path"]
    except KeyError as missing:
        raise FeedError(f"{csv_path}: missing column {missing}; need id, gender, race, age, path") from None
    gender_text = (gender_text or "").strip().lower()
    if gender_text not in GENDER_NAMES:
        raise _RowProblem(f"gender must be 'male' or 'female', got {gender_text!r}")
    try:
        age = int(float(age_text))
        age_group(age)
    except (TypeError, ValueError):
        raise _RowProblem(f"age must be a non-negative number, got {age_text!r}") from None
    return person.strip(), GENDER_NAMES.index(gender_text), age, folder.strip()


def read_competition(root: Path, on_bad: str = "fail") -> Samples:
    """``train/train.csv`` + ``train/images/<folder>/{mask1..5,incorrect_mask,normal}.*``.

    A train.csv row that cannot be read (a gender other than male/female, an age that is not
    a number) is an error naming the row, or under ``on_bad="skip"`` that person is left out
    and the row listed in ``Samples.problems``.
    """
    base = competition_root(root)
    if base is None:
        raise FeedError(f"{root} is not in the competition layout (need train.csv and images/)")
    csv_path = base / "train.csv"
    paths, labels, groups, problems = [], [], [], []
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for line, row in enumerate(csv.DictReader(fh), start=2):
            try:
                person, gender, age, folder = _parse_person(row, csv_path)
            except _RowProblem as problem:
                if on_bad == "fail":
                    raise FeedError(f"{csv_path}:{line}: {problem}") from None
                problems.append(BadFile(f"{csv_path}:{line}", str(problem)))
                continue
            person_dir = base / "images" / folder
            if not person_dir.is_dir():
                problems.append(BadFile(str(person_dir), f"folder listed in {csv_path.name}:{line} is missing"))
                continue
            for entry in sorted(os.scandir(person_dir), key=lambda e: e.name):
                if not (entry.is_file() and is_image_file(entry.name)):
                    continue  # not an image by extension (or a hidden '._' file): ignored
                stem = entry.name.rsplit(".", 1)[0].lower()
                if stem not in MASK_STEMS:
                    problems.append(BadFile(entry.path, f"file name {stem!r} is not one of {sorted(MASK_STEMS)}"))
                    continue
                paths.append(os.path.abspath(entry.path))
                labels.append(mask_label(MASK_STEMS[stem], gender, age))
                groups.append(person or folder)
    return _as_samples(paths, labels, groups, COMPETITION_CLASSES, base, "competition", problems)


# ---------------------------------------------------------------- ImageFolder and CSV


def read_image_folder(root: Path) -> Samples:
    """One sub-folder per class, as torchvision's ImageFolder (classes sorted by name)."""
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise FeedError(f"{root} has no class folders (ImageFolder layout: ROOT/<class>/<image>)")
    paths, labels = [], []
    for label, name in enumerate(classes):
        for folder, _, files in sorted(os.walk(root / name, followlinks=True)):
            for file in sorted(files):
                if is_image_file(file):
                    paths.append(os.path.abspath(os.path.join(folder, file)))
                    labels.append(label)
    # Without person ids every image is its own group.
    return _as_samples(paths, labels, list(map(str, range(len(paths)))), classes, root, "imagefolder")


_INTEGER = re.compile(r"[+-]?\d+")


def _label_column_is_integer(values: list[str]) -> bool:
    """An integer column when most labels are integers: one typo must not turn it into names."""
    integers = sum(1 for v in values if _INTEGER.fullmatch(v))
    return integers > 0 and integers >= len(values) / 2


def _manifest_row_problem(row: dict, integer_labels: bool) -> str | None:
    """Why one manifest row cannot be used, or None."""
    path, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
    if not path:
        return "empty path"
    if not label:
        return "empty label"
    if integer_labels:
        if not _INTEGER.fullmatch(label):
            return f"label {label!r} is not an integer, as the rest of the label column is (a typo?)"
        if int(label) < 0:
            return f"label {label} is out of range: integer labels are class indices 0, 1, 2, ..."
    return None


def read_manifest(csv_path: Path, on_bad: str = "fail") -> Samples:
    """A CSV with columns path,label (and optionally group); paths relative to the CSV.

    Integer labels are class indices (class ``k`` is named ``"k"``); any other labels are
    class names, sorted. A row whose label does not fit the column's type (``kitty`` among
    integers), a negative index, or an empty path or label is an error that names the row
    (``on_bad="fail"``), or is left out and listed in ``Samples.problems`` (``"skip"``).
    """
    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise FeedError(f"{csv_path}: need a header with columns path,label (optional: group)")
    integer_labels = _label_column_is_integer([(r.get("label") or "").strip() for r in rows])
    good, problems = [], []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        problem = _manifest_row_problem(row, integer_labels)
        if problem is None:
            good.append(row)
            continue
        if on_bad == "fail":
            raise FeedError(f"{csv_path}:{line}: {problem} (--on-bad skip leaves such rows out, and lists them)")
        problems.append(BadFile(f"{csv_path}:{line}", problem))
    raw_labels = [r["label"].strip() for r in good]
    if integer_labels:
        labels = [int(v) for v in raw_labels]
        classes = tuple(str(i) for i in range(max(labels, default=-1) + 1))
    else:
        classes = tuple(sorted(set(raw_labels)))
        index = {name: i for i, name in enumerate(classes)}
        labels = [index[v] for v in raw_labels]
    base = csv_path.parent
    paths = [os.path.abspath(base / r["path"].strip()) for r in good]
    groups = [r.get("group") or f"row{i}" for i, r in enumerate(good)]
    return _as_samples(paths, labels, groups, classes, csv_path, "csv", problems)


def discover(root: str | os.PathLike, on_bad: str = "fail") -> Samples:
    """Read ``root`` in whichever layout it has: a CSV manifest, the competition, or ImageFolder.

    ``on_bad``: a listing row that cannot be used (a manifest label that does not fit its
    column, a competition row with an unknown gender) is an error naming the row ("fail"),
    or is left out and listed in ``Samples.problems`` ("skip"), where feeders report it.
    """
    if on_bad not in ("skip", "fail"):
        raise ValueError(f"on_bad must be 'skip' or 'fail', got {on_bad!r}")
    path = Path(root)
    if not path.exists():
        raise FeedError(f"data path {path} does not exist")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise FeedError(f"{path} is a file but not a CSV manifest")
        return read_manifest(path, on_bad)
    if competition_root(path) is not None:
        return read_competition(path, on_bad)
    return read_image_folder(path)


# ---------------------------------------------------------------- person-level splits


def person_folds(samples: Samples, folds: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, val) index pairs: stratified by class, grouped by person.

    No person appears on both sides of a fold: images of one person are
    near-duplicates, and splitting by image leaks them (0.998 validation F1
    against 0.70 on the hidden test set, in the mask competition).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    n_groups = len(np.unique(samples.groups))
    if folds < 2 or folds > n_groups:
        raise FeedError(f"need 2 <= folds <= number of people ({n_groups}), got {folds}")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # sklearn warns when a class has fewer members than folds; callers check
        # the classes each validation side lacks (missing_classes) and say so.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        return list(splitter.split(np.zeros(len(samples)), samples.labels, samples.groups))


def missing_classes(samples: Samples) -> list[str]:
    """Names of the classes with no image in ``samples`` (e.g. a validation split)."""
    present = np.bincount(samples.labels, minlength=len(samples.classes)) > 0
    return [name for name, ok in zip(samples.classes, present) if not ok]


def person_split(samples: Samples, val_fraction: float = 0.2, seed: int = 0) -> tuple[Samples, Samples]:
    """One stratified, person-grouped train/validation split."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be within (0, 1), got {val_fraction}")
    train_idx, val_idx = person_folds(samples, max(2, round(1 / val_fraction)), seed)[0]
    return samples.subset(train_idx), samples.subset(val_idx)


def dataset_fingerprint(samples) -> dict:
    """Enough to tell whether a recommendation was made on this data set."""
    base = Path(samples.root)
    base = base.parent if base.is_file() else base
    relative = sorted(os.path.relpath(p, base) for p in samples.paths.tolist())  # the same on any machine
    digest = hashlib.sha256("\n".join(relative).encode()).hexdigest()[:16]
    return {"root": display_path(samples.root), "images": len(samples), "layout": samples.layout,
            "paths_sha256": digest}
