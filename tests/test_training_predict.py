"""K-fold training, then predict with TTA and both votes on the sample's eval split."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.fit import main as fit_main
from training.predict import main as predict_main
from training.predict import tta_views, vote

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
    assert 0 <= result["macro_f1"] <= 1 and 0 <= result["accuracy"] <= 1
    assert "against the answers: macro-F1" in capsys.readouterr().out


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
    assert [row["ImageID"] for row in rows] == sorted(p.name for p in folder.iterdir())
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
