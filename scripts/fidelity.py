"""How faithful is each pipeline's picture? PSNR against the written order, step by step, antialiased.

    .venv/bin/python scripts/fidelity.py [OUT_DIR] [--images N]

On two sets of 512x384 JPEGs: pictures with fine detail (``feeding.detail``: stripes down
to a 2.2 px period, 1-px text strokes, noise texture, a mixed "photo"; generated into the
cache) and the sample data set's photos. For each spec below, every row of
``bench.fidelity`` runs on the same files with the same draws where it can, and the PSNR
of its picture against ``feeding.fidelity.reference`` (full PIL decode, the spec's ops one
by one in the written order) is summarised as its median and worst image:

- ``benchmark, fixed angle``: Rotate((10, 10)), Resize((224, 224)), HorizontalFlip(1.0):
  the benchmark spec with its draws fixed, so that every row, DALI's and torchvision's
  with their own random sources included, runs the same augmentation;
- ``crop + flip + jitter, fixed``: RandomResizedCrop(224, scale=(1, 1), ratio=(3/4, 3/4)),
  HorizontalFlip(1.0), ColorJitter((1.2, 1.2), (0.8, 0.8), (1.3, 1.3)): the same for
  crops and colour;
- ``crop + flip + jitter, random``: RandomResizedCrop(224), HorizontalFlip(0.5),
  ColorJitter(0.4, 0.4, 0.4), scored for the rows that make the reference's draws.

Writes OUT_DIR/fidelity-detail.md/.json and OUT_DIR/fidelity-sample.md/.json (default OUT_DIR:
results). The figures do not depend on the machine's speed: no core count in the names.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.fidelity import format_db, measure  # noqa: E402
from feeding.spec import AugSpec, ColorJitter, HorizontalFlip, RandomResizedCrop, Resize, Rotate  # noqa: E402

SPECS = {
    "benchmark, fixed angle": AugSpec([Rotate((10, 10)), Resize((224, 224)), HorizontalFlip(1.0)]),
    "crop + flip + jitter, fixed": AugSpec([RandomResizedCrop(224, scale=(1.0, 1.0), ratio=(0.75, 0.75)),
                                            HorizontalFlip(1.0), ColorJitter((1.2, 1.2), (0.8, 0.8), (1.3, 1.3))]),
    "crop + flip + jitter, random": AugSpec([RandomResizedCrop(224), HorizontalFlip(0.5),
                                             ColorJitter(0.4, 0.4, 0.4)]),
}
TARGET = (38.0, 33.0)  # median, worst (dB): the target on photographic content with fine detail


def detail_files(count: int) -> list[str]:
    from feeding import detail
    from feeding.cache import cache_dir

    folder = cache_dir() / "fidelity" / f"detail-{count}"
    return [str(p) for p in detail.write_detail_jpegs(folder, count, seed=0)]


def sample_files(count: int) -> list[str]:
    from feeding import discover
    from feeding.sample import ensure_sample

    paths = discover(str(ensure_sample())).paths
    step = max(1, len(paths) // count)
    return [str(p) for p in paths[::step][:count]]


def run(paths: list[str]) -> dict:
    from feeding.spec_file import spec_record

    return {"images": len(paths),
            "specs": [{"name": name, "spec": spec_record(spec), "rows": measure(paths, spec)}
                      for name, spec in SPECS.items()]}


def markdown(title: str, report: dict, command: str) -> str:
    m, commit = report["machine"], report["commit"]
    lines = [f"# Fidelity: {title}", "", f"`{command}`  ",
             f"{report['images']} images, 512x384 JPEGs; machine {m['cpu']}; commit {commit['id']} "
             f"(dirty: {commit['dirty']}), {report['created']}", "",
             "PSNR (dB) of each row's picture against the written order, step by step, with PIL's antialiased "
             "resize and bilinear rotate on a full decode (`feeding.fidelity.reference`), same draws. "
             f"Target on fine detail: median >= {TARGET[0]:g}, worst >= {TARGET[1]:g}. "
             "A row with its own random source is scored only where the spec's draws are fixed.", ""]
    for entry in report["specs"]:
        lines += [f"## {entry['name']}", "", "| row | what it does | median dB | worst dB |", "|---|---|---:|---:|"]
        for row in entry["rows"]:
            if "skipped" in row:
                lines.append(f"| {row['row']} | {row['does']} | not scored: {row['skipped']} | |")
            else:
                lines.append(f"| {row['row']} | {row['does']} | {format_db(row['median_db'])} | "
                             f"{format_db(row['worst_db'])} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bench.provenance import display_command, provenance
    from feeding.io import write_record_and_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="results", help="folder for the tables (.md) and their .json")
    parser.add_argument("--images", type=int, default=32, help="images per set")
    args = parser.parse_args(argv)
    command = display_command("python scripts/fidelity.py", list(argv if argv is not None else sys.argv[1:]))
    for name, title, files in (("detail", "pictures with fine detail (feeding.detail)", detail_files),
                               ("sample", "the sample data set's photos", sample_files)):
        report = {**run(files(args.images)), **provenance()}
        stem = Path(args.out) / f"fidelity-{name}"
        write_record_and_table(stem, report, markdown(title, report, command))
        print(f"wrote {stem}.md, {stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
