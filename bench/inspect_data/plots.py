"""The report's plots: class counts, thumbnails, mask/gender/age, images per person, sizes, bytes;
each a matplotlib Figure, written as PNG."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # the object API: no pyplot, no display, no global backend switch

from bench.inspect_data.files import THUMBNAILS_PER_CLASS, TOP_SIZES, is_squashed
from bench.inspect_data.labels import group_word, plural
from feeding.decode import load_pil
from feeding.errors import BadImageError
from feeding.io import write_atomic

LABELLED_BARS = 60  # above this many classes the counts plot drops the class names
THUMBNAIL_PX = 96  # longest side of a thumbnail, pixels


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


def write_png(fig: Figure, path: Path) -> Path:
    """``fig`` as a 256-colour PNG at ``path`` (100 dpi), written atomically. The palette keeps the charts
    exact and the thumbnails of photos with fine detail small: as 24-bit PNG the sample's came to 2.2 MB."""
    from PIL import Image

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    buffer.seek(0)
    with Image.open(buffer) as rendered:
        palette = rendered.convert("RGB").quantize(256)
    out = io.BytesIO()
    palette.save(out, format="PNG", optimize=True)
    return write_atomic(path, out.getvalue())
