"""Every number the report shows, in one dict: what the labels say, what the headers say, and one
validation scan for the files that do not decode."""
from __future__ import annotations

import sys

from tqdm import tqdm

from bench.inspect_data.advice import advice
from bench.inspect_data.files import duplicates, header_stats, read_header, thumbnail_picks
from bench.inspect_data.labels import class_stats, competition_stats, dataset_name, person_stats
from feeding.io import display_path
from feeding.scan import scan
from feeding.sources import Samples


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
