"""K-fold training, then predict with TTA and both votes on the sample's eval split."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from training.fit import main as fit_main
from training.predict import main as predict_main
from training.predict import tta_views, vote
from training.predict_data import read_test_set

TINY = "tests.test_training_fit:tiny_net"


@pytest.fixture(scope="module")
def data_with_eval(tmp_path_factory) -> Path:
    from feeding.sample import write_sample

    return write_sample(tmp_path_factory.mktemp("kfold") / "sample", people=6, eval_people=2)


@pytest.fixture(scope="module")
def kfold_run(data_with_eval, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kfold-run")
    args = ["--pipeline", "pil", "--data", str(data_with_eval / "train"), "--model", TINY, "--epochs", "1",
            "--size", "32", "--batch", "8", "--workers", "0", "--folds", "2", "--balanced", "--out", str(out)]
    assert fit_main(args) == 0
    return out


def test_folds_train_one_model_per_person_grouped_fold(kfold_run):
    summary = json.loads((kfold_run / "summary.json").read_text())
    assert summary["folds"] == 2 and len(summary["fold_best_macro_f1"]) == 2
    assert summary["mean_best_macro_f1"] == pytest.approx(np.mean(summary["fold_best_macro_f1"]))
    for k in range(2):
        assert (kfold_run / f"fold{k}" / "best.pt").is_file()


@pytest.mark.parametrize("how", ["soft", "hard"])
def test_predict_writes_a_scored_submission_for_the_eval_layout(kfold_run, data_with_eval, tmp_path, how, capsys):
    out = tmp_path / "submission.csv"
    assert predict_main(["--checkpoints", str(kfold_run), "--data", str(data_with_eval / "eval"), "--tta",
                         "--vote", how, "--out", str(out), "--workers", "0", "--batch", "5"]) == 0
    with open(data_with_eval / "eval" / "info.csv", newline="") as fh:
        expected_ids = [row["ImageID"] for row in csv.DictReader(fh)]
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [row["ImageID"] for row in rows] == expected_ids  # info.csv's order, every image once
    assert all(0 <= int(row["ans"]) < 18 for row in rows)
    result = json.loads(out.with_suffix(".json").read_text())
    assert len(result["checkpoints"]) == 2 and result["tta"] and result["vote"] == how
    # Scored on the written answers against info.csv's true classes (the competition's class indices).
    truth = read_test_set(data_with_eval / "eval").labels
    answers = np.array([int(row["ans"]) for row in rows])
    present = sorted(set(truth.tolist()) | set(answers.tolist()))
    assert result["accuracy"] == pytest.approx(float(np.mean(answers == truth)))
    macro_f1 = f1_score(truth, answers, labels=present, average="macro", zero_division=0)
    assert result["macro_f1"] == pytest.approx(macro_f1)
    assert np.array(result["confusion"]).sum(axis=0).tolist() == np.bincount(answers, minlength=18).tolist()
    assert f"against the true classes ({len(expected_ids)} images): macro-F1" in capsys.readouterr().out


def test_hard_vote_is_the_majority_and_ties_go_to_the_mean():
    a = torch.tensor([[0.6, 0.4], [0.9, 0.1]])
    b = torch.tensor([[0.4, 0.6], [0.8, 0.2]])
    c = torch.tensor([[0.45, 0.55], [0.7, 0.3]])
    assert vote([a, b, c], "hard").tolist() == [1, 0]  # image 0: two of three say 1
    assert vote([a, b], "hard").tolist() == [0, 0]  # image 0: a tie, mean prob 0.5/0.5 -> argmax 0
    assert vote([a, b], "soft").tolist() == [0, 0]


def test_tta_views_are_the_image_its_mirror_and_shifts():
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    views = tta_views(images)
    assert len(views) == 4 and all(v.shape == images.shape for v in views)
    assert torch.equal(views[1], images.flip(-1))


def test_predict_bad_input_is_a_clear_error(tmp_path, kfold_run, data_with_eval, capsys):
    from training.checkpoint import save_checkpoint

    assert predict_main(["--checkpoints", str(tmp_path / "nothing")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert predict_main(["--checkpoints", str(kfold_run), "--data", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "corrupt.pt").write_bytes(b"\x80\x02 half a pickle")
    assert predict_main(["--checkpoints", str(tmp_path / "corrupt.pt"), "--data", str(data_with_eval / "eval")]) == 2
    assert "is corrupt or not a checkpoint" in capsys.readouterr().err
    state = torch.load(kfold_run / "fold0" / "best.pt", weights_only=True)
    save_checkpoint(tmp_path / "mismatch.pt", {**state, "num_classes": 5})
    assert predict_main(["--checkpoints", str(tmp_path / "mismatch.pt"), "--data", str(data_with_eval / "eval")]) == 2
    assert "its weights do not fit" in capsys.readouterr().err
    (tmp_path / "bad-eval" / "images").mkdir(parents=True)
    (tmp_path / "bad-eval" / "info.csv").write_text("id,ans\n")
    assert predict_main(["--checkpoints", str(kfold_run), "--data", str(tmp_path / "bad-eval")]) == 2
    assert "has no ImageID column" in capsys.readouterr().err


def test_predict_a_plain_folder_in_name_order(kfold_run, data_with_eval, tmp_path):
    import shutil

    folder = tmp_path / "folder"
    folder.mkdir()
    for image in sorted((data_with_eval / "eval" / "images").glob("*.jpg"))[:5]:
        shutil.copy(image, folder / image.name)
    out = tmp_path / "submission.csv"
    assert predict_main(["--checkpoints", str(kfold_run / "fold1"), "--data", str(folder), "--out", str(out),
                         "--workers", "0"]) == 0
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [row["path"] for row in rows] == sorted(p.name for p in folder.iterdir())  # the full format
    assert "true_class" not in rows[0] and all(row["pred_class"] for row in rows)
    assert "macro_f1" not in json.loads(out.with_suffix(".json").read_text())  # no answers to score against


def test_balanced_sampling_evens_out_the_classes_with_a_new_draw_each_epoch():
    from training.sampling import balanced_indices

    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    drawn = labels[balanced_indices(labels, seed=0, epoch=0)]
    shares = np.bincount(drawn, minlength=3) / len(drawn)
    assert len(drawn) == 100 and np.all(np.abs(shares - 1 / 3) < 0.12)
    assert np.array_equal(balanced_indices(labels, 0, 0), balanced_indices(labels, 0, 0))  # seeded
    # Each epoch draws afresh, so over a few epochs most images of the common class are seen.
    seen = np.unique(np.concatenate([balanced_indices(labels, 0, epoch) for epoch in range(5)]))
    assert not np.array_equal(balanced_indices(labels, 0, 0), balanced_indices(labels, 0, 1))
    assert np.isin(np.arange(90), seen).mean() > 1.5 * np.isin(np.arange(90), balanced_indices(labels, 0, 0)).mean()


# ---------------------------------------------------------------- users' own data: layouts, bad files, output

CHANNEL_NET = "tests.test_training_predict:channel_net"


def channel_net(num_classes: int) -> torch.nn.Module:
    """Logits from each channel's mean: class k wins where channel k dominates (conftest's tints).

    A fourth class and beyond get small mixed weights, so the top-k probabilities are all distinct.
    """
    linear = torch.nn.Linear(3, num_classes)
    with torch.no_grad():
        linear.weight.copy_(torch.linspace(-0.5, 0.5, 3 * num_classes).reshape(num_classes, 3))
        linear.weight[:3, :3] += 3 * torch.eye(3)
        linear.bias.zero_()
    return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), linear)


def channel_checkpoint(path: Path, classes: tuple[str, ...]) -> Path:
    from training.checkpoint import save_checkpoint

    state = {"model": channel_net(len(classes)).state_dict(), "model_name": CHANNEL_NET, "num_classes": len(classes),
             "epoch": 0, "config": {"size": [32, 32]}, "classes": list(classes)}
    return save_checkpoint(path, state)


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def folder_with_a_corrupt_jpeg(image_folder, tmp_path) -> tuple[Path, Path]:
    import shutil

    root = shutil.copytree(image_folder, tmp_path / "images")
    bad = root / "class0" / "img003.jpg"
    bad.write_bytes(b"\xff\xd8 not a JPEG after all")
    return root, bad


def predict_three_classes(root: Path, tmp_path: Path, *extra: str) -> tuple[int, Path]:
    """training.predict's exit status with CHANNEL_NET on class0..class2 over ``root``, and its output CSV."""
    checkpoint = channel_checkpoint(tmp_path / "model.pt", ("class0", "class1", "class2"))
    out = tmp_path / "predictions.csv"
    status = predict_main(["--checkpoints", str(checkpoint), "--data", str(root), "--out", str(out),
                           "--workers", "0", *extra])
    return status, out


def test_an_imagefolder_with_a_corrupt_jpeg_is_predicted_around_it(folder_with_a_corrupt_jpeg, tmp_path, capsys):
    root, bad = folder_with_a_corrupt_jpeg
    # batch 5: the bad file sits inside a batch, and batches straddle the class folders
    status, out = predict_three_classes(root, tmp_path, "--batch", "5")
    assert status == 0
    rows = read_rows(out)
    expected = [f"class{c}/img{i:03d}.jpg" for c in range(3) for i in range(8)]
    assert [row["path"] for row in rows] == expected  # every input image, in file order
    bad_row = rows[expected.index("class0/img003.jpg")]
    assert bad_row["pred_index"] == bad_row["pred_class"] == bad_row["top1_prob"] == ""
    assert bad_row["true_class"] == "class0"
    others = [row for row in rows if row is not bad_row]
    # Matched by file, not by position: a shift after the bad file would put class1 on class0's last rows.
    assert all(row["pred_class"] == row["true_class"] == row["path"].split("/")[0] for row in others)
    result = json.loads(out.with_suffix(".json").read_text())
    assert [record["path"] for record in result["skipped"]] == [str(bad)] and result["skipped"][0]["reason"]
    assert result["images"] == 24 and result["predicted"] == result["scored_images"] == 23
    assert result["accuracy"] == result["macro_f1"] == 1.0
    assert result["confusion"] == [[7, 0, 0], [0, 8, 0], [0, 0, 8]]
    assert result["per_class"]["class0"]["support"] == 7
    assert (tmp_path / "predictions-confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    console = capsys.readouterr().out
    assert f"skipped: {bad}:" in console and "23 of 24 images predicted" in console
    assert "macro-F1 1.0000, accuracy 1.0000" in console


def test_on_bad_fail_stops_with_one_line_naming_the_file(folder_with_a_corrupt_jpeg, tmp_path, capsys):
    root, bad = folder_with_a_corrupt_jpeg
    status, out = predict_three_classes(root, tmp_path, "--on-bad", "fail")
    assert status == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("training.predict: error: ") and str(bad) in error and "\n" not in error
    assert not out.exists()


def test_a_labelled_csv_maps_class_names_to_the_model_s_classes(image_folder, tmp_path, capsys):
    import shutil

    (tmp_path / "photos").mkdir()
    colour = {"class0": "red", "class1": "green", "class2": "blue"}
    lines = ["path,label"]
    for image in sorted(image_folder.glob("class*/img00[01].jpg")):
        name = f"{image.parent.name}-{image.name}"
        shutil.copy(image, tmp_path / "photos" / name)
        lines.append(f"photos/{name},{colour[image.parent.name]}")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    # The manifest's sorted names (blue, green, red) are not the model's order: names must be matched.
    checkpoint = channel_checkpoint(tmp_path / "model.pt", ("red", "green", "blue"))
    out = tmp_path / "predictions.csv"
    assert predict_main(["--checkpoints", str(checkpoint), "--data", str(manifest), "--out", str(out),
                         "--workers", "0"]) == 0
    rows = read_rows(out)
    assert [(row["path"], row["true_class"]) for row in rows] == [tuple(line.split(",")) for line in lines[1:]]
    assert all(row["pred_class"] == row["true_class"] for row in rows)
    assert [row["true_index"] for row in rows] == ["0", "0", "1", "1", "2", "2"]
    assert json.loads(out.with_suffix(".json").read_text())["accuracy"] == 1.0

    manifest.write_text("\n".join(lines + ["photos/class0-img000.jpg,purple"]) + "\n")
    assert predict_main(["--checkpoints", str(checkpoint), "--data", str(manifest), "--out", str(out)]) == 2
    assert "class 'purple' is not one the model knows" in capsys.readouterr().err


def test_top_k_columns_are_the_model_s_softmax_in_descending_order(image_folder, tmp_path):
    from feeding import FeedConfig, create_feeder, discover, eval_spec
    from feeding.device import DeviceFeeder

    classes = ("class0", "class1", "class2", "other", "rest")
    checkpoint = channel_checkpoint(tmp_path / "model.pt", classes)
    out = tmp_path / "predictions.csv"
    assert predict_main(["--checkpoints", str(checkpoint), "--data", str(image_folder), "--out", str(out),
                         "--workers", "0", "--pipeline", "pil", "--top-k", "3"]) == 0
    rows = read_rows(out)
    samples = discover(image_folder)
    feed = FeedConfig(pipeline="pil", batch_size=len(samples), workers=0, spec=eval_spec((32, 32)), shuffle=False,
                      drop_last=False)
    with create_feeder(samples, feed) as feeder, torch.no_grad():
        images, _ = next(iter(DeviceFeeder(feeder)))
        softmax = channel_net(len(classes))(images).softmax(dim=1)
    assert len(rows) == len(softmax) and "top4_class" not in rows[0]
    for row, probs in zip(rows, softmax.tolist()):
        ranked = sorted(range(len(classes)), key=lambda c: -probs[c])[:3]
        assert [row[f"top{k}_class"] for k in (1, 2, 3)] == [classes[c] for c in ranked]
        top = [float(row[f"top{k}_prob"]) for k in (1, 2, 3)]
        assert top == pytest.approx([probs[c] for c in ranked], abs=1e-6)
        assert top == sorted(top, reverse=True) and sum(top) < 1  # five classes: the top three leave some
        assert row["pred_class"] == row["top1_class"] and classes[int(row["pred_index"])] == row["pred_class"]


def test_the_eval_layout_keeps_the_competition_format_with_an_empty_answer_for_a_bad_image(
        kfold_run, data_with_eval, tmp_path):
    import shutil

    eval_dir = shutil.copytree(data_with_eval / "eval", tmp_path / "eval")
    ids = [row["ImageID"] for row in read_rows(eval_dir / "info.csv")]
    (eval_dir / "images" / ids[2]).write_bytes(b"truncated")
    out = tmp_path / "submission.csv"
    assert predict_main(["--checkpoints", str(kfold_run / "fold0"), "--data", str(eval_dir), "--out", str(out),
                         "--workers", "0", "--batch", "4"]) == 0
    assert out.read_text().splitlines()[0] == "ImageID,ans"  # the submission's header, nothing more
    rows = read_rows(out)
    assert [row["ImageID"] for row in rows] == ids
    assert rows[2]["ans"] == "" and all(0 <= int(row["ans"]) < 18 for i, row in enumerate(rows) if i != 2)
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["format"] == "competition" and result["scored_images"] == len(ids) - 1
    assert [record["path"] for record in result["skipped"]] == [str(eval_dir / "images" / ids[2])]
    assert len(result["confusion"]) == 18 and sum(map(sum, result["confusion"])) == len(ids) - 1


def test_help_explains_every_option_in_plain_text():
    from training.predict import get_args_parser

    parser = get_args_parser()
    assert all(action.help for action in parser._actions)
    text = parser.format_help()
    assert "``" not in text and "--on-bad" in text and "--top-k" in text and "(default: None)" not in text
