"""Tests of the synthetic preset ntu120_oneshot (lib/data/synthetic.py) against the NTU120 one-shot protocol
(lib/data/oneshot.py)."""
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from lib.data import synthetic
from lib.data.oneshot import HELD_OUT_ACTIONS, NOVEL_ACTIONS, exemplar_name, with_oneshot_splits
from lib.data.pyskl import load_store
from lib.errors import UserError

EXEMPLAR_ACTIONS = NOVEL_ACTIONS + HELD_OUT_ACTIONS
NUM_SAMPLES = 240  # drawn ones, 2 per action; the 40 exemplars come on top


@pytest.fixture(scope="module")
def data():
    return synthetic.generate("ntu120_oneshot", seed=0, num_samples=NUM_SAMPLES)


def frame_dirs_of(data):
    return [ann["frame_dir"] for ann in data["annotations"]]


def test_exemplar_names_are_those_of_the_protocol():
    assert exemplar_name(1) == "S001C003P008R001A001" and exemplar_name(60) == "S001C003P008R001A060"
    assert exemplar_name(61) == "S018C003P008R001A061" and exemplar_name(116) == "S018C003P008R001A116"
    assert len(EXEMPLAR_ACTIONS) == 40


def test_every_exemplar_is_present_with_its_label(data):
    labels = {ann["frame_dir"]: ann["label"] for ann in data["annotations"]}
    for action in EXEMPLAR_ACTIONS:
        assert labels.get(exemplar_name(action)) == action - 1, exemplar_name(action)


def test_ids_are_unique_sorted_and_cover_all_classes(data):
    frame_dirs = frame_dirs_of(data)
    assert len(set(frame_dirs)) == len(frame_dirs)
    assert frame_dirs == sorted(frame_dirs, key=lambda name: tuple(synthetic.parse_frame_dir(name).values()))
    drawn = set(frame_dirs) - {exemplar_name(action) for action in EXEMPLAR_ACTIONS}
    assert len(drawn) <= NUM_SAMPLES and len(frame_dirs) <= NUM_SAMPLES + len(EXEMPLAR_ACTIONS)
    assert {ann["label"] for ann in data["annotations"]} == set(range(120))
    for ann in data["annotations"]:
        assert ann["label"] == synthetic.parse_frame_dir(ann["frame_dir"])["action"] - 1
        assert ann["total_frames"] == ann["keypoint"].shape[1] <= 150


def test_splits_follow_the_ntu120_rules(data):
    frame_dirs = frame_dirs_of(data)
    assert data["split"] == synthetic.make_splits(frame_dirs, "ntu120")
    assert set(data["split"]) == {"xsub_train", "xsub_val", "xset_train", "xset_val"}


def test_an_exemplar_that_is_also_drawn_is_kept_once():
    preset = synthetic.PRESETS["ntu120_oneshot"]
    drawn = synthetic.draw_sample_ids(preset, 1200, np.random.default_rng(5))
    assert len(drawn) == len(set(drawn))
    also_drawn = synthetic.make_frame_dir(*drawn[0])
    forced = dataclasses.replace(preset, required=preset.required + (also_drawn,))
    ids = synthetic.draw_sample_ids(forced, 1200, np.random.default_rng(5))
    assert len(ids) == len(set(ids)) and ids == sorted(ids)
    assert set(ids) == set(drawn)  # also_drawn was required and drawn, and is there once


def test_the_same_seed_gives_the_same_content_another_seed_other_content(data):
    again = synthetic.generate("ntu120_oneshot", seed=0, num_samples=NUM_SAMPLES)
    assert again["split"] == data["split"]
    assert len(again["annotations"]) == len(data["annotations"])
    for a, b in zip(again["annotations"], data["annotations"]):
        assert a["frame_dir"] == b["frame_dir"] and a["label"] == b["label"]
        np.testing.assert_array_equal(a["keypoint"], b["keypoint"])
        np.testing.assert_array_equal(a["keypoint_score"], b["keypoint_score"])
    other = synthetic.generate("ntu120_oneshot", seed=1, num_samples=NUM_SAMPLES)
    assert frame_dirs_of(other) != frame_dirs_of(data)
    exemplar = exemplar_name(NOVEL_ACTIONS[0])
    keypoints = [{ann["frame_dir"]: ann["keypoint"] for ann in d["annotations"]}[exemplar] for d in (data, other)]
    assert keypoints[0].shape != keypoints[1].shape or not np.array_equal(*keypoints)


def test_the_pickle_gives_the_oneshot_splits(data, tmp_path):
    path = tmp_path / "ntu120_oneshot.pkl"
    synthetic.write_pickle(data, path)
    store = with_oneshot_splits(load_store(path))
    action = store.label + 1
    train, val, test = (store.splits[name] for name in ("oneshot_train", "oneshot_val", "oneshot_test"))
    assert not np.isin(action[train], EXEMPLAR_ACTIONS).any()
    assert set(action[val].tolist()) == set(HELD_OUT_ACTIONS) and len(HELD_OUT_ACTIONS) == 20
    assert set(action[test].tolist()) == set(NOVEL_ACTIONS) and len(NOVEL_ACTIONS) == 20
    together = np.concatenate([train, val, test])
    assert len(together) == len(set(together.tolist())) == len(store) == len(data["annotations"])
    assert {"xsub_train", "xsub_val", "xset_train", "xset_val"} <= set(store.splits)


def test_a_missing_exemplar_is_an_error_naming_it(data, tmp_path):
    missing = exemplar_name(HELD_OUT_ACTIONS[3])
    pruned = {"split": {name: [f for f in names if f != missing] for name, names in data["split"].items()},
              "annotations": [ann for ann in data["annotations"] if ann["frame_dir"] != missing]}
    assert len(pruned["annotations"]) == len(data["annotations"]) - 1
    path = tmp_path / "pruned.pkl"
    synthetic.write_pickle(pruned, path)
    store = load_store(path)
    with pytest.raises(UserError, match=missing):
        with_oneshot_splits(store)


def test_pretraining_with_data_split_oneshot_reads_only_the_training_classes(data, tmp_path):
    """A backbone for the one-shot protocol can be pretrained without ever reading a clip of the novel or
    held-out classes, labelled or not."""
    from lib.config import load_yaml_config
    from lib.engine.pretraining import MaskedMotionTask

    synthetic.write_pickle(data, tmp_path / "ntu120_oneshot.pkl")
    cfg = load_yaml_config(Path(__file__).resolve().parents[1] / "configs/pretrain/pretrain_NTU120_xsub_small.yaml",
                           overrides=[f"data_root={tmp_path}", "dataset=ntu120_oneshot", "data_split=oneshot"])
    clips, validation = MaskedMotionTask(cfg).datasets()
    assert validation is None
    actions = set(clips.dataset.labels + 1)
    assert actions and not actions & set(NOVEL_ACTIONS + HELD_OUT_ACTIONS)
    assert len(actions) == 80
