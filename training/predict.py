"""Predict images with one model or a K-fold ensemble: python -m training.predict.

    python -m training.predict --checkpoints runs/fit            # OUT/best.pt, or OUT/fold*/best.pt
    python -m training.predict --checkpoints runs/fit --data eval/ --tta --vote soft --out submission.csv
    python -m training.predict --checkpoints runs/fit --data photos/ --top-k 5 --out photos.csv

--data is one of (default: the sample's eval split):
  - the competition's eval layout: info.csv (ImageID, ans) and images/; an answers.csv beside
    info.csv (the sample generator writes one) holds the true classes;
  - an ImageFolder: one folder per class, the folder names are the true classes;
  - a CSV manifest: path,label[,group], paths relative to the CSV; labels are class names,
    or class indices where the label column holds integers;
  - a plain folder of images (unlabelled).
Class names are matched to the classes stored in the checkpoint; a name the model does not
know is an error.

--format competition writes the submission (ImageID,ans with class indices); --format full
writes path, pred_index, pred_class, top1_class, top1_prob ... topK_class, topK_prob and, where
known, true_index, true_class. Default: competition for the eval layout, full otherwise. The
output is written atomically; OUT.json beside it records the run, the skipped files and, where
the true classes are known, the score: macro-F1, accuracy, a per-class report and the confusion
matrix (also drawn in OUT-confusion.png).

An unreadable image is reported and keeps its row with the prediction left empty (--on-bad
skip), or stops the run with an error naming it (--on-bad fail).

TTA averages the softmax over the image, its mirror and small shifts. A K-fold ensemble votes
softly (mean of the models' probabilities) or by majority (--vote hard; ties go to the higher
mean probability). The top-k columns are the mean probabilities, whichever the vote.
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from feeding import checks
from feeding.backends import PIPELINES, capabilities
from feeding.errors import BadFile, FeedError
from feeding.spec import AugSpec
from feeding.spec_file import SpecFile
from training.checkpoint import BEST, CheckpointError, load_checkpoint
from training.predict_data import EVAL_LAYOUT, TestSet, read_test_set, true_classes

VOTES = ("soft", "hard")
FORMATS = ("competition", "full")
ON_BAD = ("skip", "fail")
TTA_SHIFT = 8  # pixels: small enough to keep a face in frame at the sizes trained here
# Predictions are matched to files by position: only a pipeline that keeps the file order will do.
ORDERED_PIPELINES = tuple(name for name in PIPELINES if capabilities(name).keeps_file_order)


@dataclass(frozen=True)
class PredictConfig:
    """One prediction run, validated when built: ``batch`` images per batch, ``top_k`` classes listed
    per image (full format), ``workers`` loader workers (0: in this process)."""

    checkpoints: str
    data: str | None = None  # None: the sample's eval split
    tta: bool = False
    vote: str = "soft"
    out: str | None = None  # None: submission.csv (competition format) or predictions.csv (full)
    format: str | None = None  # None: competition for the eval layout, full otherwise
    top_k: int = 3
    on_bad: str = "skip"
    device: str = "cpu"
    batch: int = 64
    workers: int = 2
    pipeline: str = "albumentations"  # one that keeps the file order (ORDERED_PIPELINES)
    spec: SpecFile | None = None  # --spec: its eval section for every model; None: each checkpoint's own

    def __post_init__(self) -> None:
        checks.choice("vote", self.vote, VOTES)
        if self.format is not None:
            checks.choice("format", self.format, FORMATS)
        checks.choice("on_bad", self.on_bad, ON_BAD)
        if not capabilities(self.pipeline).keeps_file_order:
            raise ValueError(f"--pipeline must be {' or '.join(ORDERED_PIPELINES)} ({self.pipeline} may reorder "
                             "or drop files)")
        checks.count("batch", self.batch)
        checks.count("top_k", self.top_k)
        checks.count("workers", self.workers, minimum=0)
        checks.available_device("device", self.device)
        if self.spec is not None and not isinstance(self.spec, SpecFile):
            raise TypeError(f"spec must be a SpecFile (feeding.spec_file.load_spec_file), got {self.spec!r}")
        if self.out is not None and Path(self.out).suffix.lower() == ".json":
            raise ValueError(f"--out {self.out}: the run's JSON is written beside the output, so the output "
                             "must not be a .json file")

    def output_format(self, layout: str) -> str:
        return self.format or ("competition" if layout == EVAL_LAYOUT else "full")

    def output_path(self, layout: str) -> Path:
        if self.out is not None:
            return Path(self.out)
        return Path("submission.csv" if self.output_format(layout) == "competition" else "predictions.csv")


def find_checkpoints(where: str | Path) -> list[Path]:
    """A checkpoint file, DIR/best.pt, or every DIR/fold*/best.pt (a K-fold run)."""
    path = Path(where)
    if path.is_file():
        return [path]
    if (path / BEST).is_file():
        return [path / BEST]
    folds = sorted(path.glob(f"fold*/{BEST}"), key=lambda p: int(p.parent.name[4:] or 0))
    if not folds:
        raise CheckpointError(f"no checkpoint at {path}: expected a .pt file, {path / BEST} or {path}/fold*/{BEST}")
    return folds


# ---------------------------------------------------------------- the models


def tta_views(images: torch.Tensor) -> list[torch.Tensor]:
    """The batch, its mirror, and shifts of TTA_SHIFT pixels right and down (zero-filled)."""
    shifted_x = torch.nn.functional.pad(images, (TTA_SHIFT, 0, 0, 0))[..., :, : images.shape[-1]]
    shifted_y = torch.nn.functional.pad(images, (0, 0, TTA_SHIFT, 0))[..., : images.shape[-2], :]
    return [images, images.flip(-1), shifted_x, shifted_y]


@torch.no_grad()
def model_probabilities(model: torch.nn.Module, feeder, tta: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, classes) softmax probabilities in the feeder's order, TTA views averaged, and the
    label the feeder delivered with each image."""
    model.eval()
    probabilities, labels = [], []
    for images, batch_labels in feeder:
        views = tta_views(images) if tta else [images]
        probabilities.append(torch.stack([model(view).float().softmax(dim=1) for view in views]).mean(dim=0).cpu())
        labels.append(batch_labels.cpu())
    return torch.cat(probabilities), torch.cat(labels)


def vote(probabilities: list[torch.Tensor], how: str) -> np.ndarray:
    """The ensemble's class per image: mean probability (soft) or majority (hard, ties by mean)."""
    mean = torch.stack(probabilities).mean(dim=0)
    if how == "soft":
        return mean.argmax(dim=1).numpy()
    votes = torch.stack([p.argmax(dim=1) for p in probabilities])  # (models, images)
    counts = torch.nn.functional.one_hot(votes, mean.shape[1]).sum(dim=0).float()  # (images, classes)
    return (counts + mean / 2).argmax(dim=1).numpy()  # mean < 1 breaks ties only


def _load_model(path: Path, device: torch.device):
    from training.models import build_model

    state = load_checkpoint(path)
    try:
        model = build_model(state["model_name"], state["num_classes"])
        model.load_state_dict(state["model"])
    except (RuntimeError, ValueError) as err:
        raise CheckpointError(f"{path}: its weights do not fit {state['model_name']!r} with {state['num_classes']} "
                              f"classes: {str(err).splitlines()[0]}") from err
    return model.to(device), state


def checkpoint_classes(path: Path, state: dict) -> tuple[str, ...]:
    classes = tuple(map(str, state.get("classes") or range(state["num_classes"])))
    if len(classes) != state["num_classes"]:
        raise CheckpointError(f"{path} lists {len(classes)} class names for {state['num_classes']} classes")
    return classes


@dataclass(frozen=True)
class ModelPass:
    """One model's pass over the test set."""

    probabilities: torch.Tensor  # (delivered images, classes)
    delivered: np.ndarray  # each row's position in the test set
    skipped: tuple[BadFile, ...]
    notes: tuple[str, ...]


def run_model(model, spec: AugSpec, test: TestSet, config: PredictConfig, device: torch.device) -> ModelPass:
    """Feed the test set through ``model`` in file order, augmented by ``spec`` (deterministic
    evaluation); an unreadable file is left out (skip) or raises."""
    from feeding import FeedConfig, create_feeder
    from feeding.device import DeviceFeeder
    from feeding.sources import Samples

    n = len(test.paths)
    # Each file is its own "class" here: the label the feeder delivers with an image is its position.
    samples = Samples(paths=np.array(test.paths), labels=np.arange(n, dtype=np.int64),
                      groups=np.arange(n, dtype=np.int64), classes=test.names, root=test.root, layout="test",
                      problems=test.problems)
    feed = FeedConfig(pipeline=config.pipeline, batch_size=config.batch, workers=config.workers,
                      spec=spec, shuffle=False, drop_last=False, on_bad=config.on_bad)
    with create_feeder(samples, feed) as feeder:
        probabilities, positions = model_probabilities(model, DeviceFeeder(feeder, device), config.tta)
        skipped, notes = tuple(feeder.skipped), tuple(feeder.notes)
    return ModelPass(probabilities, delivered_positions(test, skipped, positions.numpy()), skipped, notes)


def delivered_positions(test: TestSet, skipped, positions: np.ndarray) -> np.ndarray:
    """The test-set positions of the delivered images: every file the feeder did not skip, in
    file order. The positions the feeder delivered must be exactly those."""
    unreadable = {record.path for record in skipped}
    expected = np.array([i for i, path in enumerate(test.paths) if path not in unreadable], dtype=np.int64)
    if not np.array_equal(positions, expected):
        raise FeedError(f"the feeder delivered {len(positions)} images where {len(test.paths)} files less "
                        f"{len(test.paths) - len(expected)} skipped leave {len(expected)}, or not in file order: "
                        "predictions cannot be matched to files")
    return expected


@dataclass(frozen=True)
class Ensemble:
    """What every model predicted, combined."""

    checkpoints: tuple[str, ...]
    classes: tuple[str, ...]
    delivered: np.ndarray  # test-set positions of the predicted images
    mean: torch.Tensor  # (delivered images, classes): the models' mean probabilities
    predicted: np.ndarray  # the vote, per delivered image
    skipped: tuple[BadFile, ...]
    notes: tuple[str, ...]


def checkpoint_eval_spec(path: Path, state: dict) -> AugSpec:
    """What the run that made the checkpoint validated with: its spec file's eval section, else
    ``eval_spec`` at its size."""
    from feeding.spec import eval_spec
    from feeding.spec_file import spec_from_record

    recorded = state["config"].get("spec")
    if recorded:
        return spec_from_record(recorded["eval"], f"{path}: config.spec.eval")
    return eval_spec(tuple(state["config"]["size"]))


def load_models(checkpoints: list[Path], device: torch.device) -> tuple[list, tuple[str, ...]]:
    """(path, model, the eval spec it was validated with) per checkpoint, and the classes they share."""
    models, classes = [], None
    for path in checkpoints:
        model, state = _load_model(path, device)
        if classes is None:
            classes = checkpoint_classes(path, state)
        elif checkpoint_classes(path, state) != classes:
            raise CheckpointError(f"{path} has other classes than {checkpoints[0]}: an ensemble needs the same ones")
        models.append((path, model, checkpoint_eval_spec(path, state)))
    return models, classes


def run_ensemble(models: list, classes: tuple[str, ...], test: TestSet, config: PredictConfig) -> Ensemble:
    device = torch.device(config.device)
    passes = []
    for path, model, spec in models:
        passes.append(run_model(model, config.spec.eval if config.spec else spec, test, config, device))
        if not np.array_equal(passes[-1].delivered, passes[0].delivered):
            raise FeedError(f"{path} was fed other files than {models[0][0]} (did a file change meanwhile?)")
    probabilities = [p.probabilities for p in passes]
    notes = tuple(dict.fromkeys(note for p in passes for note in p.notes))
    return Ensemble(tuple(str(path) for path, _, _ in models), classes, passes[0].delivered,
                    torch.stack(probabilities).mean(0), vote(probabilities, config.vote), passes[0].skipped, notes)


# ---------------------------------------------------------------- output and score


def output_rows(test: TestSet, ensemble: Ensemble, truth: np.ndarray | None, fmt: str, top_k: int) -> list[list]:
    """Header and one row per test image; an image that was not predicted has empty prediction cells."""
    predicted = dict(zip(ensemble.delivered.tolist(), ensemble.predicted.tolist()))
    if fmt == "competition":
        return [["ImageID", "ans"]] + [[name, predicted.get(i, "")] for i, name in enumerate(test.names)]
    k = min(top_k, len(ensemble.classes))
    top_probs, top_classes = ensemble.mean.topk(k, dim=1)
    tops = {pos: (c, p) for pos, c, p in zip(ensemble.delivered.tolist(), top_classes.tolist(), top_probs.tolist())}
    header = ["path", "pred_index", "pred_class"]
    header += [f"top{rank}_{what}" for rank in range(1, k + 1) for what in ("class", "prob")]
    header += ["true_index", "true_class"] if truth is not None else []
    rows = [header]
    for i, name in enumerate(test.names):
        row = [name, "", ""] + [""] * (2 * k)
        if i in predicted:
            row[1:3] = [predicted[i], ensemble.classes[predicted[i]]]
            classes, probs = tops[i]
            row[3:] = [cell for c, p in zip(classes, probs) for cell in (ensemble.classes[c], f"{p:.6f}")]
        if truth is not None:
            row += [int(truth[i]), ensemble.classes[truth[i]]]
        rows.append(row)
    return rows


def score(truth: np.ndarray, predicted: np.ndarray, classes: tuple[str, ...]) -> dict:
    """macro-F1, accuracy and the per-class report over the classes that are true or predicted
    (sklearn's default), and the confusion matrix (rows true, columns predicted) over all classes."""
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

    present = sorted(set(truth.tolist()) | set(predicted.tolist()))
    report = classification_report(truth, predicted, labels=present, target_names=[classes[i] for i in present],
                                   output_dict=True, zero_division=0)
    return {
        "scored_images": len(truth),
        "macro_f1": float(f1_score(truth, predicted, labels=present, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(truth, predicted)),
        "per_class": {name: {key: float(value) for key, value in row.items()} for name, row in report.items()
                      if isinstance(row, dict)},
        "confusion": confusion_matrix(truth, predicted, labels=range(len(classes))).tolist(),
    }


def _write_csv(path: Path, rows: list[list]) -> None:
    from feeding.io import write_atomic

    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    write_atomic(path, text.getvalue().encode())


def _write_confusion(out: Path, scores: dict, classes: tuple[str, ...]) -> Path:
    from feeding.io import write_atomic
    from training.figures import confusion_png

    path = out.with_name(f"{out.stem}-confusion.png")
    title = f"{scores['scored_images']} images: macro-F1 {scores['macro_f1']:.3f}"
    write_atomic(path, confusion_png(torch.tensor(scores["confusion"]), classes, title))
    return path


def eval_provenance(models: list, config: PredictConfig) -> dict:
    """The result's ``spec`` (its eval section) and ``spec_file``: the --spec file's, else the
    checkpoints' own (``eval`` None and ``eval_by_checkpoint`` where they differ)."""
    from feeding.spec_file import spec_provenance, spec_record

    if config.spec is not None:
        return spec_provenance(eval=config.spec.eval, spec_file=config.spec.name)
    specs = [spec for _, _, spec in models]
    if all(spec == specs[0] for spec in specs):
        return spec_provenance(eval=specs[0])
    return {"spec": {"eval": None, "eval_by_checkpoint": [spec_record(spec) for spec in specs]}, "spec_file": None}


def predict(config: PredictConfig) -> dict:
    """Predict the test set with every checkpoint (inference, not a predicted rate): the output CSV,
    its .json beside it (and the confusion PNG where the true classes are known); returns the .json's record."""
    from feeding.io import write_json

    checkpoints = find_checkpoints(config.checkpoints)
    test = read_test_set(config.data or _sample_eval(), config.on_bad)
    models, classes = load_models(checkpoints, torch.device(config.device))
    truth = true_classes(test, classes)  # before predicting: a class the models do not know is an error now
    ensemble = run_ensemble(models, classes, test, config)
    fmt, out = config.output_format(test.layout), config.output_path(test.layout)
    _write_csv(out, output_rows(test, ensemble, truth, fmt, config.top_k))
    result = {"checkpoints": list(ensemble.checkpoints), "data": test.root, "layout": test.layout,
              "images": len(test.paths), "predicted": len(ensemble.delivered),
              "skipped": [record.to_dict() for record in ensemble.skipped], "notes": list(ensemble.notes),
              "tta": config.tta, "vote": config.vote, "format": fmt, "output": str(out),
              "classes": list(ensemble.classes), **eval_provenance(models, config)}
    if fmt == "full" and config.top_k > len(ensemble.classes):
        result["notes"].append(f"--top-k {config.top_k}: the model has only {len(ensemble.classes)} classes")
    if truth is not None:
        result.update(score(truth[ensemble.delivered], ensemble.predicted, ensemble.classes))
        result["confusion_png"] = str(_write_confusion(out, result, ensemble.classes))
    write_json(out.with_suffix(".json"), result)
    return result


def _sample_eval() -> Path:
    from feeding.sample import ensure_sample

    return ensure_sample() / "eval"


def get_args_parser() -> argparse.ArgumentParser:
    from feeding.options import HelpFormatter, add_spec_argument, non_negative_int, positive_int

    d = PredictConfig(checkpoints="")
    p = argparse.ArgumentParser(prog="python -m training.predict", description=__doc__, formatter_class=HelpFormatter)
    unset = argparse.SUPPRESS  # no "(default: None)": PredictConfig's default applies, and the help says it
    p.add_argument("--checkpoints", required=True, default=unset,
                   help="a .pt file, a run directory, or a K-fold run directory")
    p.add_argument("--data", default=unset,
                   help="eval layout (info.csv + images/), ImageFolder, CSV manifest, or a folder of images "
                        "(default: the sample's eval split)")
    p.add_argument("--tta", action="store_true", help="average over the mirror and small shifts")
    p.add_argument("--vote", default=d.vote, choices=VOTES, help="how a K-fold ensemble decides")
    p.add_argument("--out", default=unset,
                   help="output CSV; its .json (and -confusion.png) go beside it (default: submission.csv for the "
                        "competition format, predictions.csv for the full one)")
    p.add_argument("--format", choices=FORMATS, default=unset,
                   help="competition: ImageID,ans; full: path, predicted class, top-k classes and probabilities, "
                        "true class (default: competition for the eval layout, full otherwise)")
    p.add_argument("--top-k", type=positive_int, default=d.top_k, help="classes listed per image (full format)")
    p.add_argument("--on-bad", default=d.on_bad, choices=ON_BAD,
                   help="an unreadable image: reported, with an empty prediction (skip), or an error (fail)")
    p.add_argument("--device", default=d.device, help="where the models run: cpu, cuda, cuda:N")
    p.add_argument("--batch", type=positive_int, default=d.batch, help="images per batch")
    p.add_argument("--workers", type=non_negative_int, default=d.workers, help="data-loading workers (0: in process)")
    p.add_argument("--pipeline", default=d.pipeline, choices=ORDERED_PIPELINES,
                   help="host pipeline that decodes and resizes (both keep the file order)")
    add_spec_argument(p, "augmentation spec, YAML or JSON, with train: and eval: sections (see README): its eval "
                      "section is used for every model; default: each checkpoint's own (its run's spec file, "
                      "else the benchmark eval spec at its size)")
    return p


def report_lines(result: dict) -> list[str]:
    """What the console shows: notes, skipped files, what was written and the score."""
    lines = [f"note: {note}" for note in result["notes"]]
    lines += [f"skipped: {record['path']}: {record['reason']}" for record in result["skipped"]]
    models = len(result["checkpoints"])
    line = (f"wrote {result['output']} ({result['format']} format): {result['predicted']} of {result['images']} "
            f"images predicted, {models} model(s), {'TTA, ' if result['tta'] else ''}{result['vote']} vote")
    if result["skipped"]:
        line += f"; {len(result['skipped'])} skipped (listed in the .json)"
    lines.append(line)
    if "macro_f1" in result:
        lines.append(f"against the true classes ({result['scored_images']} images): macro-F1 "
                     f"{result['macro_f1']:.4f}, accuracy {result['accuracy']:.4f}; confusion matrix: "
                     f"{result['confusion_png']}")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        from feeding.options import spec_from_args

        result = predict(PredictConfig(**{**vars(args), "spec": spec_from_args(parser, argv)}))
    except (FeedError, CheckpointError, ValueError) as error:
        print(f"training.predict: error: {error}", file=sys.stderr)
        return 2
    print("\n".join(report_lines(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
