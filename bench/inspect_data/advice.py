"""What the numbers say: the class-balance sentence, and short suggestions about what was found."""
from __future__ import annotations

from bench.inspect_data.labels import group_word, plural

BALANCED_RATIO = 2.0  # a largest/smallest class ratio up to this counts as balanced


def imbalance_sentence(classes: dict, images: int, layout: str) -> str:
    """What the largest/smallest class ratio means for the metric to judge models by."""
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


def first_few(items: list[str], shown: int = 3) -> str:
    """The first ``shown`` items between commas, and how many more."""
    return ", ".join(items[:shown]) + (f" and {len(items) - shown} more" if len(items) > shown else "")


def _label_tips(stats: dict) -> list[str]:
    classes = stats["classes"]
    tips = []
    for typo in classes["suspected_typos"]:
        tips.append(f"Class '{typo['class']}' has {typo['images']} image(s) and is named like '{typo['like']}' "
                    f"({typo['like_images']} images): a mistyped label? Relabel or move "
                    f"{first_few(typo['paths'])}. It is left out of the largest/smallest ratio.")
    if classes["missing"]:
        tips.append(f"{len(classes['missing'])} class(es) have no image: collect some or merge classes "
                    f"({first_few(classes['missing'], 5)}).")
    ratio = classes["imbalance_ratio"]
    if ratio is None or ratio > BALANCED_RATIO:
        shown = "unbounded" if ratio is None else f"{ratio:g}"
        tips.append(f"Imbalanced classes (largest/smallest {shown}): use a class-weighted loss (weights "
                    "proportional to 1/images) or a weighted sampler, pick models by macro-F1, and keep the class "
                    "mix in every fold (stratified splits).")
    if stats["problems"]:
        named = [f"{r['path']} ({r['reason']})" for r in stats["problems"]]
        tips.append(f"{len(named)} row(s) or file(s) were left out while listing (all under 'Listing problems'); "
                    f"fix or remove them: {first_few(named)}.")
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
        named = [f"{r['path']} ({hxw(r)}, {r['bytes']} bytes)" for r in files["outliers"]]
        tips.append(f"{len(named)} file(s) far off the usual pixel count or byte size (see 'Outliers'): check "
                    f"that they belong to the data set: {first_few(named)}.")
    other_modes = {mode: n for mode, n in files["modes"].items() if mode != "RGB"}
    if other_modes:
        modes = ", ".join(f"{mode}: {n}" for mode, n in other_modes.items())
        tips.append(f"{sum(other_modes.values())} image(s) are not RGB ({modes}): the loaders convert them to "
                    "8-bit RGB and drop alpha; nothing to do unless colour matters.")
    if files["extension_mismatch"]:
        tips.append(f"{len(files['extension_mismatch'])} file(s) hold another format than their extension says: "
                    "the loaders read by content, but other tools may not.")
    return tips


def hxw(record: dict) -> str:
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
