"""The report of a run: ratios (paired where the rounds allow), the JSON record, the Markdown table
and the chart, written atomically under ``--out``."""
from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np

from bench.compare.config import DECODE_ONLY, FEEDBENCH_CPU, GPU_LIBRARY_ON_CPU, NAIVE, CompareConfig
from bench.compare.describe import TARGET_DB, meets_target
from bench.compare.measuring import Row
from bench.fidelity import format_db
from bench.provenance import provenance
from feeding.errors import BadFile
from feeding.io import display_path, write_atomic, write_record_and_table
from feeding.spec_file import describe_spec, spec_record


def ratio(row: Row | None, other: Row | None) -> float | None:
    """``row`` ÷ ``other``: the median of the per-round ratios where both have the same rounds
    (paired: each round's two rates were measured within seconds), else the ratio of the medians.
    None where either is missing or failed."""
    if row is None or other is None or not (row.measured and other.measured):
        return None
    if row.rounds and len(row.rounds) == len(other.rounds):
        return float(np.median(np.divide(row.rounds, other.rounds)))
    return row.median / other.median


def headline(rows: list[Row]) -> dict:
    """The three figures: best feedbench CPU pipeline ÷ naive, ÷ DALI on the CPU, ÷ decode-only."""
    by_name = {row.name: row for row in rows}
    host = [row for row in rows if row.name in FEEDBENCH_CPU and row.measured]
    best = max(host, key=lambda row: row.median) if host else None
    return {
        "best_feedbench_cpu": best.name if best else None,
        "best_feedbench_cpu_images_per_sec": best.median if best else None,
        "feedbench_cpu_over_naive": ratio(best, by_name.get(NAIVE)),
        "feedbench_cpu_over_dali_cpu": ratio(best, by_name.get(GPU_LIBRARY_ON_CPU)),
        "feedbench_cpu_over_decode_only": ratio(best, by_name.get(DECODE_ONLY)),
    }


def row_record(row: Row, naive: Row | None, limit: Row | None, does: str | None = None,
               fidelity: dict | None = None) -> dict:
    """One row for the JSON: what it does, its best point, its rate (img/s) and ratios, its fidelity (PSNR
    against the written order's reference), its skipped files, its sweep."""
    skipped = row.skipped
    best = row.best if row.measured else None
    return {
        "name": row.name,
        "kind": row.kind,
        "does": does,
        "fidelity": fidelity,
        "failed": row.failed,
        "best_workers": best.workers if best else None,
        "best_executor": best.executor if best else None,
        "images_per_sec": row.rate.to_dict() if best else None,
        "rounds_images_per_sec": list(row.rounds),
        "first_batch_s": best.measured.first_batch_s.to_dict() if best else None,
        "ratio_to_naive": ratio(row, naive),
        "ratio_to_decode_only": ratio(row, limit),
        "skipped_files": None if skipped is None else len(skipped),  # None: a loader that does not say
        "sweep": [point.to_dict() for point in row.points],
    }


def skipped_notes(rows: list[Row], listing: tuple[BadFile, ...], root: Path, shown: int = 10) -> list[str]:
    """The data's listing problems, and the unreadable files the rows skipped: each file named once
    (the first ``shown``; the JSON's ``skipped`` and ``listing_problems`` hold them all)."""
    notes = []
    if listing:
        notes.append(f"listing: {len(listing)} entr{'y' if len(listing) == 1 else 'ies'} of the data left out "
                     f"by every row: {_named(listing, root, shown)}.")
    files = all_skipped(rows)
    if files:
        notes.append(f"skipped: {len(files)} unreadable file(s), left out by the rows that met them (each row's "
                     f"count is in the table): {_named(files, root, shown)}.")
    return notes


def all_skipped(rows: list[Row]) -> tuple[BadFile, ...]:
    """Every file some row skipped, once (the first row's reason)."""
    reasons: dict[str, str] = {}
    for row in rows:
        for file in row.skipped or ():
            reasons.setdefault(file.path, file.reason)
    return tuple(BadFile(path, reason) for path, reason in reasons.items())


def _named(files: tuple[BadFile, ...], root: Path, shown: int) -> str:
    base = root if root.is_dir() else root.parent  # a manifest's paths are relative to its folder

    def where(path: str) -> str:
        return str(Path(path).relative_to(base)) if Path(path).is_relative_to(base) else display_path(path)

    named = "; ".join(f"{where(file.path)} ({file.reason})" for file in files[:shown])
    return named + (f"; and {len(files) - shown} more" if len(files) > shown else "")


def build_report(rows: list[Row], config: CompareConfig, context: dict) -> dict:
    """The JSON record: ``context`` (command, data, notes), the spec, every row and sweep point, the
    headline ratios, the skipped files and provenance."""
    by_name = {row.name: row for row in rows}
    naive, limit = by_name.get(NAIVE), by_name.get(DECODE_ONLY)
    return {
        **context,
        # The train section every row ran (spec_record), its output size, and the batch.
        "spec": {"size": list(config.size), "batch": config.batch, "train": spec_record(config.augmentation),
                 "described": describe_spec(config.augmentation)},
        "spec_file": config.spec.name if config.spec else None,
        "workers_max": config.workers_max,
        "batches": config.settings.batches,
        "repeats": config.settings.repeats,
        "warmup": config.settings.warmup,
        "rounds": config.settings.rounds if any(row.rounds for row in rows) else 0,
        "rows": [row_record(row, naive, limit, context.get("does", {}).get(row.name),
                            context.get("fidelity", {}).get(row.name)) for row in rows],
        "ratios": headline(rows),
        "skipped": [file.to_dict() for file in all_skipped(rows)],
        **provenance(),
    }


def _times(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _fidelity_sentence(report: dict) -> str:
    best = report["ratios"]["best_feedbench_cpu"]
    score = next((row["fidelity"] for row in report["rows"] if row["name"] == best), None)
    if not score or "median_db" not in score:
        return "- Its fidelity was not measured."
    held = meets_target(score)
    return (f"- Its picture against the written order's antialiased reference: {format_db(score['median_db'])} dB "
            f"median, {format_db(score['worst_db'])} dB worst over {score['images']} files "
            f"({'meets' if held else '**misses**'} the target of {TARGET_DB[0]:g} / {TARGET_DB[1]:g} dB).")


def _sentences(ratios: dict) -> list[str]:
    best = ratios["best_feedbench_cpu"]
    if best is None:
        return [f"No feedbench CPU pipeline ({', '.join(FEEDBENCH_CPU)}) was measured."]
    rate = f"{best}, {ratios['best_feedbench_cpu_images_per_sec']:.0f} img/s"
    return [
        f"- Best feedbench CPU pipeline ({rate}) ÷ naive torchvision: "
        f"**{_times(ratios['feedbench_cpu_over_naive'])}**.",
        f"- Best feedbench CPU pipeline ÷ DALI on the CPU: **{_times(ratios['feedbench_cpu_over_dali_cpu'])}**.",
        f"- Best feedbench CPU pipeline ÷ decode-only limit: "
        f"**{_times(ratios['feedbench_cpu_over_decode_only'])}**.",
    ]


def _rounds_sentence(report: dict) -> str:
    if not report["rounds"]:
        return "Rates and ratios are those of each row's best sweep point (no paired rounds were measured)."
    return (f"Then {report['rounds']} paired rounds: every row's best point measured for one window in turn, "
            "the order rotated each round. Rates: median (min–max) over the rounds; "
            "ratios: median of the per-round ratios.")


def compare_markdown(report: dict) -> str:
    """The report as Markdown: the run's conditions, one table row per row, the headline, the notes."""
    machine, pil = report["machine"], report["machine"]["pil"]
    size = "x".join(map(str, report["spec"]["size"]))
    spec_file = f" ({report['spec_file']})" if report.get("spec_file") else ""
    lines = [
        f"# feedbench compare: {report['data_name']}, {size}, batch {report['spec']['batch']}",
        "",
        f"`{report['command']}`",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores; PIL: {pil['distribution']} {pil['version']}"
        f"{' (SIMD)' if pil.get('simd') else ''}; DALI: {machine['dali'] or 'not installed'}.",
        f"Data: {report['data']} ({report['dataset_images']} images). "
        f"Spec{spec_file}: {report['spec']['described']}. Workers swept 1..{report['workers_max']}; "
        f"{report['repeats']} windows of {report['batches']} batches after {report['warmup']} warm-up batches.",
        _rounds_sentence(report),
        "",
        "| pipeline | best workers | img/s median (min–max) | × naive | × decode-only | PSNR dB median / worst "
        "| skipped files |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [_table_row(row) for row in report["rows"]]
    lines += ["", *_sentences(report["ratios"]), _fidelity_sentence(report), ""]
    lines += ["What each row does:", ""] + [f"- {row['name']}: {row['does']}" for row in report["rows"] if row["does"]]
    if report.get("fidelity_spec"):
        lines += ["", "PSNR: each row's picture against the written order, one PIL step at a time on a full decode "
                  "(`feeding.fidelity.reference`), on files of this data, with the draws pinned so that every row "
                  f"runs the same augmentation: {report['fidelity_spec']}.", ""]
    if report.get("chart") and _charted(report["rows"]):
        lines += [f"![img/s per pipeline]({report['chart']})", ""]
    lines += [f"Note: {note}" for note in report["notes"]]
    return "\n".join(lines).rstrip() + "\n"


def _table_row(row: dict) -> str:
    skipped = "not reported" if row["skipped_files"] is None else row["skipped_files"]
    if row["failed"]:
        error = row["failed"].replace("|", "\\|")  # a pipe would end the cell
        return f"| {row['name']} | — | **failed**: {error} | — | — | — | {skipped} |"
    rate = row["images_per_sec"]
    workers = "as given" if row["best_workers"] is None else row["best_workers"]
    return (f"| {row['name']} | {workers} | {rate['median']:.1f} ({rate['min']:.1f}–{rate['max']:.1f}) "
            f"| {_times(row['ratio_to_naive'])} | {_times(row['ratio_to_decode_only'])} | {_psnr(row['fidelity'])} "
            f"| {skipped} |")


def _psnr(score: dict | None) -> str:
    if not score:
        return "—"
    if "median_db" not in score:
        return f"not scored ({score['skipped']})"
    return f"{format_db(score['median_db'])} / {format_db(score['worst_db'])}"


def _charted(rows: list[dict]) -> list[dict]:
    return [row for row in rows if row["images_per_sec"] is not None]


def chart_png(report: dict) -> bytes:
    """Bar chart of median img/s per row, min/max error bars, decode-only limit as a line."""
    from matplotlib.figure import Figure  # the object API: no pyplot, no display, no global backend switch

    rows = _charted(report["rows"])
    medians = np.array([row["images_per_sec"]["median"] for row in rows])
    errors = np.array([[m - row["images_per_sec"]["min"], row["images_per_sec"]["max"] - m]
                       for m, row in zip(medians, rows)]).T
    labels = [f"{row['name']}\n(w={'?' if row['best_workers'] is None else row['best_workers']})" for row in rows]
    figure = Figure(figsize=(max(6.0, 1.4 * len(rows)), 4.5), layout="constrained")
    axes = figure.add_subplot()
    axes.bar(range(len(rows)), medians, yerr=errors, capsize=4, color="tab:blue")
    limit = next((row for row in rows if row["name"] == DECODE_ONLY), None)
    if limit:
        axes.axhline(limit["images_per_sec"]["median"], color="tab:red", linestyle="--", label="decode-only limit")
        axes.legend(loc="upper right")
    axes.set_xticks(range(len(rows)), labels, fontsize=8)
    axes.set_ylabel("images/s (median, min–max)")
    axes.set_title(f"{report['data_name']}, {'x'.join(map(str, report['spec']['size']))}, "
                   f"batch {report['spec']['batch']}, {report['machine']['cores']} cores")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def output_stem(data_name: str, config: CompareConfig) -> str:
    """The run's conditions as a file name: 'compare-<data>[-<spec file>]-<size>-b<batch>-<cores>c'."""
    size = str(config.size[0]) if config.size[0] == config.size[1] else "x".join(map(str, config.size))
    spec = f"-{re.sub(r'[^A-Za-z0-9._-]+', '_', Path(config.spec.name).stem)}" if config.spec else ""
    return f"compare-{data_name}{spec}-{size}-b{config.batch}-{os.cpu_count()}c"


def write_outputs(report: dict, config: CompareConfig) -> list[Path]:
    """``<stem>.json``, ``.md`` and (where a row has a rate) ``.png`` under ``config.out``; the paths."""
    stem = Path(config.out) / output_stem(report["data_name"], config)
    written = write_record_and_table(stem, report, compare_markdown(report))
    if _charted(report["rows"]):
        written.append(write_atomic(stem.with_suffix(".png"), chart_png(report)))
    return written
