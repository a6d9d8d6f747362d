"""Predict a test set with one model or a K-fold ensemble: ``python -m training.predict``.

    python -m training.predict --checkpoints runs/fit            # OUT/best.pt, or OUT/fold*/best.pt
    python -m training.predict --checkpoints runs/fit --data eval/ --tta --vote soft --out submission.csv

``--data`` is the competition's eval layout (``images/*.jpg`` and ``info.csv`` with
ImageID, ans) or a plain folder of images (default: the sample's eval split).
The submission CSV (ImageID, ans) is written atomically. Where ``answers.csv``
sits beside ``info.csv`` (the sample generator writes one), the submission is
scored against it: macro-F1 and accuracy.

TTA averages the softmax over the image, its mirror and small shifts. A K-fold
ensemble votes softly (mean of the models' probabilities) or by majority
(``--vote hard``; ties go to the higher mean probability).
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

from feeding.errors import FeedError
from training.checkpoint import BEST, CheckpointError, load_checkpoint

VOTES = ("soft", "hard")
TTA_SHIFT = 8  # pixels: small enough to keep a face in frame at the sizes trained here


@dataclass(frozen=True)
class PredictConfig:
    checkpoints: str
    data: str | None = None  # None: the sample's eval split
    tta: bool = False
    vote: str = "soft"
    out: str = "submission.csv"
    device: str = "cpu"
    batch: int = 64
    workers: int = 2
    pipeline: str = "albumentations"  # a host pipeline: it keeps the file order

    def __post_init__(self) -> None:
        if self.vote not in VOTES:
            raise ValueError(f"--vote must be one of {', '.join(VOTES)}, got {self.vote!r}")
        if self.pipeline not in ("pil", "albumentations"):
            raise ValueError("--pipeline must be pil or albumentations (DALI may reorder or drop files)")
        if self.batch < 1 or self.workers < 0:
            raise ValueError("--batch must be >= 1 and --workers >= 0")


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


@dataclass(frozen=True)
class TestSet:
    paths: list[str]
    image_ids: list[str]
    answers: np.ndarray | None  # the true classes, where answers.csv exists


def read_test_set(root: str | Path) -> TestSet:
    """The eval layout (info.csv + images/) in info.csv's order, or a plain folder in name order."""
    from feeding.sources import IMAGE_EXTENSIONS

    root = Path(root)
    info = root / "info.csv"
    if info.is_file():
        with open(info, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if "ImageID" not in (reader.fieldnames or ()):
                raise FeedError(f"{info} has no ImageID column (the eval layout's info.csv: ImageID, ans)")
            ids = [row["ImageID"] for row in reader]
        if not ids:
            raise FeedError(f"{info} lists no images")
        paths = [str(root / "images" / image_id) for image_id in ids]
        missing = [p for p in paths if not Path(p).is_file()]
        if missing:
            raise FeedError(f"{len(missing)} image(s) listed in {info} are missing, first: {missing[0]}")
        return TestSet(paths, ids, _answers(root / "answers.csv", ids))
    if not root.is_dir():
        raise FeedError(f"test data {root} does not exist")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if not files:
        raise FeedError(f"no images in {root} (and no info.csv)")
    return TestSet([str(p) for p in files], [p.name for p in files], None)


def _answers(path: Path, ids: list[str]) -> np.ndarray | None:
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as fh:
        truth = {row["ImageID"]: int(row["ans"]) for row in csv.DictReader(fh)}
    if set(truth) != set(ids):
        raise FeedError(f"{path} does not list the same images as info.csv")
    return np.array([truth[i] for i in ids], dtype=np.int64)


def tta_views(images: torch.Tensor) -> list[torch.Tensor]:
    """The batch, its mirror, and shifts of TTA_SHIFT pixels right and down (zero-filled)."""
    shifted_x = torch.nn.functional.pad(images, (TTA_SHIFT, 0, 0, 0))[..., :, : images.shape[-1]]
    shifted_y = torch.nn.functional.pad(images, (0, 0, TTA_SHIFT, 0))[..., : images.shape[-2], :]
    return [images, images.flip(-1), shifted_x, shifted_y]


@torch.no_grad()
def model_probabilities(model: torch.nn.Module, feeder, tta: bool) -> torch.Tensor:
    """(images, classes) softmax probabilities in the feeder's order, TTA views averaged."""
    model.eval()
    out = []
    for images, _ in feeder:
        views = tta_views(images) if tta else [images]
        out.append(torch.stack([model(view).float().softmax(dim=1) for view in views]).mean(dim=0).cpu())
    return torch.cat(out)


def vote(probabilities: list[torch.Tensor], how: str) -> np.ndarray:
    """The ensemble's class per image: mean probability (soft) or majority (hard, ties by mean)."""
    mean = torch.stack(probabilities).mean(dim=0)
    if how == "soft":
        return mean.argmax(dim=1).numpy()
    votes = torch.stack([p.argmax(dim=1) for p in probabilities])  # (models, images)
    counts = torch.nn.functional.one_hot(votes, mean.shape[1]).sum(dim=0).float()  # (images, classes)
    return (counts + mean / 2).argmax(dim=1).numpy()  # mean < 1 breaks ties only


def _load_model(path: Path, device: torch.device):
    from bench.consume import build_model

    state = load_checkpoint(path)
    try:
        model = build_model(state["model_name"], state["num_classes"])
        model.load_state_dict(state["model"])
    except (RuntimeError, ValueError) as err:
        raise CheckpointError(f"{path}: its weights do not fit {state['model_name']!r} with {state['num_classes']} "
                              f"classes: {str(err).splitlines()[0]}") from err
    return model.to(device), state


def predict(config: PredictConfig) -> dict:
    from bench.io import write_atomic, write_json
    from feeding import FeedConfig, create_feeder, eval_spec
    from feeding.device import DeviceFeeder
    from feeding.sources import Samples

    checkpoints = find_checkpoints(config.checkpoints)
    test = read_test_set(config.data or _sample_eval())
    device = torch.device(config.device)
    probabilities, classes, names = [], None, []
    for path in checkpoints:
        model, state = _load_model(path, device)
        if classes is None:
            classes = tuple(state.get("classes") or range(state["num_classes"]))
        elif state["num_classes"] != len(classes):
            raise CheckpointError(f"{path} has {state['num_classes']} classes, {checkpoints[0]} has {len(classes)}")
        size = tuple(state["config"]["size"])
        samples = Samples(paths=np.array(test.paths), labels=np.zeros(len(test.paths), dtype=np.int64),
                          groups=np.arange(len(test.paths), dtype=np.int64), classes=tuple(map(str, classes)),
                          root=str(Path(test.paths[0]).parent), layout="test")
        feed = FeedConfig(pipeline=config.pipeline, batch_size=config.batch, workers=config.workers,
                          spec=eval_spec(size), shuffle=False, drop_last=False, on_bad="fail")
        with create_feeder(samples, feed) as feeder:
            probs = model_probabilities(model, DeviceFeeder(feeder, device), config.tta)
        if len(probs) != len(test.paths):
            raise FeedError(f"{path}: {len(probs)} predictions for {len(test.paths)} images")
        probabilities.append(probs)
        names.append(str(path))
    answers = vote(probabilities, config.vote)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["ImageID", "ans"])
    writer.writerows(zip(test.image_ids, answers.tolist()))
    write_atomic(Path(config.out), text.getvalue().encode())
    result = {"checkpoints": names, "images": len(test.paths), "tta": config.tta, "vote": config.vote,
              "submission": config.out}
    if test.answers is not None:
        from sklearn.metrics import accuracy_score, f1_score

        result["macro_f1"] = float(f1_score(test.answers, answers, average="macro"))
        result["accuracy"] = float(accuracy_score(test.answers, answers))
    write_json(Path(config.out).with_suffix(".json"), result)
    return result


def _sample_eval() -> Path:
    from feeding.sample import ensure_sample

    return ensure_sample() / "eval"


def get_args_parser() -> argparse.ArgumentParser:
    d = PredictConfig(checkpoints="")
    p = argparse.ArgumentParser(prog="python -m training.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", required=True, help="a .pt file, a run directory, or a K-fold run directory")
    p.add_argument("--data", help="eval layout (info.csv + images/) or a folder of images (default: sample eval)")
    p.add_argument("--tta", action="store_true", help="average over the mirror and small shifts")
    p.add_argument("--vote", default=d.vote, choices=VOTES, help="how a K-fold ensemble decides")
    p.add_argument("--out", default=d.out, help="submission CSV (a .json with the score goes beside it)")
    p.add_argument("--device", default=d.device)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--pipeline", default=d.pipeline, choices=("pil", "albumentations"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        result = predict(PredictConfig(**vars(args)))
    except (FeedError, CheckpointError, ValueError) as error:
        print(f"training.predict: error: {error}", file=sys.stderr)
        return 2
    models = len(result["checkpoints"])
    line = (f"wrote {result['submission']}: {result['images']} images, {models} model(s), "
            f"{'TTA, ' if result['tta'] else ''}{result['vote']} vote")
    if "macro_f1" in result:
        line += f"; against the answers: macro-F1 {result['macro_f1']:.4f}, accuracy {result['accuracy']:.4f}"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
