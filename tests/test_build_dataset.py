"""Tests of lib/data/build_dataset.py: a folder of keypoint files plus a labels CSV become a PYSKL pickle, a
class-name file and a config (that train_action.py trains on it is tested end to end in tests/test_video.py).

The keypoint files hold 20 synthetic demo samples (10 actions, 2 each): one as COCO-results JSON, one as
.npy [M, T, 17, 3], the others as .npz written by write_npz. The builder runs in this process (`main`, or
`run_main` for the exit status).
"""
import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from lib.cli import run_main
from lib.config import load_yaml_config
from lib.data import synthetic
from lib.data.build_dataset import main
from lib.data.keypoint_files import Keypoints, write_npz
from lib.data.labels import class_names
from lib.data.pyskl import load_store, read_pickle
from lib.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
JSON_SAMPLE, NPY_SAMPLE = 0, 1  # the samples written as .json and .npy; the others are .npz


@pytest.fixture(scope="module")
def samples() -> list[dict]:
    """name, class (an action name), subject (the performer) and annotation of each synthetic sample."""
    data = synthetic.generate("demo", seed=0, num_samples=20)
    return [{"name": f"clip{i:02d}", "class": synthetic.DEMO_ACTIONS[ann["label"] + 1][0],
             "subject": f"P{synthetic.parse_frame_dir(ann['frame_dir'])['performer']:03d}", "ann": ann}
            for i, ann in enumerate(data["annotations"])]


class Folder:
    """The keypoint files in tmp_path/keypoints, the CSV tmp_path/labels.csv, the output tmp_path/out/."""

    def __init__(self, tmp_path: Path, samples: list[dict]):
        self.samples, self.keypoints, self.csv = samples, tmp_path / "keypoints", tmp_path / "labels.csv"
        self.out = tmp_path / "out" / "mydata.pkl"
        self.keypoints.mkdir()
        for i, sample in enumerate(samples):
            kp, score = sample["ann"]["keypoint"], sample["ann"]["keypoint_score"]  # [M, T, 17, 2], [M, T, 17]
            path = self.keypoints / sample["name"]
            if i == JSON_SAMPLE:  # COCO results: frames of persons, 'keypoints' x, y, score per joint
                xys = np.concatenate([kp, score[..., None]], axis=-1).reshape(*kp.shape[:2], 51)
                frames = [[{"keypoints": xys[m, t].tolist()} for m in range(len(kp))] for t in range(kp.shape[1])]
                path.with_suffix(".json").write_text(json.dumps(frames))
            elif i == NPY_SAMPLE:
                np.save(path.with_suffix(".npy"), np.concatenate([kp, score[..., None]], axis=-1))
            else:
                write_npz(path.with_suffix(".npz"), Keypoints(kp, score, (1080, 1920)), sample["name"])

    def rows(self, column=None) -> list[list[str]]:
        """name,label[,column] rows in sample order (line i + 2 of the CSV); one name with its extension."""
        rows = [[s["name"], s["class"]] + ([s[column]] if column else []) for s in self.samples]
        rows[3][0] += ".npz"
        return rows

    def write_csv(self, rows, header=("name", "label")):
        with open(self.csv, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)

    def build(self, *extra, out=None) -> Path:
        out = out or self.out
        main(["--keypoints", self.keypoints, "--labels", self.csv, "--out", out, *extra])
        return out


@pytest.fixture
def folder(tmp_path, samples) -> Folder:
    return Folder(tmp_path, samples)


def splits_of(path: Path) -> dict:
    return read_pickle(path)["split"]


def read_config(pickle_path: Path) -> dict:
    return yaml.safe_load(pickle_path.with_suffix(".yaml").read_text())


# ---------------------------------------------------------------------------------------------------------
# Round trip and the three split modes


def test_round_trip_with_a_stratified_split(folder, samples, capsys):
    folder.write_csv(folder.rows())
    out = folder.build()
    captured = capsys.readouterr().out
    classes_path, config_path = out.with_name("mydata_classes.txt"), out.with_suffix(".yaml")

    store = load_store(out)
    classes = classes_path.read_text().splitlines()
    assert classes == sorted({s["class"] for s in samples})
    assert len(store) == len(samples)
    for i, sample in enumerate(samples):
        kp, score = store.raw_sample(i)
        np.testing.assert_array_equal(kp, sample["ann"]["keypoint"])
        np.testing.assert_array_equal(score, sample["ann"]["keypoint_score"])
        assert kp.dtype == np.float32 and score.dtype == np.float32
        assert store.frame_dir[i] == sample["name"]
        assert classes[store.label[i]] == sample["class"]
        assert tuple(store.img_hw[i]) == (1080, 1920)
    ann = read_pickle(out)["annotations"][2]
    assert ann["original_shape"] == ann["img_shape"] and ann["total_frames"] == ann["keypoint"].shape[1]

    # every class in both splits: one of its two samples validates
    assert set(store.splits) == {"custom_train", "custom_val"}
    for split in store.splits.values():
        assert sorted(store.label[split]) == list(range(len(classes)))

    text = config_path.read_text()
    assert text.startswith("# made by: python -m lib.data.build_dataset --keypoints ")
    config = yaml.safe_load(text)
    assert config["epochs"] == 300  # the default base config's, kept
    assert {k: config[k] for k in ("dataset", "data_root", "action_classes", "label_map", "data_split")} == {
        "dataset": "mydata", "data_root": str(out.parent), "action_classes": 10, "label_map": str(classes_path),
        "data_split": "custom"}
    cfg = load_yaml_config(config_path)
    assert cfg.data.pickle_path == out and class_names(cfg.data.action_classes, cfg.data.label_map) == classes

    assert "20 samples, 10 classes; custom_train 10, custom_val 10" in captured
    assert all(str(path) in captured for path in (out, classes_path, config_path))
    assert f"python train_action.py --config {config_path} --checkpoint checkpoint/action/mydata" in captured


def test_stratified_split_follows_the_seed(folder):
    folder.write_csv(folder.rows())
    seed0 = splits_of(folder.build())
    assert splits_of(folder.build(out=folder.out.with_name("again.pkl"))) == seed0
    assert splits_of(folder.build("--seed", "1", out=folder.out.with_name("seed1.pkl"))) != seed0


def test_subject_column_holds_out_whole_subjects(folder, samples):
    folder.write_csv(folder.rows("subject"), header=("name", "label", "subject"))
    out = folder.build("--val-fraction", "0.3")
    splits = splits_of(out)
    subject = {s["name"]: s["subject"] for s in samples}
    train = {subject[name] for name in splits["xsub_train"]}
    val = {subject[name] for name in splits["xsub_val"]}
    assert train and val and not train & val
    assert sorted(splits["xsub_train"] + splits["xsub_val"]) == sorted(subject)
    assert len(splits["xsub_val"]) >= 0.3 * len(samples)  # subjects are added until the share is reached
    assert read_config(out)["data_split"] == "xsub"
    load_yaml_config(out.with_suffix(".yaml"))


def test_split_column_is_taken_as_given_with_paths_relative_to_the_working_folder(folder, samples, monkeypatch):
    rows = folder.rows()
    halves = ["val" if i % 3 == 0 else "train" for i in range(len(rows))]
    folder.write_csv([row + [half] for row, half in zip(rows, halves)], header=("name", "label", "split"))
    monkeypatch.chdir(folder.out.parent.parent)
    out = folder.build(out=Path("data/mydata.pkl"))
    names = [s["name"] for s in samples]
    assert splits_of(out) == {
        "custom_train": [n for n, half in zip(names, halves) if half == "train"],
        "custom_val": [n for n, half in zip(names, halves) if half == "val"]}
    config = read_config(out)
    assert (config["data_root"], config["label_map"], config["data_split"]) == (
        "data", "data/mydata_classes.txt", "custom")


def test_integer_labels_and_class_names_file(folder, samples, tmp_path):
    classes = sorted({s["class"] for s in samples})
    rows = [[name, str(classes.index(label))] for name, label in folder.rows()]
    folder.write_csv(rows)
    out = folder.build()
    assert out.with_name("mydata_classes.txt").read_text() == "".join(f"class {k}\n" for k in range(10))
    assert [ann["label"] for ann in read_pickle(out)["annotations"]] == [int(label) for _, label in rows]

    names = tmp_path / "names.txt"
    names.write_text("\n".join(classes + ["unused class"]) + "\n")
    out = folder.build("--class-names", names, out=folder.out.with_name("named.pkl"))
    assert out.with_name("named_classes.txt").read_text().splitlines() == classes + ["unused class"]
    assert read_config(out)["action_classes"] == 11

    rows[1][1] = "11"
    folder.write_csv(rows)
    with pytest.raises(UserError, match=r"labels\.csv:3: class id 11, but .*names\.txt names only 11 classes"):
        folder.build("--class-names", names, out=folder.out.with_name("bad.pkl"))
    assert not folder.out.with_name("bad.pkl").exists()


def test_image_size_option_applies_to_files_without_one(folder):
    folder.write_csv(folder.rows())
    store = load_store(folder.build("--img-shape", "720", "1280"))
    assert tuple(store.img_hw[JSON_SAMPLE]) == tuple(store.img_hw[NPY_SAMPLE]) == (720, 1280)
    assert tuple(store.img_hw[2]) == (1080, 1920)  # an .npz says its size


# ---------------------------------------------------------------------------------------------------------
# Errors: one line naming the row, and nothing written


def other_row_of_the_class(rows, i):
    return next(j for j, row in enumerate(rows) if j != i and row[1] == rows[i][1])


def error_case(case: str, folder: Folder):
    """(header, rows, extra arguments, expected message) of an error case; may rewrite keypoint files."""
    header, rows, extra = ("name", "label"), folder.rows(), []
    if case == "no csv":
        return None, None, extra, r"labels CSV not found: .*labels\.csv"
    if case == "missing column":
        header = ("name", "class")
        return header, rows, extra, r"labels\.csv:1: no column label in the header 'name,class'"
    if case == "split and subject":
        header = ("name", "label", "split", "subject")
        rows = [row + ["train", "P001"] for row in rows]
        return header, rows, extra, r"labels\.csv:1: both split and subject columns"
    if case == "unknown file":
        rows[1][0] = "absent"
        tried = r"\(tried absent\.npz, absent\.npy, absent\.json\)"
        return header, rows, extra, rf"labels\.csv:3: no keypoint file for absent .*{tried}"
    if case == "listed twice":
        rows[1][0] = rows[0][0] + ".json"
        return header, rows, extra, r"labels\.csv:3: clip00 is listed twice \(also .*labels\.csv:2\)"
    if case == "empty label":
        rows[1][1] = "  "
        return header, rows, extra, r"labels\.csv:3: empty label for clip01"
    if case == "extra field":
        rows[1].append("x")
        return header, rows, extra, r"labels\.csv:3: 3 fields, but the header has 2"
    if case == "ids and names":
        rows[1][1] = "4"
        return header, rows, extra, r"labels\.csv:3: label '4' is an integer class id, but .*:2 has a class name"
    if case == "no frames":
        empty = Keypoints(np.zeros((1, 0, 17, 2)), np.zeros((1, 0, 17)), (1080, 1920))
        write_npz(folder.keypoints / "clip02.npz", empty, "clip02")
        return header, rows, extra, r"clip02\.npz: no frames or no persons"
    if case == "empty npz":  # what a pose extraction that crashed at once leaves behind
        (folder.keypoints / "clip02.npz").write_bytes(b"")
        return header, rows, extra, r"cannot read .*clip02\.npz: the file is empty"
    if case == "truncated npz":
        path = folder.keypoints / "clip02.npz"
        path.write_bytes(path.read_bytes()[:200])
        return header, rows, extra, r"cannot read .*clip02\.npz: it is damaged, probably truncated"
    if case == "no person":
        (folder.keypoints / "clip00.json").write_text(json.dumps([[], [], []]))
        return header, rows, extra, r"clip00\.json: no person detected .*labels\.csv:2"
    if case == "class with one sample":
        del rows[other_row_of_the_class(rows, 1)]
        line = 3 if other_row_of_the_class(folder.rows(), 1) > 1 else 2
        return header, rows, extra, rf"labels\.csv:{line}: class '{re.escape(rows[line - 2][1])}' has only this sample"
    if case == "bad split value":
        header = ("name", "label", "split")
        rows = [row + ["train" if i % 2 else "val"] for i, row in enumerate(rows)]
        rows[1][2] = "test"
        return header, rows, extra, r"labels\.csv:3: split 'test' for clip01; it must be train or val"
    if case == "empty val split":
        header = ("name", "label", "split")
        return header, [row + ["train"] for row in rows], extra, r"labels\.csv: no row has split val"
    if case == "one subject":
        header = ("name", "label", "subject")
        return header, [row + ["P001"] for row in rows], extra, r"labels\.csv: every row has the subject 'P001'"
    if case == "out not pkl":
        return header, rows, ["--out", folder.out.with_suffix(".pickle")], r"must end in \.pkl"
    if case in ("val fraction 0", "val fraction 1.5"):
        return header, rows, ["--val-fraction", case.split()[-1]], r"--val-fraction must be between 0 and 1"
    raise AssertionError(case)


ERROR_CASES = ["no csv", "missing column", "split and subject", "unknown file", "listed twice", "empty label",
               "extra field", "ids and names", "no frames", "empty npz", "truncated npz", "no person", "class with one sample", "bad split value",
               "empty val split", "one subject", "out not pkl", "val fraction 0", "val fraction 1.5"]


@pytest.mark.parametrize("case", ERROR_CASES)
def test_errors_name_the_row_and_write_nothing(folder, case):
    header, rows, extra, message = error_case(case, folder)
    if header is not None:
        folder.write_csv(rows, header)
    with pytest.raises(UserError, match=message):
        main(["--keypoints", folder.keypoints, "--labels", folder.csv, "--out", folder.out, *extra])
    assert not folder.out.parent.exists()


def test_an_error_is_one_line_on_stderr_and_exit_status_2(folder, capsys):
    rows = folder.rows()
    rows[1][1] = ""
    folder.write_csv(rows)
    argv = ["--keypoints", folder.keypoints, "--labels", folder.csv, "--out", folder.out]
    assert run_main(main, argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "labels.csv:3: empty label" in lines[0]
    assert not folder.out.parent.exists()
