"""The other PYSKL 2D files: FineGYM, UCF101, HMDB51, Diving48 and Kinetics-400 (a table of contents and kpfiles).

Each synthetic preset is written in its file's exact format (lib/data/synthetic_formats.py), read through the
same loader as NTU, and trained and evaluated for an epoch with its config; Kinetics' regrouping of skeletons
into frames and persons is checked against values worked out by hand."""
import json
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lib.data.pyskl as pyskl
from lib.config import DataConfig, load_yaml_config
from lib.data import synthetic_formats
from lib.data.dataset import ActionDataset, file_protocols, open_store
from lib.data.kinetics import regroup
from lib.data.preprocess import make_clip, normalize_to_image
from lib.data.pyskl import PackSettings, load_store
from lib.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
# name: (config, samples written, splits the file has, its evaluation split)
FORMATS = {
    "gym": ("train_gym_small", 198, {"train", "val"}, "val"),
    "ucf101": ("train_ucf101_split1_small", 202, {f"{h}{n}" for h in ("train", "test") for n in (1, 2, 3)}, "test1"),
    "hmdb51": ("train_hmdb51_split1_small", 153, {f"{h}{n}" for h in ("train", "test") for n in (1, 2, 3)}, "test1"),
    "diving48": ("train_diving48_small", 144, {"train", "test"}, "test"),
    "k400": ("train_k400_small", 800, {"train", "val"}, "val"),
}
TINY = ["dim_rep=16", "depth=1", "num_heads=2", "clip_len=8", "maxlen=8", "hidden_dim=32", "num_workers=0",
        "device=cpu", "epochs=1", "batch_size=16"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Every preset written at its published file name, with its packed store built."""
    root = tmp_path_factory.mktemp("pyskl_family")
    for name, (_, samples, _, _) in FORMATS.items():
        synthetic_formats.write(name, root / f"{synthetic_formats.PRESETS[name].stem}.pkl", num_samples=samples)
    for name in FORMATS:
        load_store(root / f"{synthetic_formats.PRESETS[name].stem}.pkl", settings=PackSettings(str(root / "kpfiles")))
    return root


def data_config(data: Path, name: str, **changes) -> DataConfig:
    cfg = load_yaml_config(ROOT / "configs/action" / f"{FORMATS[name][0]}.yaml").data
    cfg.data_root, cfg.clip_len = str(data), 16
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg


# ---------------------------------------------------------------------------------------------------------
# Reading each format


@pytest.mark.parametrize("name", list(FORMATS))
def test_each_file_reads_with_its_own_splits_labels_and_frame_sizes(data, name):
    _, samples, splits, evaluation = FORMATS[name]
    preset = synthetic_formats.PRESETS[name]
    with open(data / f"{preset.stem}.pkl", "rb") as f:
        published = pickle.load(f)
    cfg = data_config(data, name)
    store = open_store(cfg)
    assert set(store.splits) == splits and len(store) == samples
    train, val = ActionDataset(store, cfg, train=True), ActionDataset(store, cfg, train=False)
    assert val.split == evaluation and len(train) + len(val) == samples
    assert set(val.frame_dirs) == set(published["split"][evaluation])
    by_name = {ann["frame_dir"]: ann for ann in published["annotations"]}
    for i in range(len(store)):  # labels and each sample's own frame size, as written
        ann = by_name[store.frame_dir[i]]
        assert store.label[i] == ann["label"] and tuple(store.img_hw[i]) == tuple(ann["img_shape"])
    assert store.label.max() == preset.num_classes - 1
    clip, label = train[0]
    assert clip.shape == (2, 16, 17, 3) and np.isfinite(clip).all() and 0 <= label < preset.num_classes


def test_ntu_layout_files_are_stored_as_written(data):
    """FineGYM, UCF101, HMDB51 and Diving48 keep every person of every sample (selection is per clip)."""
    published = pickle.load(open(data / "hmdb51_hrnet.pkl", "rb"))
    store = load_store(data / "hmdb51_hrnet.pkl")
    position = {name: i for i, name in enumerate(store.frame_dir)}
    for ann in published["annotations"][:40]:
        keypoint, score = store.raw_sample(position[ann["frame_dir"]])
        np.testing.assert_array_equal(keypoint, ann["keypoint"])
        np.testing.assert_array_equal(score, ann["keypoint_score"])
    assert max(len(ann["keypoint"]) for ann in published["annotations"]) > 2  # the detector's extra persons


def test_small_frames_are_normalised_by_their_own_size(data):
    # UCF101 and HMDB51 frames are 240 high and 320-426 wide: their keypoints fill [-1, 1] only when divided by
    # their own frame's size; divided by NTU's 1920 they would all sit left of -0.55.
    store = load_store(data / "hmdb51_hrnet.pkl")
    assert {tuple(hw) for hw in store.img_hw} == set(synthetic_formats.PRESETS["hmdb51"].img_shapes)
    for i in range(len(store)):
        keypoint, score = store.raw_sample(i)
        seen = keypoint[score > 0]
        if len(seen):
            assert (seen <= store.img_hw[i][::-1]).all()
            xy = normalize_to_image(seen, store.img_hw[i])
            assert xy.min() >= -1 and xy.max() <= 1
    all_x = np.concatenate([normalize_to_image(store.raw_sample(i)[0][..., 0], store.img_hw[i]).ravel()
                            for i in range(len(store))])
    assert all_x.max() > 0.2  # skeletons across the frame, not squeezed into its left quarter


def test_a_split_the_file_lacks_is_one_line_listing_the_splits_it_has(data):
    cfg = data_config(data, "ucf101", data_split="xsub")
    with pytest.raises(UserError) as err:
        ActionDataset(open_store(cfg), cfg, train=True)
    message = str(err.value)
    assert "\n" not in message and "xsub_train" in message and "test1, test2, test3, train1" in message
    assert "split1, split2, split3" in message


def test_data_split_names_the_protocol_of_each_file(data):
    assert file_protocols({"xsub_train", "xsub_val", "xview_train", "xview_val"}) == ["xsub", "xview"]
    assert file_protocols({"train1", "test1", "train2", "test2"}) == ["split1", "split2"]
    assert file_protocols({"train", "test"}) == ["official"]
    cfg = data_config(data, "hmdb51", data_split="split3")
    assert ActionDataset(open_store(cfg), cfg, train=False).split == "test3"


def test_a_label_beyond_the_classes_names_the_sample_and_the_class_name_file(data):
    cfg = data_config(data, "diving48", action_classes=40)
    with pytest.raises(UserError) as err:
        ActionDataset(open_store(cfg), cfg, train=True)
    message = str(err.value)
    assert "\n" not in message and "outside the labels 0..39" in message and "diving48_classes.txt" in message


# ---------------------------------------------------------------------------------------------------------
# Kinetics: regrouping, persons, box_thr and bad input


def skeleton(value: float, score: float = 0.9) -> np.ndarray:
    """One [17, 3] skeleton whose coordinates all equal `value`."""
    out = np.full((17, 3), value, np.float32)
    out[:, 2] = score
    return out


def test_regroup_puts_skeletons_into_frames_and_persons_as_worked_out_by_hand():
    # Frames 3, 1, 3, 3, 7: frame 1 has skeleton 1; frame 3 has skeletons 0, 2, 3 (persons 0, 1, 2 in stored
    # order); frame 7 has skeleton 4. Frames without anyone (0, 2, 4-6) are dropped: T = 3, M = 3.
    skeletons = np.stack([skeleton(v) for v in (10, 20, 30, 40, 50)])
    keypoint, score = regroup(np.array([3, 1, 3, 3, 7]), skeletons)
    assert keypoint.shape == (3, 3, 17, 2) and score.shape == (3, 3, 17)
    expected = np.array([[20, 10, 50], [0, 30, 0], [0, 40, 0]])  # [person, frame]
    np.testing.assert_array_equal(keypoint[..., 0, 0], expected)
    np.testing.assert_array_equal(score[..., 0] > 0, expected > 0)
    empty_keypoint, empty_score = regroup(np.zeros(0, np.int64), np.zeros((0, 17, 3), np.float16))
    assert empty_keypoint.shape == (0, 0, 17, 2) and empty_score.shape == (0, 0, 17)


def write_kinetics(root: Path, videos: list, kpfile_content=None, **toc_changes) -> Path:
    """A hand-made table of contents (raw_file: the authors' absolute path) and its kpfile in root/kpfiles.
    videos: [(frame_dir, frame_inds, skeletons [N, 17, 3], box_score)]."""
    (root / "kpfiles").mkdir(parents=True, exist_ok=True)
    content = {name: {"keypoint": np.asarray(sk, np.float16)} for name, _, sk, _ in videos}
    with open(root / "kpfiles" / "part_0.pkl", "wb") as f:
        pickle.dump(content if kpfile_content is None else kpfile_content, f)
    annotations = [{"frame_dir": name, "label": i, "img_shape": (240, 320), "original_shape": (240, 320),
                    "total_frames": 10, "raw_file": "/home/authors/k400/kpfiles/part_0.pkl",
                    "frame_inds": np.asarray(inds, np.int16), "box_score": np.asarray(box, np.float16),
                    "valid": {0.5: 1}} | toc_changes.get(name, {})
                   for i, (name, inds, _, box) in enumerate(videos)]
    path = root / "k400_hrnet.pkl"
    with open(path, "wb") as f:
        pickle.dump({"split": {"train": [v[0] for v in videos], "val": [videos[0][0]]}, "annotations": annotations}, f)
    return path


def three_person_video():
    """Frames 0 and 2 hold persons A (score 0.9), B (0.3) and C (0.6), in the stored orders A B C and C A B; frame
    1 holds B alone. Slot totals: slot 0 (A, B, C) 1.8, slot 1 (B, A) 1.2, slot 2 (C, B) 0.9 per joint."""
    a, b, c = skeleton(100, 0.9), skeleton(200, 0.3), skeleton(300, 0.6)
    return [0, 0, 0, 1, 2, 2, 2], np.stack([a, b, c, b, c, a, b]), [0.95, 0.4, 0.7, 0.4, 0.7, 0.95, 0.4]


def test_kinetics_keeps_the_two_persons_of_highest_total_score_and_empty_videos(tmp_path, caplog):
    inds, skeletons, box = three_person_video()
    path = write_kinetics(tmp_path, [("talking", inds, skeletons, box), ("nobody", [], np.zeros((0, 17, 3)), [])])
    with caplog.at_level(logging.INFO, logger="lib.data.pyskl"):
        store = load_store(path, settings=PackSettings(str(tmp_path / "kpfiles")))
    keypoint, score = store.raw_sample(0)
    assert store.keypoint.dtype == np.float16 and keypoint.shape == (2, 3, 17, 2)  # slot 2 (0.9) dropped
    # Slots 0 (A B C) and 1 (B - A) are then tracked: A moves to one track, B and C (who stand nearer) to the other.
    np.testing.assert_array_equal(keypoint[..., 0, 0], [[100, 0, 100], [200, 200, 300]])
    assert store.tracked and (score[0, 1] == 0).all()
    # The clips equal those of the regrouped, untracked skeletons going through the whole pipeline.
    untracked = regroup(np.array(inds), skeletons.astype(np.float16))
    untracked = tuple(array[:2] for array in untracked)
    for rng in (None, 5):
        np.testing.assert_array_equal(
            make_clip(keypoint, score, (240, 320), 8, rng=rng and np.random.default_rng(rng), tracked=True),
            make_clip(*untracked, (240, 320), 8, rng=rng and np.random.default_rng(rng)))
    assert store.raw_sample(1)[0].shape == (0, 0, 17, 2)
    assert "1 of 2 samples have no skeleton" in caplog.text and "nobody" in caplog.text


def test_kinetics_box_threshold_drops_low_boxes_before_regrouping(tmp_path):
    inds, skeletons, box = three_person_video()
    path = write_kinetics(tmp_path, [("talking", inds, skeletons, box)])
    store = load_store(path, settings=PackSettings(str(tmp_path / "kpfiles"), box_thr=0.5))
    # B's boxes (0.4) go: frame 1 is then empty and dropped; frames 0 and 2 hold A C and C A, which the
    # tracker turns into A A and C C.
    np.testing.assert_array_equal(store.raw_sample(0)[0][..., 0, 0], [[100, 100], [300, 300]])
    assert (tmp_path / ".cache" / "k400_hrnet-box0.5").is_dir()


def test_kinetics_store_follows_changes_of_its_kpfiles(tmp_path):
    inds, skeletons, box = three_person_video()
    path = write_kinetics(tmp_path, [("talking", inds, skeletons, box)])
    settings = PackSettings(str(tmp_path / "kpfiles"))
    assert load_store(path, settings=settings).raw_sample(0)[0][0, 0, 0, 0] == 100
    shifted = {"talking": {"keypoint": (skeletons + np.array([1, 0, 0], np.float32)).astype(np.float16)}}
    with open(tmp_path / "kpfiles" / "part_0.pkl", "wb") as f:
        pickle.dump(shifted, f)
    assert load_store(path, settings=settings).raw_sample(0)[0][0, 0, 0, 0] == 101


def bad_kinetics(tmp_path, case: str):
    inds, skeletons, box = three_person_video()
    videos = [("talking", inds, skeletons, box)]
    if case == "missing kpfile":
        path = write_kinetics(tmp_path, videos, talking={"raw_file": "/home/authors/k400/kpfiles/part_9.pkl"})
        return path, ["kpfile part_9.pkl not found", "talking", "data.kpfiles"]
    if case == "video not in its kpfile":
        return write_kinetics(tmp_path, videos, kpfile_content={"other": {}}), ["has no skeletons of sample talking"]
    if case == "frame_inds of another length":
        return (write_kinetics(tmp_path, videos, talking={"frame_inds": np.array(inds[:-1], np.int16)}),
                ["talking has 7 skeletons but 6 frame_inds"])
    if case == "NaN coordinates":
        broken = skeletons.copy()
        broken[3, 5, 0] = np.nan
        return write_kinetics(tmp_path, [("talking", inds, broken, box)]), ["talking", "NaN or infinite"]
    if case == "zero img_shape":
        return write_kinetics(tmp_path, videos, talking={"img_shape": (0, 320)}), ["talking", "img_shape (0, 320)"]
    raise ValueError(case)


@pytest.mark.parametrize("case", ["missing kpfile", "video not in its kpfile", "frame_inds of another length",
                                  "NaN coordinates", "zero img_shape"])
def test_bad_kinetics_input_is_one_line_and_writes_no_store(tmp_path, case):
    path, fragments = bad_kinetics(tmp_path, case)
    with pytest.raises(UserError) as err:
        load_store(path, settings=PackSettings(str(tmp_path / "kpfiles")))
    message = str(err.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    assert not any((tmp_path / ".cache").glob("k400_hrnet*")), "a half-written store was left behind"


# ---------------------------------------------------------------------------------------------------------
# Every format through the training and evaluation commands


def run_script(script: str, argv: list) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *map(str, argv)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.mark.parametrize("name", list(FORMATS))
def test_one_epoch_of_training_and_evaluation_on_each_format(data, tmp_path, name):
    config = f"configs/action/{FORMATS[name][0]}.yaml"
    sets = [a for s in [f"data_root={data}", *TINY] for a in ("--set", s)]
    result = run_script("train_action.py", ["--config", config, "--checkpoint", tmp_path, *sets])
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    best = "mean_class_accuracy" if name == "gym" else "top1"
    assert f"best_{best}" in record and 0 <= record["val_mean_class_accuracy"] <= 100
    extra = ["--set", "num_clips=10"] if name == "ucf101" else []  # PYSKL's 10-clip test protocol
    result = run_script("evaluate_action.py", ["--config", config, "--evaluate", tmp_path / "best_epoch.bin",
                                               *sets, *extra])
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "best_epoch_eval" / "metrics.json").read_text())
    evaluation = FORMATS[name][3]
    assert metrics["split"] == evaluation and metrics["samples"] == len(open_store(data_config(data, name)).splits[evaluation])


def test_synthetic_cli_writes_kinetics_as_a_table_of_contents_and_kpfiles(tmp_path):
    out = tmp_path / "k400_hrnet.pkl"
    result = subprocess.run([sys.executable, "-m", "lib.data.synthetic", "--preset", "k400", "--out", out,
                             "--num-samples", "400"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "400 samples, 400 classes" in result.stdout
    toc = pickle.load(open(out, "rb"))
    ann = toc["annotations"][0]
    assert "keypoint" not in ann and set(toc["split"]) == {"train", "val"}
    raw = Path(ann["raw_file"])
    assert raw.is_absolute() and not raw.exists() and (tmp_path / "kpfiles" / raw.name).is_file()
    kpfile = pickle.load(open(tmp_path / "kpfiles" / raw.name, "rb"))
    skeletons = kpfile[ann["frame_dir"]]["keypoint"]
    assert skeletons.dtype == np.float16 and skeletons.shape == (len(ann["frame_inds"]), 17, 3)
    assert len(ann["box_score"]) == len(ann["frame_inds"]) and (np.diff(ann["frame_inds"]) >= 0).all()


def test_every_command_on_the_kinetics_table_of_contents(data, tmp_path):
    """Pretrain, finetune from backbone.bin, evaluate two streams and fuse them, export to ONNX, classify a
    pickle sample with ONNX Runtime and draw heatmaps: the commands of the README on Kinetics' format."""
    sets = [a for s in [f"data_root={data}", *TINY] for a in ("--set", s)]

    def ok(script, *argv):
        result = run_script(script, [*argv, *sets])
        assert result.returncode == 0, f"{script}: {result.stderr[-3000:]}"
        return result

    ok("pretrain_action.py", "--config", "configs/pretrain/pretrain_k400_small.yaml", "--checkpoint", tmp_path / "pre",
       "--set", "segment=4", "--set", "decoder_dim=16", "--set", "decoder_heads=2", "--set", "decoder_depth=1",
       "--set", "picture_clips=0")
    finetune = ["--config", "configs/action/ft_k400_small.yaml"]
    ok("train_action.py", *finetune, "--checkpoint", tmp_path / "joint", "--backbone_ckpt", tmp_path / "pre" / "backbone.bin")
    ok("train_action.py", *finetune, "--checkpoint", tmp_path / "bone", "--backbone_ckpt", tmp_path / "pre" / "backbone.bin",
       "--set", "stream=bone")
    for stream in ("joint", "bone"):
        ok("evaluate_action.py", *finetune, "--evaluate", tmp_path / stream / "best_epoch.bin", "--set",
           f"stream={stream}", "--save-scores", tmp_path / f"{stream}.npz")
    ok("evaluate_action.py", *finetune, "--ensemble", tmp_path / "joint.npz", tmp_path / "bone.npz",
       "--out-dir", tmp_path / "fused")
    fused = json.loads((tmp_path / "fused" / "metrics.json").read_text())
    assert fused["samples"] == len(open_store(data_config(data, "k400")).splits["val"])
    ok("deployment/deployment_action.py", *finetune, "--evaluate", tmp_path / "joint" / "best_epoch.bin",
       "--deployment", tmp_path / "k400.onnx")
    store = load_store(data / "k400_hrnet.pkl")
    sample = store.frame_dir[int(np.argmax(store.persons))]
    result = subprocess.run([sys.executable, "deployment/infer_action.py", "--onnx", tmp_path / "k400.onnx",
                             "--pickle", data / "k400_hrnet.pkl", "--sample", sample], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "true class:" in result.stdout, result.stderr[-2000:]
    ok("vis_action_attn.py", *finetune, "--evaluate", tmp_path / "joint" / "best_epoch.bin", "--attn-dir",
       tmp_path / "vis")
    assert any((tmp_path / "vis").rglob("*.png"))
