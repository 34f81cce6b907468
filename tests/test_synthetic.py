"""Tests of the synthetic NTU skeleton datasets (lib/data/synthetic.py)."""
import collections
import io
import pickle
import re

import numpy as np
import pytest

from lib.data import synthetic

FRAME_DIR = re.compile(r"S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})")
ANNOTATION_KEYS = {"frame_dir", "label", "img_shape", "original_shape", "total_frames", "keypoint",
                   "keypoint_score"}
# Two-person actions, 0-based labels: A050-A060 and A106-A120.
INTERACTION_LABELS = set(range(49, 60)) | set(range(105, 120))


@pytest.fixture(scope="module")
def ntu60():
    return synthetic.generate("ntu60", seed=1, num_samples=300)


@pytest.fixture(scope="module")
def ntu120():
    return synthetic.generate("ntu120", seed=2, num_samples=720)


@pytest.fixture(scope="module")
def demo():
    return synthetic.generate("demo", seed=0)


def ids_of(frame_dir):
    setup, camera, performer, replication, action = map(int, FRAME_DIR.fullmatch(frame_dir).groups())
    return setup, camera, performer, replication, action


def expected_train(frame_dir, protocol, dataset):
    """The official split rules, written out independently of the module."""
    setup, camera, performer, _, _ = ids_of(frame_dir)
    if protocol == "xsub":
        train = {1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38}
        if dataset == "ntu120":
            train |= {45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84,
                      85, 86, 89, 91, 92, 93, 94, 95, 97, 98, 100, 103}
        return performer in train
    if protocol == "xview":
        return camera in (2, 3)
    assert protocol == "xset"
    return setup % 2 == 0


@pytest.mark.parametrize("name, dataset, num_classes, max_setup, max_performer", [
    ("ntu60", "ntu60", 60, 17, 40), ("ntu120", "ntu120", 120, 32, 106), ("demo", "ntu60", 60, 17, 40)])
def test_format(request, name, dataset, num_classes, max_setup, max_performer):
    data = request.getfixturevalue(name)
    assert isinstance(data, dict) and set(data) == {"split", "annotations"}
    assert isinstance(data["annotations"], list) and data["annotations"]
    frame_dirs = [ann["frame_dir"] for ann in data["annotations"]]
    assert len(set(frame_dirs)) == len(frame_dirs)
    for ann in data["annotations"]:
        assert set(ann) == ANNOTATION_KEYS
        assert type(ann["frame_dir"]) is str and FRAME_DIR.fullmatch(ann["frame_dir"])
        setup, camera, performer, replication, action = ids_of(ann["frame_dir"])
        assert 1 <= setup <= max_setup and 1 <= camera <= 3 and 1 <= performer <= max_performer
        assert 1 <= replication <= 2
        assert type(ann["label"]) is int and ann["label"] == action - 1 and 0 <= ann["label"] < num_classes
        assert ann["img_shape"] == (1080, 1920) and type(ann["img_shape"]) is tuple
        assert ann["original_shape"] == (1080, 1920) and type(ann["original_shape"]) is tuple
        kp, score = ann["keypoint"], ann["keypoint_score"]
        assert isinstance(kp, np.ndarray) and kp.dtype == np.float32 and kp.ndim == 4
        assert kp.shape[0] >= 1 and kp.shape[2:] == (17, 2)
        assert isinstance(score, np.ndarray) and score.dtype == np.float32 and score.shape == kp.shape[:3]
        assert type(ann["total_frames"]) is int and ann["total_frames"] == kp.shape[1]
        assert np.isfinite(kp).all() and (kp >= 0).all()
        assert (kp[..., 0] < 1920).all() and (kp[..., 1] < 1080).all()
        assert (score >= 0).all() and (score <= 1).all()


@pytest.mark.parametrize("name, dataset", [("ntu60", "ntu60"), ("ntu120", "ntu120"), ("demo", "ntu60")])
def test_splits_follow_the_official_rules(request, name, dataset):
    data = request.getfixturevalue(name)
    protocols = ("xsub", "xview") if dataset == "ntu60" else ("xsub", "xset")
    assert set(data["split"]) == {f"{p}_{half}" for p in protocols for half in ("train", "val")}
    everything = sorted(ann["frame_dir"] for ann in data["annotations"])
    for protocol in protocols:
        train, val = data["split"][f"{protocol}_train"], data["split"][f"{protocol}_val"]
        assert train and val
        assert all(expected_train(fd, protocol, dataset) for fd in train)
        assert not any(expected_train(fd, protocol, dataset) for fd in val)
        assert not set(train) & set(val)
        assert sorted(train + val) == everything
        for frame_dir in everything[:50]:
            assert synthetic.split_of(frame_dir, protocol, dataset) == (
                f"{protocol}_train" if expected_train(frame_dir, protocol, dataset) else f"{protocol}_val")


def test_split_functions():
    assert len(synthetic.NTU60_XSUB_TRAIN_PERFORMERS) == 20
    assert len(synthetic.NTU120_XSUB_TRAIN_PERFORMERS) == 53
    assert synthetic.split_of("S001C001P001R001A001", "xsub", "ntu60") == "xsub_train"
    assert synthetic.split_of("S001C001P003R001A001", "xsub", "ntu60") == "xsub_val"
    assert synthetic.split_of("S020C001P045R001A100", "xsub", "ntu120") == "xsub_train"
    assert synthetic.split_of("S020C001P044R001A100", "xsub", "ntu120") == "xsub_val"
    assert synthetic.split_of("S005C001P001R002A010", "xview", "ntu60") == "xview_val"
    assert synthetic.split_of("S005C003P001R002A010", "xview", "ntu60") == "xview_train"
    assert synthetic.split_of("S032C001P001R001A120", "xset", "ntu120") == "xset_train"
    assert synthetic.split_of("S031C001P001R001A120", "xset", "ntu120") == "xset_val"
    assert synthetic.parse_frame_dir("S001C002P003R001A013") == dict(
        setup=1, camera=2, performer=3, replication=1, action=13)
    assert synthetic.make_frame_dir(1, 2, 3, 1, 13) == "S001C002P003R001A013"
    with pytest.raises(ValueError):
        synthetic.split_of("S001C001P001R001A001", "xview", "ntu120")
    with pytest.raises(ValueError):
        synthetic.parse_frame_dir("S1C1P1R1A1")
    assert all(synthetic.is_interaction(label) for label in (49, 59, 105, 119))
    assert not any(synthetic.is_interaction(label) for label in (0, 48, 60, 104))


@pytest.mark.parametrize("preset, num_samples, num_classes",
                         [("ntu60", 56_880, 60), ("ntu120", 114_480, 120)])
def test_full_presets_have_unique_balanced_ids(preset, num_samples, num_classes):
    config = synthetic.PRESETS[preset]
    assert config.num_samples == num_samples
    ids = synthetic.draw_sample_ids(config, num_samples, np.random.default_rng(0))
    assert len(set(ids)) == num_samples
    counts = collections.Counter(action for *_, action in ids)
    assert sorted(counts) == list(range(1, num_classes + 1))
    assert set(counts.values()) == {num_samples // num_classes}


def assert_same(a, b):
    assert a["split"] == b["split"]
    assert len(a["annotations"]) == len(b["annotations"])
    for x, y in zip(a["annotations"], b["annotations"]):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], np.ndarray):
                assert np.array_equal(x[key], y[key])
            else:
                assert x[key] == y[key]


def test_deterministic_for_a_seed(ntu60, tmp_path):
    again = synthetic.generate("ntu60", seed=1, num_samples=300)
    assert_same(ntu60, again)
    synthetic.write_pickle(ntu60, tmp_path / "a.pkl")
    synthetic.write_pickle(again, tmp_path / "b.pkl")
    assert (tmp_path / "a.pkl").read_bytes() == (tmp_path / "b.pkl").read_bytes()


def test_seed_changes_the_samples(ntu60):
    other = synthetic.generate("ntu60", seed=2, num_samples=300)
    first = {ann["frame_dir"]: ann for ann in ntu60["annotations"]}
    second = {ann["frame_dir"]: ann for ann in other["annotations"]}
    assert set(first) != set(second)
    for name in set(first) & set(second):  # the same id still gets other motion and noise
        assert not np.array_equal(first[name]["keypoint"], second[name]["keypoint"])


def test_lengths(ntu60, ntu120, demo):
    for data, low, high in ((ntu60, 30, 300), (ntu120, 30, 300), (demo, 30, 100)):
        lengths = np.array([ann["total_frames"] for ann in data["annotations"]])
        assert lengths.min() >= low and lengths.max() <= high
        assert lengths.std() > 10  # lengths vary
    assert np.mean([ann["total_frames"] for ann in ntu120["annotations"]]) > 60


def people_per_sample(data):
    return [(ann["label"], ann["keypoint"].shape[0]) for ann in data["annotations"]]


def test_interactions_have_two_people(ntu120):
    pairs = [m >= 2 for label, m in people_per_sample(ntu120) if label in INTERACTION_LABELS]
    singles = [m == 1 for label, m in people_per_sample(ntu120) if label not in INTERACTION_LABELS]
    assert len(pairs) > 100 and np.mean(pairs) > 0.85
    assert np.mean(singles) > 0.85


def test_detector_artifacts(ntu120):
    people = people_per_sample(ntu120)
    assert any(m == 1 for label, m in people if label in INTERACTION_LABELS)  # the partner was not detected
    assert any(m > 2 for _, m in people)  # a spurious extra detection
    missing = 0
    for ann in ntu120["annotations"]:
        lost = (ann["keypoint_score"] == 0).all(axis=-1)  # [M, T] a person missing in a frame
        assert (ann["keypoint"][lost] == 0).all()
        missing += lost.any()
    assert missing >= 10
    scores = np.concatenate([ann["keypoint_score"][:2].ravel() for ann in ntu120["annotations"]])
    seen = scores[scores > 0]
    assert 0.7 < np.median(seen) < 0.92
    assert (seen < 0.4).mean() > 0.001  # occluded joints


def test_demo_preset(demo):
    labels = collections.Counter(ann["label"] for ann in demo["annotations"])
    assert sorted(labels) == sorted(action - 1 for action in synthetic.DEMO_ACTIONS)
    assert 8 <= len(labels) <= 12 and len(set(labels) & INTERACTION_LABELS) == 2
    assert all(80 <= n <= 100 for n in labels.values())
    label_of = {ann["frame_dir"]: ann["label"] for ann in demo["annotations"]}
    for split in ("xsub_train", "xsub_val"):
        assert {label_of[fd] for fd in demo["split"][split]} == set(labels)


def clip_features(ann):
    """Per-joint mean, spread and drift of the first two people, in body-size units around the hips."""
    features = np.zeros((2, 3, 17, 2))
    kp, score = ann["keypoint"], ann["keypoint_score"]
    for m in range(min(2, len(kp))):
        x = kp[m, score[m].sum(axis=-1) > 0]  # [T', 17, 2] frames where the person was found
        if len(x) < 3:
            continue
        x = x - x[:, 11:13].mean(axis=(0, 1))
        x = x / (np.linalg.norm(x[:, 5:7].mean(axis=1) - x[:, 11:13].mean(axis=1), axis=-1).mean() + 1e-6)
        third = len(x) // 3
        features[m] = x.mean(axis=0), x.std(axis=0), x[-third:].mean(axis=0) - x[:third].mean(axis=0)
    return features.ravel()


def test_demo_classes_are_learnable(demo):
    annotations = {ann["frame_dir"]: ann for ann in demo["annotations"]}

    def features(split):
        anns = [annotations[fd] for fd in demo["split"][split]]
        return np.stack([clip_features(a) for a in anns]), np.array([a["label"] for a in anns])

    x_train, y_train = features("xsub_train")
    x_val, y_val = features("xsub_val")
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    classes = np.unique(y_train)
    centroids = np.stack([x_train[y_train == c].mean(axis=0) for c in classes])
    predicted = classes[((x_val[:, None] - centroids[None]) ** 2).sum(axis=-1).argmin(axis=1)]
    accuracy = (predicted == y_val).mean()
    assert accuracy > 0.7, accuracy  # chance is 0.1


class RecordingUnpickler(pickle.Unpickler):
    def __init__(self, file):
        super().__init__(file)
        self.globals = set()

    def find_class(self, module, name):
        self.globals.add((module, name))
        return super().find_class(module, name)


def assert_plain(obj):
    if isinstance(obj, dict):
        assert type(obj) is dict
        for key, value in obj.items():
            assert type(key) is str
            assert_plain(value)
    elif isinstance(obj, (list, tuple)):
        assert type(obj) in (list, tuple)
        for item in obj:
            assert_plain(item)
    elif isinstance(obj, np.ndarray):
        assert type(obj) is np.ndarray and obj.dtype == np.float32
    else:
        assert type(obj) in (str, int), type(obj)


def test_pickle_holds_only_plain_data(ntu120, tmp_path):
    path = tmp_path / "ntu120.pkl"
    synthetic.write_pickle(ntu120, path)
    assert [p.name for p in tmp_path.iterdir()] == ["ntu120.pkl"]  # no temporary file left
    with open(path, "rb") as f:
        loaded = pickle.load(f)
    assert_same(loaded, ntu120)
    assert_plain(loaded)
    unpickler = RecordingUnpickler(io.BytesIO(path.read_bytes()))
    unpickler.load()
    assert all(module.split(".")[0] in ("numpy", "_codecs") for module, _ in unpickler.globals)


def test_cli(tmp_path, capsys):
    out = tmp_path / "new" / "demo.pkl"
    synthetic.main(["--preset", "demo", "--out", str(out), "--seed", "3", "--num-samples", "40"])
    with open(out, "rb") as f:
        data = pickle.load(f)
    assert len(data["annotations"]) == 40
    assert "40 samples" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["--preset", "ntu30", "--out", "x.pkl"],
    ["--preset", "demo"],
    ["--preset", "demo", "--out", "x.pkl", "--num-samples", "0"],
    ["--preset", "demo", "--out", "x.pkl", "--seed", "-1"],
    ["--preset", "demo", "--out", "x.pkl", "--seed", "one"],
    ["--preset", "demo", "--out", "."],
    ["--preset", "demo", "--out", "x.pkl", "--num-samples", "10000000"],
])
def test_cli_rejects_bad_arguments(argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        synthetic.main(argv)
    assert exit_info.value.code == 2
    assert not (tmp_path / "x.pkl").exists()


def test_generate_rejects_bad_arguments():
    with pytest.raises(ValueError):
        synthetic.generate("ntu30")
    with pytest.raises(ValueError):
        synthetic.generate("demo", num_samples=0)
