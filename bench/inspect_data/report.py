"""The report: the Markdown (tables and sentences, plots linked by file name), the JSON with
provenance, the PNG plots, and the one-line summary printed at the end."""
from __future__ import annotations

from pathlib import Path

from bench.inspect_data.advice import first_few, hxw, imbalance_sentence
from bench.inspect_data.files import OUTLIER_FACTOR, OUTLIER_IQR, THUMBNAILS_PER_CLASS, TOP_SIZES
from bench.inspect_data.labels import group_word, plural
from bench.inspect_data.plots import figures, write_png
from bench.provenance import provenance
from feeding.io import display_text, write_atomic, write_json
from feeding.sources import AGE_NAMES, GENDER_NAMES

MARKDOWN_ROWS = 50  # longer lists are cut in the Markdown; the JSON keeps them whole
TYPO_FILES_SHOWN = 5  # a suspected typo's files named in its table row


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
                            first_few(t["paths"], TYPO_FILES_SHOWN)] for t in typos])


def _outlier_rows(outliers: list[dict]) -> list[str]:
    if not outliers:
        return ["No size or byte outliers.", ""]
    rows, note = _capped(outliers, "files")
    lines = [f"Outliers ({len(outliers)} file(s) beyond {OUTLIER_IQR:g} IQR of the quartiles and "
             f"{OUTLIER_FACTOR:g}x off the median, in pixels or bytes):", ""]
    return lines + _table(["path", "height x width (px)", "bytes", "off in"],
                          [[r["path"], hxw(r), r["bytes"], ", ".join(r["by"])] for r in rows]) + note


def _files_section(files: dict, images: int, plots: dict[str, Path]) -> list[str]:
    lines = ["## Image files", "",
             f"Headers read: {files['readable']} of {images} ({files['unreadable']} unreadable).", ""]
    sizes = files["sizes"]
    if sizes:
        lines += [f"{len(sizes)} distinct size(s); the most common:", ""]
        lines += _table(["height x width (px)", "images", "share"],
                        [[hxw(s), s["images"], _share(s["images"], images)] for s in sizes[:TOP_SIZES]])
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


def report_tag(stats: dict) -> str:
    """The run's conditions for file names: '<dataset name>-<images>img'."""
    return f"{stats['dataset']['name']}-{stats['dataset']['images']}img"


def with_display_paths(value):
    """The stats with every path under the cache or the home directory written as ``<cache>/...`` or
    ``~/...`` (``feeding.io.display_text``), in file lists and sentences alike: reports are committed and
    must not carry this machine's directories (pure)."""
    if isinstance(value, dict):
        return {k: with_display_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [with_display_paths(v) for v in value]
    return display_text(value) if isinstance(value, str) else value


def write_report(stats: dict, out_dir: Path, tag: str) -> list[Path]:
    """Write ``inspect-<tag>.md``, ``.json`` (stats plus provenance) and ``-<plot>.png``, each atomically.

    The plots go first and the Markdown last, so a Markdown file that exists has its images.
    """
    out_dir = Path(out_dir)
    stem = f"inspect-{tag}"
    info = provenance()
    plots = {name: write_png(fig, out_dir / f"{stem}-{name}.png") for name, fig in figures(stats).items()}
    stats = with_display_paths(stats)  # the plots read the files; the Markdown and JSON only name them
    record = write_json(out_dir / f"{stem}.json", {**stats, **info})
    markdown = write_atomic(out_dir / f"{stem}.md", render_markdown(stats, info, plots).encode("utf-8"))
    return [markdown, record, *plots.values()]


def summary(stats: dict) -> str:
    """One line: images, classes, the class ratio, and how many typos, duplicates, outliers and bad files."""
    data, classes = stats["dataset"], stats["classes"]
    ratio = classes["imbalance_ratio"]
    conflicts = sum(record["label_conflict"] for record in stats["duplicates"])
    return (f"{data['name']}: {data['images']} images, {data['classes']} classes, "
            f"largest/smallest class {'unbounded' if ratio is None else f'{ratio:g}'}, "
            f"{len(classes['suspected_typos'])} suspected label typo(s), "
            f"{len(stats['duplicates'])} duplicate set(s) ({conflicts} with different labels), "
            f"{len(stats['files']['outliers'])} size/byte outlier(s), "
            f"{len(stats['unreadable'])} unreadable, {len(stats['problems'])} listing problem(s)")
