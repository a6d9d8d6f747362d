"""The synthetic competition data set: layout, labels, file sizes, fine detail, determinism, atomic writes,
learnability."""
from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from feeding import sample
from feeding.errors import FeedError
from feeding.sources import GENDER_NAMES, MASK_STEMS, age_group, discover, read_competition
from tests.imaging import high_frequency_rms, high_frequency_share, shrink_psnr

TRAIN_PEOPLE, EVAL_PEOPLE = 24, 12


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One sample shared by the read-only tests: writing it is most of this file's run time."""
    root = tmp_path_factory.mktemp("sample") / "data"
    return sample.write_sample(root, TRAIN_PEOPLE, seed=0, eval_people=EVAL_PEOPLE)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def digests(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ---------------------------------------------------------------- layout and labels


def test_train_csv_rows_name_their_folders(dataset: Path) -> None:
    rows = read_csv(dataset / "train" / "train.csv")
    assert list(rows[0]) == ["id", "gender", "race", "age", "path"]
    assert len(rows) == TRAIN_PEOPLE
    for row in rows:
        assert re.fullmatch(r"\d{6}", row["id"])
        assert row["path"] == f"{row['id']}_{row['gender']}_{row['race']}_{row['age']}"
        files = sorted(p.name for p in (dataset / "train" / "images" / row["path"]).iterdir())
        assert files == sorted(f"{stem}.jpg" for stem in MASK_STEMS)
    assert {r["gender"] for r in rows} == set(GENDER_NAMES)
    assert {age_group(int(r["age"])) for r in rows} == {0, 1, 2}


def test_competition_reader_decodes_the_labels_written(dataset: Path) -> None:
    samples = discover(dataset)
    assert samples.layout == "competition" and not samples.problems
    assert len(samples) == 7 * TRAIN_PEOPLE
    assert np.bincount(samples.groups).tolist() == [7] * TRAIN_PEOPLE
    people = {r["path"]: r for r in read_csv(dataset / "train" / "train.csv")}
    for path, label in zip(samples.paths.tolist(), samples.labels.tolist()):
        row = people[Path(path).parent.name]
        assert label // 6 == MASK_STEMS[Path(path).stem]  # mask1..5 wear, incorrect_mask, normal
        assert GENDER_NAMES[(label // 3) % 2] == row["gender"]
        assert label % 3 == age_group(int(row["age"]))


def test_images_are_384x512_jpegs_of_60_to_100_kb(dataset: Path) -> None:
    paths = sorted(dataset.rglob("*.jpg"))
    assert len(paths) == 7 * (TRAIN_PEOPLE + EVAL_PEOPLE)
    for path in paths[::10]:
        with Image.open(path) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (384, 512))
    sizes_kb = np.array([p.stat().st_size for p in paths]) / 1024  # measured: 64-96 KB, 74 on average
    assert 60 <= sizes_kb.min() and sizes_kb.max() <= 100, f"JPEG sizes {sizes_kb.min():.1f}-{sizes_kb.max():.1f} KB"
    assert 65 <= sizes_kb.mean() <= 85, f"mean JPEG size {sizes_kb.mean():.1f} KB"


def test_photos_carry_fine_detail_that_a_shrink_without_prefilter_aliases(dataset: Path) -> None:
    """Power above 0.25 cycles/px (shirts, strands, print, plants) and its effect on a 2.29x shrink.

    Measured on these photos: rms 9.5-21 levels, share 0.02-0.19 (median 0.08),
    bilinear shrink median 29 dB against PIL's antialiased one. Version 1, without
    the detail: rms 5-6 (its grain), share median 0.012, 38 dB.
    """
    paths = sorted(dataset.rglob("*.jpg"))[::12]
    photos = [np.asarray(Image.open(path).convert("RGB")) for path in paths]
    rms = [high_frequency_rms(photo) for photo in photos]
    assert min(rms) > 8, f"high-frequency rms {min(rms):.1f} levels"
    assert np.median([high_frequency_share(photo) for photo in photos]) > 0.04
    assert np.median([shrink_psnr(photo)[1] for photo in photos]) < 32


def test_eval_split_hides_answers_that_answers_csv_holds(dataset: Path) -> None:
    info = read_csv(dataset / "eval" / "info.csv")
    answers = read_csv(dataset / "eval" / "answers.csv")
    assert list(info[0]) == list(answers[0]) == ["ImageID", "ans"]
    assert [r["ImageID"] for r in info] == [r["ImageID"] for r in answers]
    assert {r["ans"] for r in info} == {"0"}
    names = {r["ImageID"] for r in info}
    assert names == {p.name for p in (dataset / "eval" / "images").iterdir()}
    assert len(names) == 7 * EVAL_PEOPLE and all(re.fullmatch(r"[0-9a-f]{40}\.jpg", n) for n in names)
    labels = np.array([int(r["ans"]) for r in answers])
    assert labels.min() >= 0 and labels.max() < 18
    assert np.bincount(labels // 6, minlength=3).tolist() == [5 * EVAL_PEOPLE, EVAL_PEOPLE, EVAL_PEOPLE]


def test_eval_people_are_not_train_people(dataset: Path) -> None:
    train = set(digests(dataset / "train" / "images").values())
    assert not train & set(digests(dataset / "eval" / "images").values())


# ---------------------------------------------------------------- learnability


def edge_features(path: Path) -> np.ndarray:
    """Horizontal and vertical edge strength pooled to 12x16.

    Edges, not raw pixels: mask, hair, skin and background colours are random,
    so a linear model on raw pixels needs far more people than a test can afford.
    """
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_REDUCED_COLOR_4).astype(np.float32) / 255  # 96x128
    maps = (np.abs(cv2.Sobel(image, cv2.CV_32F, dx, 1 - dx)).max(axis=2) for dx in (0, 1))
    return np.concatenate([cv2.resize(m, (12, 16), interpolation=cv2.INTER_AREA).ravel() for m in maps])


def test_cues_are_learnable_on_people_never_seen(dataset: Path) -> None:
    """A linear model fitted on the train people beats chance clearly on the eval people, for every cue."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    train = read_competition(dataset)
    answers = read_csv(dataset / "eval" / "answers.csv")
    x_train = np.stack([edge_features(Path(p)) for p in train.paths.tolist()])
    x_eval = np.stack([edge_features(dataset / "eval" / "images" / r["ImageID"]) for r in answers])
    y_eval = np.array([int(r["ans"]) for r in answers])
    # (cue, label -> cue class, minimum balanced accuracy); chance is 1/3, 1/2, 1/3.
    cues = (("mask", lambda y: y // 6, 0.6), ("gender", lambda y: (y // 3) % 2, 0.85), ("age", lambda y: y % 3, 0.55))
    for name, cue, minimum in cues:
        model = LogisticRegression(C=1.0, max_iter=3000, class_weight="balanced").fit(x_train, cue(train.labels))
        score = balanced_accuracy_score(cue(y_eval), model.predict(x_eval))
        assert score >= minimum, f"{name}: balanced accuracy {score:.2f} < {minimum}"


# ---------------------------------------------------------------- determinism and writing


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    first = digests(sample.write_sample(tmp_path / "a", people=2, seed=3, eval_people=1))
    again = digests(sample.write_sample(tmp_path / "b", people=2, seed=3, eval_people=1))
    other = digests(sample.write_sample(tmp_path / "c", people=2, seed=4, eval_people=1))
    assert first == again
    jpegs = [name for name in first if name.startswith("train/images/")]
    assert {first[n] for n in jpegs}.isdisjoint(other.values())


def test_second_call_returns_without_rewriting(tmp_path: Path) -> None:
    out = sample.write_sample(tmp_path / "data", people=1, seed=0, eval_people=1)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert sample.write_sample(out, people=1, seed=0, eval_people=1) == out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_other_parameters_replace_an_earlier_sample(tmp_path: Path) -> None:
    out = sample.write_sample(tmp_path / "data", people=1, seed=0, eval_people=0)
    sample.write_sample(out, people=2, seed=0, eval_people=0)
    assert len(read_csv(out / "train" / "train.csv")) == 2
    assert not (out / "eval").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # no temporary or old copies left


def test_interrupted_write_leaves_no_data_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sample, "write_eval", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sample.write_sample(tmp_path / "data", people=1, seed=0, eval_people=1)
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_replace_a_directory_that_is_not_a_sample(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("mine")
    with pytest.raises(FeedError, match="holds no sample"):
        sample.write_sample(tmp_path / "data", people=1, seed=0, eval_people=0)
    assert (tmp_path / "data" / "notes.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


@pytest.mark.parametrize("people, seed, eval_people", [(0, 0, 1), (1, -1, 1), (1, 0, -1)])
def test_rejects_bad_arguments(tmp_path: Path, people: int, seed: int, eval_people: int) -> None:
    with pytest.raises(ValueError):
        sample.write_sample(tmp_path / "data", people=people, seed=seed, eval_people=eval_people)


def test_default_sample_lives_in_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEEDBENCH_CACHE", str(tmp_path))
    expected = tmp_path / "sample" / f"v{sample.SAMPLE_VERSION}-p6-s1"
    assert sample.default_sample_dir(people=6, seed=1) == expected
    calls = []
    monkeypatch.setattr(sample, "write_sample", lambda out, **kwargs: calls.append((out, kwargs)) or out)
    assert sample.ensure_sample(people=6, seed=1) == expected
    assert calls == [(expected, {"people": 6, "seed": 1})]


def test_module_entry_point_writes_a_sample(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert sample.main([str(tmp_path / "data"), "--people", "1", "--seed", "2", "--eval-people", "0"]) == 0
    assert len(read_competition(tmp_path / "data")) == 7
    assert "sample data set in" in capsys.readouterr().out
