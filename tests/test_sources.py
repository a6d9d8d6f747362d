import csv

import numpy as np
import pytest
from PIL import Image

from feeding.errors import FeedError
from feeding.sources import decode_label, discover, mask_label, person_folds, person_split


def _write_competition(root, people):
    images = root / "train" / "images"
    rows = []
    for pid, gender, age in people:
        folder = f"{pid}_{gender}_Asian_{age}"
        (images / folder).mkdir(parents=True)
        for stem in ("mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal"):
            Image.new("RGB", (8, 8), (1, 2, 3)).save(images / folder / f"{stem}.jpg")
        rows.append({"id": pid, "gender": gender, "race": "Asian", "age": age, "path": folder})
    with open(root / "train" / "train.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "gender", "race", "age", "path"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_mask_label_encoding_matches_the_competition():
    assert mask_label(0, 0, 25) == 0
    assert mask_label(0, 1, 45) == 4
    assert mask_label(1, 0, 60) == 8
    assert mask_label(2, 1, 70) == 17
    assert decode_label(17) == ("not_wear", "female", ">=60")


def test_competition_layout_labels_and_person_groups(tmp_path):
    root = _write_competition(tmp_path, [("000001", "female", 29), ("000002", "male", 60)])
    for given in (root, root / "train"):  # accept ROOT or ROOT/train
        samples = discover(given)
        assert samples.layout == "competition"
        assert len(samples) == 14
        assert samples.paths.dtype.kind == "U" and samples.labels.dtype == np.int64
        by_name = {p.split("/")[-2] + "/" + p.split("/")[-1]: int(l) for p, l in zip(samples.paths, samples.labels)}
        assert by_name["000001_female_Asian_29/mask3.jpg"] == 3  # wear, female, <30
        assert by_name["000001_female_Asian_29/incorrect_mask.jpg"] == 9
        assert by_name["000002_male_Asian_60/normal.jpg"] == 14  # not wear, male, >=60
        assert len(np.unique(samples.groups)) == 2


def test_competition_layout_ignores_non_images_and_reports_unknown_names(tmp_path):
    root = _write_competition(tmp_path, [("000001", "male", 31)])
    person = root / "train" / "images" / "000001_male_Asian_31"
    (person / "notes.txt").write_text("not an image")
    (person / "._mask1.jpg").write_bytes(b"macOS resource fork")
    Image.new("RGB", (8, 8)).save(person / "selfie.jpg")
    samples = discover(root)
    assert len(samples) == 7
    assert [p.reason for p in samples.problems] == [
        "file name 'selfie' is not one of ['incorrect_mask', 'mask1', 'mask2', 'mask3', 'mask4', 'mask5', 'normal']"
    ]


def test_competition_csv_errors_name_the_row(tmp_path):
    root = _write_competition(tmp_path, [("000001", "male", 31)])
    csv_path = root / "train" / "train.csv"
    csv_path.write_text(csv_path.read_text().replace("male", "robot"))
    with pytest.raises(FeedError, match=r"train.csv:2: gender"):
        discover(root)


def test_image_folder_and_manifest(tmp_path, image_folder):
    samples = discover(image_folder)
    assert samples.layout == "imagefolder" and samples.classes == ("class0", "class1", "class2")
    assert np.bincount(samples.labels).tolist() == [8, 8, 8]
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,label\n" + "".join(
        f"{p},{samples.classes[l]}\n" for p, l in zip(samples.paths, samples.labels)))
    from_csv = discover(manifest)
    assert from_csv.layout == "csv" and from_csv.classes == samples.classes
    assert from_csv.labels.tolist() == samples.labels.tolist()


def test_empty_or_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(FeedError, match="does not exist"):
        discover(tmp_path / "nope")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(FeedError, match="no images found"):
        discover(tmp_path)


def test_person_split_never_puts_one_person_on_both_sides(tmp_path):
    people = [(f"{i:06d}", "male" if i % 2 else "female", 20 + 7 * i) for i in range(10)]
    samples = discover(_write_competition(tmp_path, people))
    train, val = person_split(samples, val_fraction=0.2, seed=1)
    assert len(train) + len(val) == len(samples)
    assert not set(train.groups.tolist()) & set(val.groups.tolist())
    folds = person_folds(samples, 5, seed=0)
    seen = np.concatenate([v for _, v in folds])
    assert sorted(seen.tolist()) == list(range(len(samples)))
    with pytest.raises(FeedError, match="folds"):
        person_folds(samples, 11)


def _manifest(tmp_path, image_folder, labels: list[str]):
    paths = sorted(str(p) for p in image_folder.rglob("*.jpg"))[: len(labels)]
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in zip(paths, labels)))
    return manifest, paths


def test_one_typo_in_integer_labels_is_an_error_naming_its_row(tmp_path, image_folder):
    labels = [str(i % 12) for i in range(24)]
    labels[5] = "kitty"
    manifest, _ = _manifest(tmp_path, image_folder, labels)
    with pytest.raises(FeedError, match=r"list.csv:7: label 'kitty' is not an integer"):
        discover(manifest)


def test_under_skip_a_typo_row_is_left_out_and_the_other_labels_keep_their_meaning(tmp_path, image_folder):
    labels = [str(i % 12) for i in range(24)]
    labels[5] = "kitty"
    manifest, paths = _manifest(tmp_path, image_folder, labels)
    samples = discover(manifest, on_bad="skip")
    assert samples.classes == tuple(str(i) for i in range(12))  # "10" is class 10, not class 2
    expected = {p: int(label) for p, label in zip(paths, labels) if label != "kitty"}
    assert dict(zip(samples.paths.tolist(), samples.labels.tolist())) == expected
    assert [(p.path, p.reason.split(" is ")[0]) for p in samples.problems] == [
        (f"{manifest}:7", "label 'kitty'")]


def test_a_negative_integer_label_names_its_row(tmp_path, image_folder):
    manifest, _ = _manifest(tmp_path, image_folder, ["0", "1", "-1", "2"])
    with pytest.raises(FeedError, match=r"list.csv:4: label -1 is out of range"):
        discover(manifest)


def test_name_labels_stay_names(tmp_path, image_folder):
    manifest, _ = _manifest(tmp_path, image_folder, ["cat", "dog", "cat", "bird"])
    samples = discover(manifest)
    assert samples.classes == ("bird", "cat", "dog") and samples.labels.tolist() == [1, 2, 1, 0]


def test_competition_rows_can_be_skipped_and_reported(tmp_path):
    root = _write_competition(tmp_path, [("000001", "male", 31), ("000002", "female", 40)])
    csv_path = root / "train" / "train.csv"
    csv_path.write_text(csv_path.read_text().replace("000002,female", "000002,robot"))
    samples = discover(root, on_bad="skip")
    assert len(samples) == 7
    assert [(p.path, p.reason) for p in samples.problems] == [
        (f"{csv_path}:3", "gender must be 'male' or 'female', got 'robot'")]
