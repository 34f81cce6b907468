"""Tests of lib/data/pyskl.py (reading PYSKL pickles safely, the packed store and its .npy cache) and of
ActionDataset in lib/data/dataset.py.

The pickles are tiny and built here in exactly the PYSKL format, written with the standard pickle.dump.
"""
import logging
import os
import pathlib
import pickle

import numpy as np
import pytest

import lib.data.pyskl as pyskl
from lib.config import DataConfig
from lib.data.dataset import ActionDataset
from lib.data.preprocess import make_clip
from lib.data.pyskl import load_store, read_pickle
from lib.errors import UserError


def frame_dir(setup=1, camera=1, performer=1, replication=1, action=1):
    return f"S{setup:03d}C{camera:03d}P{performer:03d}R{replication:03d}A{action:03d}"


def annotation(name, label, persons, frames, seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    keypoint = rng.uniform([0, 0], [1920, 1080], size=(persons, frames, 17, 2)).astype(dtype)
    score = rng.uniform(0.05, 1.0, size=(persons, frames, 17)).astype(dtype)
    return {"frame_dir": name, "label": label, "img_shape": (1080, 1920), "original_shape": (1080, 1920),
            "total_frames": frames, "keypoint": keypoint, "keypoint_score": score}


def tiny_dataset(seed=0):
    """Six samples with varying persons and lengths; splits xsub_train / xsub_val (and xview_*)."""
    specs = [  # (performer, camera, action, persons, frames)
        (1, 1, 1, 1, 30), (2, 2, 2, 2, 45), (3, 1, 3, 1, 12),
        (4, 3, 1, 2, 64), (5, 2, 2, 1, 7), (1, 3, 3, 3, 20),
    ]
    annotations = [annotation(frame_dir(performer=p, camera=c, action=a), a - 1, m, t, seed * 100 + i)
                   for i, (p, c, a, m, t) in enumerate(specs)]
    names = [ann["frame_dir"] for ann in annotations]
    split = {
        "xsub_train": [names[3], names[0], names[5], names[1]],  # performers 1, 2, 4; not in file order
        "xsub_val": [names[2], names[4]],
        "xview_train": [n for n in names if "C001" not in n],
        "xview_val": [n for n in names if "C001" in n],
    }
    return {"split": split, "annotations": annotations}


def write_pickle(path, data, protocol=pickle.HIGHEST_PROTOCOL):
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=protocol)
    return path


def assert_store_matches(store, data):
    annotations = data["annotations"]
    assert len(store) == len(annotations)
    for i, ann in enumerate(annotations):
        kp, sc = store.raw_sample(i)
        np.testing.assert_array_equal(kp, ann["keypoint"])
        np.testing.assert_array_equal(sc, ann["keypoint_score"])
        assert kp.dtype == ann["keypoint"].dtype and sc.dtype == ann["keypoint_score"].dtype
        assert store.label[i] == ann["label"]
        assert store.frame_dir[i] == ann["frame_dir"]
        assert tuple(store.img_hw[i]) == tuple(ann["img_shape"])
    position = {ann["frame_dir"]: i for i, ann in enumerate(annotations)}
    assert set(store.splits) == set(data["split"])
    for name, members in data["split"].items():
        assert store.split_indices(name).tolist() == [position[m] for m in members]


# ---------------------------------------------------------------------------------------------------------
# Round trip and cache


def test_round_trip_and_cache(tmp_path, monkeypatch):
    data = tiny_dataset()
    path = write_pickle(tmp_path / "tiny.pkl", data)
    first = load_store(path)
    assert_store_matches(first, data)
    assert (tmp_path / ".cache").is_dir()  # the cache lives beside the pickle

    # The second start must not parse the pickle at all.
    def no_parse(p):
        raise AssertionError("the pickle was parsed although the cache is current")

    monkeypatch.setattr(pyskl, "read_pickle", no_parse)
    second = load_store(path)
    assert isinstance(second.keypoint, np.memmap) and isinstance(second.score, np.memmap)
    assert_store_matches(second, data)
    for i in range(len(first)):
        for x, y in zip(first.raw_sample(i), second.raw_sample(i)):
            np.testing.assert_array_equal(x, y)


# Loads the store in a fresh process and appends a line to `packed_log` each time it packs the pickle.
CONCURRENT_LOADER = """
import sys
sys.path.insert(0, {root!r})
import lib.data.pyskl as pyskl
original = pyskl._pack_in_child_process
def logged(*args):
    with open({packed_log!r}, "a") as f:
        f.write("packed\\n")
    return original(*args)
pyskl._pack_in_child_process = logged
store = pyskl.load_store({pickle!r})
print(len(store), float(store.keypoint.sum()))
"""


def test_processes_starting_together_pack_the_cache_once(tmp_path):
    """DDP ranks load the same pickle at the same moment: one packs the cache, the others wait for it
    and map it; all see the same data and none warns."""
    import subprocess
    import sys

    data = tiny_dataset()
    path = write_pickle(tmp_path / "tiny.pkl", data)
    code = CONCURRENT_LOADER.format(root=str(pathlib.Path(__file__).resolve().parents[1]),
                                    packed_log=str(tmp_path / "packed.log"), pickle=str(path))
    processes = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(3)]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs
    assert len({stdout for stdout, _ in outputs}) == 1 and not any(stderr for _, stderr in outputs)
    assert (tmp_path / "packed.log").read_text().splitlines() == ["packed"]
    assert_store_matches(load_store(path), data)
    assert [p.name for p in (tmp_path / ".cache").iterdir()] == ["tiny"]  # no temporary folder left


def test_without_cache_gives_the_same_store(tmp_path):
    data = tiny_dataset()
    path = write_pickle(tmp_path / "tiny.pkl", data)
    store = load_store(path, use_cache=False)
    assert_store_matches(store, data)
    assert not (tmp_path / ".cache").exists()


def test_cached_arrays_are_read_only(tmp_path):
    path = write_pickle(tmp_path / "tiny.pkl", tiny_dataset())
    load_store(path)
    store = load_store(path)
    kp, sc = store.raw_sample(1)
    with pytest.raises(ValueError):
        kp[0, 0, 0, 0] = 1.0
    with pytest.raises(ValueError):
        sc[0, 0, 0] = 1.0


def test_rewriting_the_pickle_invalidates_the_cache(tmp_path):
    path = tmp_path / "tiny.pkl"
    old = tiny_dataset(seed=0)
    write_pickle(path, old)
    assert_store_matches(load_store(path), old)

    # Same shapes, new values: the file has the same size, only its modification time changes.
    new = tiny_dataset(seed=1)
    before = path.stat()
    write_pickle(path, new)
    after = path.stat()
    assert after.st_size == before.st_size
    if after.st_mtime_ns == before.st_mtime_ns:  # coarse file-system clock: make the rewrite visible
        os.utime(path, ns=(after.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    assert_store_matches(load_store(path), new)

    # A different number of samples and lengths.
    newer = tiny_dataset(seed=2)
    newer["annotations"].append(annotation(frame_dir(performer=9, action=2), 1, 2, 99, 7))
    newer["split"]["xsub_val"].append(newer["annotations"][-1]["frame_dir"])
    write_pickle(path, newer)
    store = load_store(path)
    assert_store_matches(store, newer)
    assert isinstance(store.keypoint, np.memmap)


def test_float64_keypoints_round_trip(tmp_path):
    data = tiny_dataset()
    data["annotations"][2] = annotation(data["annotations"][2]["frame_dir"], 2, 1, 12, 5, dtype=np.float64)
    path = write_pickle(tmp_path / "mixed.pkl", data)
    store = load_store(path)
    for i, ann in enumerate(data["annotations"]):
        np.testing.assert_array_equal(store.raw_sample(i)[0], ann["keypoint"])


def test_split_members_without_annotation_are_skipped(tmp_path):
    data = tiny_dataset()
    data["split"]["xsub_val"].insert(1, frame_dir(performer=77))
    path = write_pickle(tmp_path / "tiny.pkl", data)
    store = load_store(path)
    names = [ann["frame_dir"] for ann in data["annotations"]]
    assert store.split_indices("xsub_val").tolist() == [names.index(data["split"]["xsub_val"][0]),
                                                        names.index(data["split"]["xsub_val"][2])]


# ---------------------------------------------------------------------------------------------------------
# The restricted unpickler


class OpensAFile:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return open, (self.target, "w")


class RunsAShellCommand:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return os.system, (f"touch '{self.target}'",)


class TouchesAPath:
    def __init__(self, target):
        self.target = pathlib.Path(target)

    def __reduce__(self):
        return pathlib.Path.touch, (self.target,)


class Evaluates:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return eval, (f"open({self.target!r}, 'w')",)


@pytest.mark.parametrize("payload", [OpensAFile, RunsAShellCommand, TouchesAPath, Evaluates])
@pytest.mark.parametrize("where", ["top", "inside"])
def test_a_pickle_that_runs_code_is_refused(tmp_path, payload, where):
    target = tmp_path / "pwned"
    if where == "top":
        data = payload(target)
    else:  # hidden inside an otherwise valid annotation
        data = tiny_dataset()
        data["annotations"][3]["extra"] = payload(target)
    path = write_pickle(tmp_path / "evil.pkl", data)
    with pytest.raises(UserError) as err:
        load_store(path)
    message = str(err.value)
    assert "\n" not in message
    assert "refus" in message and "not plain skeleton data" in message
    assert str(path) in message
    assert not target.exists()
    assert not list(tmp_path.glob(".cache/*")), "nothing may be cached from a refused pickle"


def test_builtins_eval_is_refused(tmp_path):
    target = tmp_path / "pwned"
    path = write_pickle(tmp_path / "evil.pkl", Evaluates(target), protocol=2)
    # Protocol 2 writes it under its Python 2 name, __builtin__.eval.
    with pytest.raises(UserError, match=r"refus.*builtin__\.eval"):
        read_pickle(path)
    assert not target.exists()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_pickles_of_every_protocol_load(tmp_path, protocol):
    data = tiny_dataset()
    data["annotations"][0]["label"] = np.int64(0)  # numpy scalars are plain data too
    path = write_pickle(tmp_path / f"p{protocol}.pkl", data, protocol=protocol)
    assert_store_matches(load_store(path), data)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_builtin_containers_load_at_every_protocol(tmp_path, protocol):
    # Sets, complex numbers, ranges... are plain data the unpickler admits; protocol 2 (what mmcv.dump,
    # which wrote the PYSKL files, uses by default) names them under Python 2's __builtin__ module.
    data = tiny_dataset()
    data["annotations"][1]["tags"] = {"outdoor", "two-person"}
    data["annotations"][1]["extras"] = [complex(1, 2), frozenset({3}), range(4), slice(1, 5), bytearray(b"ab")]
    path = write_pickle(tmp_path / f"p{protocol}.pkl", data, protocol=protocol)
    loaded = read_pickle(path)
    assert loaded["annotations"][1]["tags"] == {"outdoor", "two-person"}
    assert loaded["annotations"][1]["extras"] == data["annotations"][1]["extras"]
    assert_store_matches(load_store(path), data)


def test_pickle_written_by_numpy_1_loads(tmp_path):
    # The published files were written by numpy 1.x, whose arrays refer to numpy.core.multiarray.
    data = tiny_dataset()
    blob = pickle.dumps(data, protocol=2)  # protocol 2 names globals as text lines
    blob = blob.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in blob
    path = tmp_path / "np1.pkl"
    path.write_bytes(blob)
    assert_store_matches(load_store(path), data)


# ---------------------------------------------------------------------------------------------------------
# Bad input: one-line UserErrors that name the problem (DESIGN 7)


def load_in_this_process(path, use_cache=True):
    """load_store with the parsing and packing in this process instead of a spawned one: the same code,
    without a Python start-up for each of the many bad-input cases. The process boundary itself is tested
    by test_bad_dtype_reaches_the_caller_of_load_store_as_a_user_error and the cache tests."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pyskl, "_pack_in_child_process", pyskl._pack_pickle)
        return load_store(path, use_cache=use_cache)


def expect_user_error(path, *fragments, use_cache=True, child_process=False):
    with pytest.raises(UserError) as err:
        (load_store if child_process else load_in_this_process)(path, use_cache=use_cache)
    message = str(err.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment.lower() in message.lower(), message
    return message


def test_missing_file(tmp_path):
    path = tmp_path / "sub" / "nope.pkl"
    expect_user_error(path, str(path), "not found")
    with pytest.raises(UserError):
        read_pickle(path)


@pytest.mark.parametrize("protocol", [2, 5])
@pytest.mark.parametrize("keep", [0.5, 0.1, 0.9])
def test_truncated_pickle(tmp_path, protocol, keep):
    blob = pickle.dumps(tiny_dataset(), protocol=protocol)
    path = tmp_path / "cut.pkl"
    path.write_bytes(blob[: int(len(blob) * keep)])
    expect_user_error(path, str(path), "corrupt or truncated")


@pytest.mark.parametrize("blob", [
    b"",
    b"this is not a pickle",
    b"\x80\x05garbage",
    b"PK\x03\x04\x14\x00\x00\x00",  # a zip archive (e.g. a torch.save file) named .pkl
])
def test_garbage_file(tmp_path, blob):
    path = tmp_path / "garbage.pkl"
    path.write_bytes(blob)
    expect_user_error(path, str(path), "corrupt or truncated")


def test_pickle_with_an_impossible_length_field(tmp_path):
    # A protocol-4 FRAME opcode claiming 2**64 - 1 bytes: a corrupt file like any other.
    path = tmp_path / "frame.pkl"
    path.write_bytes(b"\x80\x04\x95" + b"\xff" * 8)
    expect_user_error(path, str(path), "corrupt or truncated")


@pytest.mark.parametrize("data", [
    [1, 2, 3],
    "annotations",
    {"annotations": []},
    {"split": {}},
    {"split": [], "annotations": []},
    {"split": {}, "annotations": {}},
])
def test_not_a_pyskl_dict(tmp_path, data):
    path = write_pickle(tmp_path / "odd.pkl", data)
    expect_user_error(path, "not a PYSKL skeleton pickle")


def test_no_annotations(tmp_path):
    path = write_pickle(tmp_path / "empty.pkl", {"split": {"xsub_train": []}, "annotations": []})
    expect_user_error(path, "no annotations")


def broken(tmp_path, index, **changes):
    """The tiny dataset with annotation `index` changed (a value of None deletes the key)."""
    data = tiny_dataset()
    ann = data["annotations"][index]
    for key, value in changes.items():
        if value is None:
            del ann[key]
        else:
            ann[key] = value
    return write_pickle(tmp_path / "bad.pkl", data), ann["frame_dir"] if "frame_dir" in ann else None


@pytest.mark.parametrize("key", ["keypoint", "keypoint_score", "label", "img_shape", "frame_dir"])
def test_annotation_missing_a_key(tmp_path, key):
    path, name = broken(tmp_path, 2, **{key: None})
    expect_user_error(path, f"'{key}'", name or "annotation 2")


def test_annotation_not_a_dict(tmp_path):
    data = tiny_dataset()
    data["annotations"][4] = ["keypoint"]
    path = write_pickle(tmp_path / "bad.pkl", data)
    expect_user_error(path, "annotation 4", "not a dict")


@pytest.mark.parametrize("shape", [(1, 12, 18, 2), (1, 12, 17, 3), (12, 17, 2), (1, 1, 12, 17, 2)])
def test_wrong_keypoint_shape(tmp_path, shape):
    path, name = broken(tmp_path, 2, keypoint=np.zeros(shape, np.float32),
                        keypoint_score=np.ones(shape[:-1], np.float32))
    expect_user_error(path, name, "keypoint of shape", str(shape))


def test_keypoint_not_an_array(tmp_path):
    path, name = broken(tmp_path, 2, keypoint=[[0.0, 1.0]])
    expect_user_error(path, name, "keypoint")


@pytest.mark.parametrize("shape", [(1, 11, 17), (2, 12, 17), (1, 12, 18), (1, 12, 17, 1)])
def test_keypoint_score_shape_mismatch(tmp_path, shape):
    path, name = broken(tmp_path, 2, keypoint_score=np.ones(shape, np.float32))
    expect_user_error(path, name, "keypoint_score", str(shape))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("field", ["keypoint", "keypoint_score"])
def test_non_finite_values(tmp_path, bad, field):
    data = tiny_dataset()
    ann = data["annotations"][3]
    ann[field][1, 5, 4, ...] = bad
    path = write_pickle(tmp_path / "bad.pkl", data)
    expect_user_error(path, ann["frame_dir"], "NaN or infinite")


@pytest.mark.parametrize("persons, frames", [(1, 0), (0, 12)])
def test_sample_without_anyone_is_kept_as_an_empty_clip(tmp_path, caplog, persons, frames):
    # UCF101, HMDB51 and Kinetics hold videos in which the detector found nobody; PYSKL keeps them.
    path, name = broken(tmp_path, 2, keypoint=np.zeros((persons, frames, 17, 2), np.float32),
                        keypoint_score=np.zeros((persons, frames, 17), np.float32), total_frames=frames)
    with caplog.at_level(logging.INFO, logger="lib.data.pyskl"):
        store = load_in_this_process(path)
    position = list(store.frame_dir).index(name)
    assert store.raw_sample(position)[0].shape == (persons, frames, 17, 2)
    assert f"1 of {len(store)} samples have no skeleton" in caplog.text and name in caplog.text
    clip = make_clip(*store.raw_sample(position), store.img_hw[position], 16)
    assert clip.shape == (2, 16, 17, 3) and not clip.any()


def test_total_frames_disagreeing(tmp_path):
    path, name = broken(tmp_path, 2, total_frames=13)  # the keypoints have 12 frames
    expect_user_error(path, name, "total_frames 13", "12 frames")


@pytest.mark.parametrize("label", [-1, 2.0, "3", True])
def test_bad_label(tmp_path, label):
    path, name = broken(tmp_path, 2, label=label)
    expect_user_error(path, name, f"label {label!r}", "non-negative integer")


@pytest.mark.parametrize("img_shape", [(1080,), (0, 1920), "1080x1920"])
def test_bad_img_shape(tmp_path, img_shape):
    path, name = broken(tmp_path, 2, img_shape=img_shape)
    expect_user_error(path, name, "img_shape")


# Every number of a sample must be real (integer or floating point): bool, complex, strings and objects are
# refused with one line that names the sample, the key and what to do (not a TypeError from the packing
# process). The annotation of sample 2 has 1 person and 12 frames.
KP, SCORE = np.ones((1, 12, 17, 2), np.float32), np.ones((1, 12, 17), np.float32)
BAD_DTYPES = {
    "keypoint": [KP.astype(object), KP.astype(str), KP.astype(np.complex64), KP.astype(bool)],
    "keypoint_score": [SCORE.astype(object), SCORE.astype(str), SCORE.astype(np.complex128), SCORE.astype(bool)],
    "img_shape": [np.array([1080, 1920], dtype=object), np.array(["1080", "1920"]), np.array([1080, 1920], complex),
                  ("1080", "1920"), (1080 + 0j, 1920), (True, 1920), (float("nan"), 1920)],
    "original_shape": [np.array([1080, 1920], dtype=object), np.array(["1080", "1920"]),
                       np.array([1080, 1920], complex), ("1080", "1920"), (1080, 1920j)],
    "total_frames": [np.array(12, dtype=object), np.array("12"), np.complex64(12), "12", 12.5, np.array([12, 12])],
    "label": [np.array(1, dtype=object), np.str_("1"), np.complex64(1), np.float32(1), np.array([1])],
}


@pytest.mark.parametrize("key, value", [(key, value) for key, values in BAD_DTYPES.items() for value in values],
                         ids=[f"{key}-{i}" for key, values in BAD_DTYPES.items() for i in range(len(values))])
def test_bad_dtype_is_a_one_line_error_naming_sample_and_key(tmp_path, key, value):
    path, name = broken(tmp_path, 2, **{key: value})
    message = expect_user_error(path, str(path), f"sample {name} has {key} ")
    assert "Traceback" not in message and len(message) < 400, message
    assert any(hint in message for hint in ("convert it", "set it to", "fix the label", "remove")), message


@pytest.mark.parametrize("key", list(BAD_DTYPES))
def test_bad_dtype_reaches_the_caller_of_load_store_as_a_user_error(tmp_path, key):
    """Without the cache too (a temporary folder), the packing process's error comes back as it was
    raised, the only sample of its kind named, and nothing is left behind."""
    data = tiny_dataset()
    ann = data["annotations"][4]
    ann[key] = BAD_DTYPES[key][0] if key not in ("keypoint", "keypoint_score") else ann[key].astype(object)
    path = write_pickle(tmp_path / "bad.pkl", data)
    for use_cache in (True, False):
        message = expect_user_error(path, ann["frame_dir"], f" {key} ", use_cache=use_cache, child_process=True)
        assert sum(a["frame_dir"] in message for a in data["annotations"]) == 1, message
    assert not [p for p in (tmp_path / ".cache").rglob("*") if p.is_file()]


@pytest.mark.parametrize("key, value", [
    ("keypoint", KP.astype(np.int16) * 100), ("keypoint", KP.astype(np.float16)), ("keypoint", KP.astype(">f8")),
    ("keypoint_score", SCORE.astype(np.uint8)), ("img_shape", np.array([1080.0, 1920.0])),
    ("img_shape", [np.int64(1080), 1920]), ("original_shape", np.array([1080, 1920], np.uint16)),
    ("total_frames", np.int32(12)), ("total_frames", 12.0), ("total_frames", np.array(12)), ("label", np.uint8(1)),
])
def test_integer_and_floating_point_dtypes_are_accepted(tmp_path, key, value):
    path, name = broken(tmp_path, 2, **{key: value})
    store = load_in_this_process(path)
    i = list(store.frame_dir).index(name)
    if key in ("keypoint", "keypoint_score"):
        np.testing.assert_array_equal(store.raw_sample(i)[key == "keypoint_score"], value)
    assert tuple(store.img_hw[i]) == (1080, 1920) and store.frames[i] == 12


def test_duplicate_frame_dir(tmp_path):
    data = tiny_dataset()
    data["annotations"][4]["frame_dir"] = data["annotations"][1]["frame_dir"]
    path = write_pickle(tmp_path / "dup.pkl", data)
    expect_user_error(path, "frame_dir", "not unique")


def test_unknown_split_lists_the_available_ones(tmp_path):
    store = load_store(write_pickle(tmp_path / "tiny.pkl", tiny_dataset()))
    with pytest.raises(UserError) as err:
        store.split_indices("nope")
    message = str(err.value)
    assert "\n" not in message
    assert "'nope'" in message
    for name in ("xsub_train", "xsub_val", "xview_train", "xview_val"):
        assert name in message


def test_dataset_with_a_missing_split_is_refused(tmp_path):
    store = load_store(write_pickle(tmp_path / "tiny.pkl", tiny_dataset()))
    cfg = DataConfig(data_split="xset", action_classes=3, clip_len=8)
    with pytest.raises(UserError, match="xset_train"):
        ActionDataset(store, cfg, train=True)


def test_label_outside_action_classes(tmp_path):
    store = load_store(write_pickle(tmp_path / "tiny.pkl", tiny_dataset()))  # labels 0, 1, 2
    for train in (True, False):
        with pytest.raises(UserError) as err:
            ActionDataset(store, DataConfig(action_classes=2, clip_len=8), train=train)
        message = str(err.value)
        assert "\n" not in message and "action_classes" in message and "label 2" in message
    ActionDataset(store, DataConfig(action_classes=3, clip_len=8), train=True)  # exactly enough: fine


# ---------------------------------------------------------------------------------------------------------
# ActionDataset


@pytest.fixture
def store(tmp_path):
    return load_store(write_pickle(tmp_path / "tiny.pkl", tiny_dataset()))


def config(**overrides):
    values = dict(action_classes=3, clip_len=16, random_move=True, scale_range_train=[1.0, 3.0],
                  scale_range_test=[2.0, 2.0])
    values.update(overrides)
    return DataConfig(**values)


def test_items_are_float32_clips_with_int_labels(store):
    for train in (True, False):
        ds = ActionDataset(store, config(), train=train)
        split = store.split_indices("xsub_train" if train else "xsub_val")
        assert len(ds) == len(split)
        for i in range(len(ds)):
            clip, label = ds[i]
            assert clip.dtype == np.float32 and clip.shape == (2, 16, 17, 3)
            assert type(label) is int and label == store.label[split[i]]
            assert clip.min() >= -1 and clip.max() <= 1
        assert ds.labels.tolist() == store.label[split].tolist()
        assert ds.frame_dirs.tolist() == store.frame_dir[split].tolist()


def test_val_items_are_the_deterministic_test_pipeline(store):
    ds = ActionDataset(store, config(), train=False)
    again = ActionDataset(store, config(), train=False, seed=5)
    for i in range(len(ds)):
        first, _ = ds[i]
        ds.set_epoch(3)
        np.testing.assert_array_equal(first, ds[i][0])
        np.testing.assert_array_equal(first, again[i][0])
        index = int(store.split_indices("xsub_val")[i])
        keypoint, score = store.raw_sample(index)
        expected = make_clip(keypoint, score, store.img_hw[index], 16, scale_range=(2, 2))
        np.testing.assert_array_equal(first, expected)


def test_train_items_change_per_epoch_and_repeat_per_seed_and_epoch(store):
    ds = ActionDataset(store, config(), train=True, seed=0)
    same = ActionDataset(store, config(), train=True, seed=0)
    other_seed = ActionDataset(store, config(), train=True, seed=1)
    for i in range(len(ds)):
        ds.set_epoch(0)
        same.set_epoch(0)
        other_seed.set_epoch(0)
        epoch0 = ds[i][0]
        np.testing.assert_array_equal(epoch0, ds[i][0])  # reading twice gives the same clip
        np.testing.assert_array_equal(epoch0, same[i][0])  # another dataset object (worker): same clip
        assert not np.allclose(epoch0, other_seed[i][0])
        ds.set_epoch(1)
        epoch1 = ds[i][0]
        assert not np.allclose(epoch0, epoch1)
        same.set_epoch(1)
        np.testing.assert_array_equal(epoch1, same[i][0])
        ds.set_epoch(0)
        np.testing.assert_array_equal(epoch0, ds[i][0])  # back to epoch 0 (a resumed run): same clip


def test_train_clip_does_not_depend_on_reading_order(store):
    forward = ActionDataset(store, config(), train=True, seed=3)
    backward = ActionDataset(store, config(), train=True, seed=3)
    forward.set_epoch(2)
    backward.set_epoch(2)
    a = [forward[i][0] for i in range(len(forward))]
    b = [backward[i][0] for i in reversed(range(len(backward)))][::-1]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_train_without_augmentation_equals_val_when_nothing_is_resampled(tmp_path):
    # T == clip_len leaves the training resampler no choice (each interval is one frame), so with
    # random_move off and a fixed crop ratio of 2 a training clip is the test clip, in every epoch.
    data = tiny_dataset()
    for i, ann in enumerate(data["annotations"]):
        m = ann["keypoint"].shape[0]
        fresh = annotation(ann["frame_dir"], ann["label"], m, 16, 50 + i)
        ann.update(fresh)
    data["split"]["xsub_val"] = data["split"]["xsub_train"]
    store = load_store(write_pickle(tmp_path / "fixed.pkl", data))
    cfg = config(random_move=False, scale_range_train=[2.0, 2.0])
    train, val = ActionDataset(store, cfg, train=True), ActionDataset(store, cfg, train=False)
    for epoch in range(3):
        train.set_epoch(epoch)
        for i in range(len(train)):
            np.testing.assert_array_equal(train[i][0], val[i][0])


def test_train_with_fixed_ratio_keeps_the_crop_geometry(store):
    # Without random_move and with ratio 2, only the frames vary: every training clip's confident
    # joints still have a bounding box centred at 0 whose longer side is exactly 1.
    ds = ActionDataset(store, config(random_move=False, scale_range_train=[2.0, 2.0]), train=True)
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            clip, _ = ds[i]
            pts = clip[..., :2][clip[..., 2] != 0]
            lo, hi = pts.min(0), pts.max(0)
            np.testing.assert_allclose((lo + hi) / 2, 0, atol=1e-6)
            assert (hi - lo).max() == pytest.approx(1.0, abs=1e-6)
    # Training frames really are resampled: some clip differs from one epoch to the next.
    ds.set_epoch(0)
    first = [ds[i][0] for i in range(len(ds))]
    ds.set_epoch(1)
    differs = any(not np.array_equal(a, ds[i][0]) for i, a in enumerate(first))
    assert differs


def test_train_random_crop_ratio_varies_within_the_range(store):
    ds = ActionDataset(store, config(random_move=False, scale_range_train=[1.0, 3.0]), train=True)
    spans = []
    for epoch in range(15):
        ds.set_epoch(epoch)
        clip, _ = ds[0]
        pts = clip[..., :2][clip[..., 2] != 0]
        spans.append((pts.max(0) - pts.min(0)).max())  # 2 / ratio
    spans = np.array(spans)
    assert spans.min() >= 2 / 3 - 1e-5 and spans.max() <= 2 + 1e-5
    assert spans.max() - spans.min() > 0.3


def test_random_move_switch_is_honoured_in_training_only(store):
    moved = ActionDataset(store, config(random_move=True), train=True, seed=4)
    still = ActionDataset(store, config(random_move=False), train=True, seed=4)
    for i in range(len(moved)):
        a, b = moved[i][0], still[i][0]
        assert not np.allclose(a[..., :2], b[..., :2])  # same frames and ratio draw, plus a move
        np.testing.assert_array_equal(a[..., 2], b[..., 2])  # confidences untouched by the move
    val_moved = ActionDataset(store, config(random_move=True), train=False)
    val_still = ActionDataset(store, config(random_move=False), train=False)
    for i in range(len(val_moved)):
        np.testing.assert_array_equal(val_moved[i][0], val_still[i][0])


def test_legacy_conf_order_reaches_the_dataset(store):
    index = int(store.split_indices("xsub_val")[0])
    keypoint, score = store.raw_sample(index)
    frames = np.floor(np.linspace(0, keypoint.shape[1], 16, endpoint=False)).astype(int)
    legacy, _ = ActionDataset(store, config(legacy_conf_order=True), train=False)[0]
    fixed, _ = ActionDataset(store, config(), train=False)[0]
    np.testing.assert_allclose(legacy[0, ..., 2], score[0, frames], rtol=1e-6)  # COCO order
    np.testing.assert_allclose(fixed[0, :, 1, 2], score[0, frames, 12], rtol=1e-6)  # right hip <- COCO 12
    np.testing.assert_allclose(fixed[0, :, 9, 2], score[0, frames, 0], rtol=1e-6)  # nose <- COCO 0


@pytest.mark.parametrize("use_cache", [True, False])
def test_reading_items_never_modifies_the_stored_keypoints(tmp_path, use_cache):
    path = write_pickle(tmp_path / "tiny.pkl", tiny_dataset())
    if use_cache:
        load_store(path)
    store = load_store(path, use_cache=use_cache)  # memory-mapped (read-only) or plain writable arrays
    keypoint, score = np.array(store.keypoint), np.array(store.score)
    cfg = config(random_move=True, scale_range_train=[1.0, 3.0])
    for train in (True, False):
        ds = ActionDataset(store, cfg, train=train, seed=1)
        for epoch in range(5):
            ds.set_epoch(epoch)
            for i in range(len(ds)):
                ds[i]
    np.testing.assert_array_equal(store.keypoint, keypoint)
    np.testing.assert_array_equal(store.score, score)
    # And the file on disk still gives the original data.
    assert_store_matches(load_store(path, use_cache=False), tiny_dataset())
