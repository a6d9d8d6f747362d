"""One ``feedbench compare`` run: list the data, build its rows, sweep them, pair the rounds, report."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from bench.compare.config import CompareConfig, CompareError
from bench.compare.describe import row_does, row_fidelity
from bench.fidelity import pinned
from bench.compare.measuring import measure_rows, paired_rounds
from bench.compare.reference import naive_description
from bench.compare.reporting import build_report, output_stem, skipped_notes
from bench.compare.rows import builtin_rows, user_row
from bench.interrupt import CtrlC
from feeding import decode
from feeding.io import display_path
from feeding.sample import resolve_data
from feeding.sources import discover
from feeding.spec_file import describe_spec

# What every report says about how its rows were run.
METHOD_NOTES = (
    "naive: NaiveTorchvisionDataset (PIL open, then {naive} on the CPU, in the spec's order) in "
    "DataLoader(shuffle=True, drop_last=True) with default collate; a file PIL cannot open is skipped for the "
    "next one, as a user's try/except does.",
    "decode-only: full-resolution decode ({decoder} for JPEGs, as the OpenCV pipeline) by "
    "persistent worker processes and by worker threads, the better of the two; the pixels are dropped, so "
    "collating full-size images is not measured.",
    "Every loader keeps its workers across epochs (the naive one too, though users rarely set "
    "persistent_workers): the timed windows span epochs, and the sample's short epochs would otherwise "
    "charge worker start-up that a real data set's long epochs amortize.",
)


def data_name(data: str | None, root: Path) -> str:
    """A short name for file names: 'sample', a manifest's stem, or the data folder (the parent of train/)."""
    if data is None:
        name = "sample"
    elif root.is_file():  # a CSV manifest
        name = root.stem
    else:
        name = root.parent.name if root.name == "train" else root.name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "data"


def run_compare(config: CompareConfig, command: str) -> tuple[dict, bool]:
    """Measure every row; return the report and whether the run was interrupted."""
    root = resolve_data(config.data)
    listed_samples = discover(root, on_bad="skip")  # a bad listing entry is a note, as an unreadable file is
    if config.batch > len(listed_samples):
        raise CompareError(f"--batch {config.batch} > the {len(listed_samples)} images of {display_path(root)}: "
                           "no row can make a full batch; lower --batch")
    # The rows are given the listing without its problems: those are the data's, noted once, not the rows'.
    samples = dataclasses.replace(listed_samples, problems=())
    notes = [note.format(decoder=decode.jpeg_decoder(), naive=naive_description(config.augmentation))
             for note in METHOD_NOTES]
    workers = tuple(range(1, config.workers_max + 1))
    users = [user_row(spec, config.batch, workers) for spec in config.loaders]  # bad input fails first
    specs = builtin_rows(samples, config, notes) + users
    ctrl_c = CtrlC()
    with ctrl_c.installed():  # a Ctrl-C as a point's workers start is not swallowed, nor taken for a row's failure
        rows, interrupted = measure_rows(specs, config.settings, ctrl_c)
        if interrupted:
            notes.append(f"interrupted: {len(rows)} of {len(specs)} rows measured (the last may be partial).")
        elif rows:
            rows, interrupted = paired_rounds(rows, specs, config.settings, ctrl_c)
            if interrupted:
                notes.append("interrupted during the paired rounds: the figures are the sweep's, not paired.")
    notes += skipped_notes(rows, listed_samples.problems, root)
    names = [row.name for row in rows]
    does = {name: row_does(name, config.augmentation) for name in names}
    scores = {} if interrupted else row_fidelity(samples.paths, config.augmentation, names)
    name = data_name(config.data, root)
    context = {"command": command, "data": display_path(root), "data_name": name,
               "chart": output_stem(name, config) + ".png",
               "dataset_images": len(samples), "interrupted": interrupted, "notes": notes,
               "does": does, "fidelity": scores, "fidelity_spec": describe_spec(pinned(config.augmentation)),
               "listing_problems": [problem.to_dict() for problem in listed_samples.problems]}
    return build_report(rows, config, context), interrupted
