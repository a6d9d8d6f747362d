"""What the labels say: images per class (and classes that look like a mistyped label), the mask
competition's mask, gender and age ratios, and images per person or group."""
from __future__ import annotations

import difflib
import re
from collections import Counter
from pathlib import Path

import numpy as np

from feeding.sources import AGE_NAMES, GENDER_NAMES, MASK_NAMES, MASK_STEMS, Samples, decode_label

# A suspected label typo: a class of at most TYPO_MAX_IMAGES images (or under TYPO_MEDIAN_SHARE of the
# median class), under half the median, whose name is close (difflib ratio) to a bigger class's name.
TYPO_MAX_IMAGES = 2
TYPO_MEDIAN_SHARE = 0.05
TYPO_NAME_SIMILARITY = 0.6  # difflib's own default; "cta" ~ "cat" is 0.67, "dog" ~ "cat" is 0


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


def group_name(samples: Samples, index: int) -> str:
    """The name of the person or group of sample ``index``: the competition's person folder, else 'group N'."""
    if samples.layout == "competition":
        return Path(samples.paths[index]).parent.name  # the person's folder
    return f"group {samples.groups[index]}"


def group_word(layout: str) -> str:
    """What one id of ``Samples.groups`` is: a person in the competition, else the manifest's group."""
    return "person" if layout == "competition" else "group"


def plural(word: str) -> str:
    """'person' -> 'people', 'group' -> 'groups'."""
    return "people" if word == "person" else f"{word}s"
