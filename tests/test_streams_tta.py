"""Input streams (bone, motion), test-time augmentation (num_clips, flip_test) and score fusion
(evaluate_action.py --save-scores / --ensemble).

Expected values are computed here independently: bones from the H36M tree joint by joint, motion frame by
frame, the left/right mirror from the joint names, fused scores from per-clip softmaxes and fused ensembles
from the saved probabilities with numpy. The command-line checks run the entry scripts as subprocesses
(cwd = the project root), several at a time; everything else is called in-process.
"""
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lib import skeleton
from lib.config import load_yaml_config
from lib.data import synthetic
from lib.data.dataset import ActionDataset
from lib.data.preprocess import STREAMS, make_clip, to_stream
from lib.data.pyskl import load_store
from lib.engine.evaluate import clip_scores, eval_loader, flip_clips, predict
from lib.engine.build import action_model

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/action/train_NTU60_xsub_small.yaml"
HYPER = "hyper_config/method2/manual_joint_label1.yaml"
FLAGS = ["--config", CONFIG, "--hyper_cfg", HYPER]
TINY = ["dim_rep=16", "depth=1", "num_heads=2", "clip_len=8", "maxlen=8", "hidden_dim=32", "num_workers=0",
        "device=cpu"]
CLIP_LEN = 8
TIMEOUT = 180
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
PARALLEL = max(2, min(4, os.cpu_count() or 2))

NAMES = skeleton.H36M_JOINT_NAMES


def _mirror_name(name: str) -> str:
    if name.startswith("left "):
        return "right " + name[5:]
    if name.startswith("right "):
        return "left " + name[6:]
    return name


MIRROR = [NAMES.index(_mirror_name(n)) for n in NAMES]  # from the names, not from lib.skeleton.H36M_MIRROR
CENTRE = [j for j in range(len(NAMES)) if MIRROR[j] == j]
RIGHT = [j for j, n in enumerate(NAMES) if n.startswith("right ")]


# ---------------------------------------------------------------------------------------------------------
# Helpers


def sets(*assignments) -> list[str]:
    argv = []
    for assignment in assignments:
        argv += ["--set", assignment]
    return argv


def run_script(script, argv):
    return subprocess.run([sys.executable, script, *map(str, argv)], cwd=ROOT, capture_output=True, text=True,
                          timeout=TIMEOUT, env=ENV)


def run_all(commands: dict) -> dict:
    """{name: (script, argv)} -> {name: CompletedProcess}, several processes at a time."""
    with ThreadPoolExecutor(PARALLEL) as pool:
        futures = {name: pool.submit(run_script, script, argv) for name, (script, argv) in commands.items()}
        return {name: future.result() for name, future in futures.items()}


def assert_ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, f"exit {result.returncode}, stderr:\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


def read_npz(path) -> dict:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def my_flip(x: np.ndarray) -> np.ndarray:
    """Mirror [..., 17, C]: every joint takes its mirror image's values, x negated."""
    out = x[..., MIRROR, :].copy()
    out[..., 0] = -out[..., 0]
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def topk_percent(probabilities: np.ndarray, labels: np.ndarray, k: int) -> float:
    ranks = (probabilities > probabilities[np.arange(len(labels)), labels][:, None]).sum(axis=1)
    return 100.0 * float(np.mean(ranks < k))


def fused_metrics(probabilities: np.ndarray, labels: np.ndarray) -> dict:
    true = probabilities[np.arange(len(labels)), labels]
    return {"top1": topk_percent(probabilities, labels, 1), "top5": topk_percent(probabilities, labels, 5),
            "loss": float(-np.mean(np.log(true))), "samples": len(labels)}


def assert_metrics_close(actual: dict, expected: dict, keys=("top1", "top5", "loss", "samples")):
    for key in keys:
        assert actual[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-5), (key, actual[key], expected[key])


def random_pose(rng, shape=(2, 6)) -> np.ndarray:
    clip = rng.uniform(-1, 1, (*shape, 17, 3)).astype(np.float32)
    clip[..., 2] = rng.uniform(0, 1, clip.shape[:-1])
    return clip


def symmetric_pose(rng, persons=2, frames=CLIP_LEN) -> np.ndarray:
    """A left-right symmetric clip: centre joints at x = 0, each left joint the mirror image (x negated,
    same y and confidence) of its right joint."""
    clip = np.zeros((persons, frames, 17, 3), dtype=np.float32)
    clip[..., CENTRE, 1] = rng.uniform(-1, 1, (persons, frames, len(CENTRE)))
    clip[..., CENTRE, 2] = rng.uniform(0.2, 1, (persons, frames, len(CENTRE)))
    clip[..., RIGHT, :] = rng.uniform(-1, 1, (persons, frames, len(RIGHT), 3))
    clip[..., RIGHT, 2] = np.abs(clip[..., RIGHT, 2])
    for j in RIGHT:
        clip[..., MIRROR[j], :] = clip[..., j, :]
        clip[..., MIRROR[j], 0] = -clip[..., j, 0]
    return clip


# ---------------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """A tiny synthetic pickle (20 train / 20 val), two checkpoints with different perturbed weights."""
    tmp = tmp_path_factory.mktemp("streams_tta")
    data = synthetic.generate("demo", seed=0, num_samples=40)
    synthetic.write_pickle(data, tmp / "tiny.pkl")
    store = load_store(tmp / "tiny.pkl")  # builds the packed cache before any subprocess reads it
    overrides = [f"data_root={tmp}", "dataset=tiny", *TINY]

    def make_cfg(*extra):
        return load_yaml_config(ROOT / CONFIG, ROOT / HYPER, overrides=[*overrides, *extra])

    cfg = make_cfg()
    checkpoints = {}
    for name, seed in (("A", 1), ("B", 2)):
        generator = torch.Generator().manual_seed(seed)
        model = action_model(cfg)
        with torch.no_grad():  # predictions that depend on the input: move every weight and the BN statistics
            for p in model.parameters():
                p.add_(0.2 * torch.randn(p.shape, generator=generator))
            model.head.bn.running_mean.normal_(0, 0.2, generator=generator)
            model.head.bn.running_var.uniform_(0.5, 1.5, generator=generator)
        checkpoints[name] = tmp / f"model_{name}.bin"
        torch.save({"model": model.state_dict()}, checkpoints[name])
    return {"tmp": tmp, "data": data, "store": store, "overrides": overrides, "make_cfg": make_cfg, "cfg": cfg,
            "ckpt": checkpoints}


def load_model(setup, name="A", cfg=None, path=None):
    model = action_model(cfg or setup["cfg"])
    state = torch.load(path or setup["ckpt"][name], map_location="cpu", weights_only=True)["model"]
    model.load_state_dict(state)
    return model.eval()


def model_logits(model, clips: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Logits of clips [S, 2, T, 17, 3], batch by batch."""
    out = []
    with torch.no_grad():
        for start in range(0, len(clips), batch_size):
            out.append(model(torch.from_numpy(np.ascontiguousarray(clips[start:start + batch_size]))))
    return torch.cat(out).numpy()


def evaluate_argv(setup, ckpt, out_dir, *assignments, extra=()):
    return [*FLAGS, "--evaluate", ckpt, "--out-dir", out_dir, *extra,
            *sets(*setup["overrides"], *assignments)]


@pytest.fixture(scope="module")
def evaluations(setup) -> dict:
    """The evaluations that several tests read, run side by side: checkpoint A with the published protocol
    (defaults; and with num_clips=1 flip_test=false spelled out), with num_clips=3 and flip_test, on the
    bone stream; checkpoint B on joints. Plain A, bone A and B also save their scores."""
    tmp = setup["tmp"] / "eval"
    a, b = setup["ckpt"]["A"], setup["ckpt"]["B"]
    commands = {
        "plain": evaluate_argv(setup, a, tmp / "plain", extra=["--save-scores", tmp / "scores" / "A.npz"]),
        "explicit": evaluate_argv(setup, a, tmp / "explicit", "num_clips=1", "flip_test=false"),
        "tta": evaluate_argv(setup, a, tmp / "tta", "num_clips=3", "flip_test=true"),
        "bone": evaluate_argv(setup, a, tmp / "bone", "stream=bone",
                              extra=["--save-scores", tmp / "scores" / "A_bone.npz"]),
        "B": evaluate_argv(setup, b, tmp / "B", extra=["--save-scores", tmp / "scores" / "B.npz"]),
    }
    results = run_all({name: ("evaluate_action.py", argv) for name, argv in commands.items()})
    for result in results.values():
        assert_ok(result)
    return {"dir": {name: tmp / name for name in commands}, "scores": tmp / "scores", "results": results}


# ---------------------------------------------------------------------------------------------------------
# 1. Streams by hand


def test_skeleton_tree_and_mirror_match_the_joint_names():
    parent = {NAMES[j]: (NAMES[p] if p >= 0 else None) for j, p in enumerate(skeleton.H36M_PARENTS)}
    for chain in (["right ankle", "right knee", "right hip", "pelvis"], ["left ankle", "left knee", "left hip", "pelvis"],
                  ["head", "nose", "thorax", "spine", "pelvis"],
                  ["left wrist", "left elbow", "left shoulder", "thorax"],
                  ["right wrist", "right elbow", "right shoulder", "thorax"]):
        for child, par in zip(chain, chain[1:]):
            assert parent[child] == par, (child, parent[child], par)
    assert parent["pelvis"] is None
    assert list(skeleton.H36M_MIRROR) == MIRROR
    # The tree is mirror-symmetric: the parent of a joint's mirror image is the mirror image of its parent.
    for j, p in enumerate(skeleton.H36M_PARENTS):
        assert skeleton.H36M_PARENTS[MIRROR[j]] == (MIRROR[p] if p >= 0 else -1)


def test_to_stream_by_hand():
    rng = np.random.default_rng(0)
    persons, frames = 2, 5
    clip = random_pose(rng, (persons, frames))
    original = clip.copy()

    bone_expected = clip.copy()
    motion_expected = clip.copy()
    for m in range(persons):
        for t in range(frames):
            for v, p in enumerate(skeleton.H36M_PARENTS):
                if p >= 0:
                    bone_expected[m, t, v, :2] = clip[m, t, v, :2] - clip[m, t, p, :2]
                motion_expected[m, t, v, :2] = (clip[m, t + 1, v, :2] - clip[m, t, v, :2]) if t < frames - 1 else 0.0
    bone_motion_expected = bone_expected.copy()
    for t in range(frames):
        bone_motion_expected[:, t, :, :2] = (bone_expected[:, t + 1, :, :2] - bone_expected[:, t, :, :2]
                                             if t < frames - 1 else 0.0)

    out = {s: to_stream(clip, s) for s in STREAMS}
    assert set(STREAMS) == {"joint", "bone", "joint_motion", "bone_motion"}
    np.testing.assert_array_equal(clip, original)  # the input is left alone
    assert all(o is not clip and o.shape == clip.shape for o in out.values())
    np.testing.assert_array_equal(out["joint"], clip)
    np.testing.assert_allclose(out["bone"], bone_expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(out["joint_motion"], motion_expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(out["bone_motion"], bone_motion_expected, rtol=0, atol=1e-6)
    # The pelvis keeps its coordinates in the bone stream; every stream keeps the confidence channel.
    np.testing.assert_array_equal(out["bone"][..., 0, :], clip[..., 0, :])
    for s in STREAMS:
        np.testing.assert_array_equal(out[s][..., 2], clip[..., 2])
    np.testing.assert_array_equal(out["joint_motion"][:, -1, :, :2], 0.0)
    np.testing.assert_array_equal(out["bone_motion"][:, -1, :, :2], 0.0)
    # A known pose: x = joint number, y = 10 x joint number. Its bones are (v - parent) (1, 10).
    pose = np.zeros((1, 1, 17, 3), dtype=np.float32)
    pose[..., 0] = np.arange(17)
    pose[..., 1] = 10 * np.arange(17)
    bones = to_stream(pose, "bone")[0, 0]
    for v, name in enumerate(NAMES):
        p = skeleton.H36M_PARENTS[v]
        expected = (v, 10 * v) if p < 0 else (v - p, 10 * (v - p))
        assert tuple(bones[v, :2]) == expected, name
    with pytest.raises(ValueError):
        to_stream(clip, "velocity")


@pytest.mark.parametrize("stream", ["bone", "joint_motion", "bone_motion"])
def test_make_clip_applies_the_stream_last(setup, stream):
    annotations = setup["data"]["annotations"]
    for ann in annotations[:3]:
        args = (ann["keypoint"], ann["keypoint_score"], ann["img_shape"], CLIP_LEN)
        joint = make_clip(*args, stream="joint")
        actual = make_clip(*args, stream=stream)
        assert actual.dtype == np.float32 and actual.shape == (2, CLIP_LEN, 17, 3)
        np.testing.assert_allclose(actual, to_stream(joint, stream), rtol=0, atol=1e-6)
        assert not np.allclose(actual, joint)
        # The training pipeline too (random resampling, random_move, random scale), with the same draws.
        train_kwargs = dict(random_move_on=True, scale_range=(1.0, 3.0))
        joint = make_clip(*args, rng=np.random.default_rng(5), stream="joint", **train_kwargs)
        actual = make_clip(*args, rng=np.random.default_rng(5), stream=stream, **train_kwargs)
        np.testing.assert_allclose(actual, to_stream(joint, stream), rtol=0, atol=1e-6)


def test_dataset_serves_the_configured_stream(setup):
    joint = ActionDataset(setup["store"], setup["cfg"].data, train=False)
    for stream in ("bone", "bone_motion"):
        cfg = setup["make_cfg"](f"stream={stream}")
        assert cfg.data.stream == stream
        dataset = ActionDataset(setup["store"], cfg.data, train=False)
        for i in (0, 7):
            clip, label = dataset[i]
            np.testing.assert_allclose(clip, to_stream(joint[i][0], stream), rtol=0, atol=1e-6)
            assert label == joint[i][1]


# ---------------------------------------------------------------------------------------------------------
# 2. Flip


def test_flip_clips_mirrors_by_joint_names_and_is_an_involution():
    rng = np.random.default_rng(1)
    x = random_pose(rng, (3, 2, 4))
    flipped = flip_clips(torch.from_numpy(x))
    np.testing.assert_array_equal(flipped.numpy(), my_flip(x))
    assert torch.equal(flip_clips(flipped), torch.from_numpy(x))
    assert not torch.equal(flipped, torch.from_numpy(x))
    np.testing.assert_array_equal(x, random_pose(np.random.default_rng(1), (3, 2, 4)))  # input untouched
    # A 6-D batch of several clips flips the same way.
    x6 = random_pose(rng, (2, 3, 2, 4))
    np.testing.assert_array_equal(flip_clips(torch.from_numpy(x6)).numpy(), my_flip(x6))


def test_flipping_a_symmetric_pose_changes_nothing():
    clip = symmetric_pose(np.random.default_rng(2))
    assert not np.allclose(clip[..., 1, :], clip[..., 4, :])  # not trivially symmetric: hips differ in x
    assert torch.equal(flip_clips(torch.from_numpy(clip)), torch.from_numpy(clip))


@pytest.mark.parametrize("stream", STREAMS)
def test_flip_commutes_with_the_streams(stream):
    clip = random_pose(np.random.default_rng(3), (2, 7))
    flip_then_stream = to_stream(flip_clips(torch.from_numpy(clip)).numpy(), stream)
    stream_then_flip = flip_clips(torch.from_numpy(to_stream(clip, stream))).numpy()
    np.testing.assert_allclose(flip_then_stream, stream_then_flip, rtol=0, atol=1e-6)


def test_flip_test_on_a_symmetric_sample_changes_nothing(setup):
    model = load_model(setup)
    rng = np.random.default_rng(4)
    symmetric = torch.from_numpy(np.stack([symmetric_pose(rng) for _ in range(3)]))
    with torch.no_grad():
        plain = clip_scores(model, symmetric, flip=False)
        flipped = clip_scores(model, symmetric, flip=True)
        logits = model(symmetric)
        log_probs = logits.log_softmax(dim=1)
    assert torch.equal(plain, logits)  # one clip, no flip: the logits themselves
    torch.testing.assert_close(flipped, log_probs, rtol=0, atol=1e-5)
    # An asymmetric sample: flip_test averages the two views, which differ.
    asymmetric = torch.from_numpy(random_pose(rng, (3, 2, CLIP_LEN)))
    with torch.no_grad():
        fused = clip_scores(model, asymmetric, flip=True)
        p = model(asymmetric).softmax(dim=1)
        p_mirror = model(torch.from_numpy(my_flip(asymmetric.numpy()))).softmax(dim=1)
    torch.testing.assert_close(fused, ((p + p_mirror) / 2).log(), rtol=0, atol=1e-5)
    assert (fused - p.log()).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------------------
# 3. Test-time augmentation


def test_single_clip_without_flip_predicts_the_plain_logits_bit_for_bit(setup):
    cfg = setup["cfg"]
    assert cfg.data.num_clips == 1 and cfg.data.flip_test is False  # the published protocol by default
    model = load_model(setup)
    dataset = ActionDataset(setup["store"], cfg.data, train=False)
    loader = eval_loader(dataset, cfg, torch.device("cpu"))
    scores, labels = predict(model, loader, torch.device("cpu"))
    clips = np.stack([dataset[i][0] for i in range(len(dataset))])
    expected = model_logits(model, clips, cfg.train.batch_size)
    assert scores.dtype == torch.float32 and scores.shape == (len(dataset), cfg.data.action_classes)
    assert np.array_equal(scores.numpy(), expected)
    np.testing.assert_array_equal(labels.numpy(), dataset.labels)


def test_num_clips_gives_fixed_resampled_clips(setup):
    store = setup["store"]
    single = ActionDataset(store, setup["cfg"].data, train=False)
    cfg3 = setup["make_cfg"]("num_clips=3")
    three = ActionDataset(store, cfg3.data, train=False)
    again = ActionDataset(store, setup["make_cfg"]("num_clips=3").data, train=False)
    four = ActionDataset(store, setup["make_cfg"]("num_clips=4").data, train=False)
    other_seed = ActionDataset(store, cfg3.data, train=False, seed=1)
    assert len(three) == len(single) == 20
    for i in range(len(three)):
        assert store.raw_sample(int(three.indices[i]))[0].shape[1] > CLIP_LEN
        clips, label = three[i]
        assert clips.shape == (3, 2, CLIP_LEN, 17, 3) and clips.dtype == np.float32
        assert label == single[i][1]
        np.testing.assert_array_equal(clips[0], single[i][0])  # clip 0: the deterministic one
        for a, b in ((0, 1), (0, 2), (1, 2)):
            assert not np.allclose(clips[a], clips[b]), (i, a, b)
        np.testing.assert_array_equal(three[i][0], clips)  # the same on every call
        np.testing.assert_array_equal(again[i][0], clips)  # and in another dataset object
        np.testing.assert_array_equal(four[i][0][:3], clips)  # clip k does not depend on num_clips
        seeded = other_seed[i][0]
        np.testing.assert_array_equal(seeded[0], clips[0])
        assert not np.allclose(seeded[1], clips[1])  # the random clips follow the seed


@pytest.mark.parametrize("flip", [False, True])
def test_fused_score_is_log_of_mean_softmax(setup, flip):
    cfg3 = setup["make_cfg"]("num_clips=3", "batch_size=8")
    model = load_model(setup)
    dataset = ActionDataset(setup["store"], cfg3.data, train=False)
    loader = eval_loader(dataset, cfg3, torch.device("cpu"))
    scores, labels = predict(model, loader, torch.device("cpu"), flip=flip)
    expected = []
    for i in range(len(dataset)):
        clips = dataset[i][0]
        views = np.concatenate([clips, my_flip(clips)]) if flip else clips
        probabilities = softmax(model_logits(model, views).astype(np.float64))
        expected.append(np.log(probabilities.mean(axis=0)))
    expected = np.stack(expected)
    np.testing.assert_allclose(scores.numpy(), expected, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(labels.numpy(), dataset.labels)
    # Not just the first clip's log-probabilities.
    first = np.log(softmax(model_logits(model, np.stack([dataset[i][0][0] for i in range(len(dataset))]))))
    assert np.abs(expected - first).max() > 1e-3


def test_evaluate_action_protocol_and_tta_metrics(setup, evaluations):
    dirs = evaluations["dir"]
    plain, explicit, tta = (read_json(dirs[name] / "metrics.json") for name in ("plain", "explicit", "tta"))
    assert plain["protocol"] == {"num_clips": 1, "flip_test": False, "stream": "joint"}
    assert explicit["protocol"] == plain["protocol"]
    assert tta["protocol"] == {"num_clips": 3, "flip_test": True, "stream": "joint"}
    # num_clips 1 without flip is the plain evaluation: same metrics, same scores.
    for key in ("top1", "top5", "mean_class_accuracy", "loss", "samples", "split"):
        assert explicit[key] == plain[key], key
    plain_npz, explicit_npz = read_npz(dirs["plain"] / "predictions.npz"), read_npz(dirs["explicit"] / "predictions.npz")
    np.testing.assert_array_equal(explicit_npz["logits"], plain_npz["logits"])
    # ... and its scores are the model's logits, its metrics those of the logits.
    model = load_model(setup)
    dataset = ActionDataset(setup["store"], setup["cfg"].data, train=False)
    clips = np.stack([dataset[i][0] for i in range(len(dataset))])
    logits = model_logits(model, clips)
    np.testing.assert_array_equal(plain_npz["frame_dir"], dataset.frame_dirs)
    np.testing.assert_array_equal(plain_npz["label"], dataset.labels)
    np.testing.assert_allclose(plain_npz["logits"], logits, rtol=0, atol=1e-5)
    assert_metrics_close(plain, fused_metrics(softmax(logits.astype(np.float64)), dataset.labels))
    # TTA: the scores are the log of the mean softmax over 3 clips x 2 views, computed here.
    dataset3 = ActionDataset(setup["store"], setup["make_cfg"]("num_clips=3").data, train=False)
    fused = []
    for i in range(len(dataset3)):
        clips = dataset3[i][0]
        fused.append(softmax(model_logits(model, np.concatenate([clips, my_flip(clips)])).astype(np.float64)).mean(0))
    fused = np.stack(fused)
    tta_npz = read_npz(dirs["tta"] / "predictions.npz")
    np.testing.assert_allclose(tta_npz["logits"], np.log(fused), rtol=0, atol=1e-5)
    np.testing.assert_allclose(tta_npz["probabilities"], fused, rtol=0, atol=1e-5)
    assert_metrics_close(tta, fused_metrics(fused, dataset3.labels))
    assert np.abs(tta_npz["probabilities"] - plain_npz["probabilities"]).max() > 1e-3


# ---------------------------------------------------------------------------------------------------------
# 4. Streams through training, evaluation, export and inference


def test_streams_train_evaluate_export_and_infer(setup, evaluations):
    tmp = setup["tmp"] / "streams"
    train_common = [*FLAGS]
    first = run_all({
        "train_bone": ("train_action.py", [*train_common, "--checkpoint", tmp / "run_bone",
                                           *sets(*setup["overrides"], "stream=bone", "quickdebug=true",
                                                 "epochs=1", "batch_size=4")]),
        "train_motion": ("train_action.py", [*train_common, "--checkpoint", tmp / "run_motion",
                                             *sets(*setup["overrides"], "stream=bone_motion", "quickdebug=true",
                                                   "epochs=1", "batch_size=4", "num_clips=2", "flip_test=true")]),
        "export": ("deployment/deployment_action.py",
                   [*FLAGS, "--evaluate", setup["ckpt"]["A"], "--deployment", tmp / "bone.onnx",
                    *sets(*setup["overrides"], "stream=bone")]),
    })
    for result in first.values():
        assert_ok(result)
    for run, stream in (("run_bone", "bone"), ("run_motion", "bone_motion")):
        saved = yaml.safe_load((tmp / run / "config.yaml").read_text())
        assert saved["data"]["stream"] == stream
        records = [json.loads(line) for line in (tmp / run / "metrics.jsonl").read_text().splitlines() if line]
        assert len(records) == 1 and np.isfinite(records[0]["val_loss"])
        assert (tmp / run / "best_epoch.bin").is_file()

    # The ONNX model carries the stream, and inference applies it.
    import onnx

    from lib.deploy.inference import OnnxActionModel

    metadata = {p.key: p.value for p in onnx.load(str(tmp / "bone.onnx")).metadata_props}
    assert metadata["stream"] == "bone"
    assert json.loads(metadata["config"])["data"]["stream"] == "bone"
    assert OnnxActionModel(tmp / "bone.onnx").settings.stream == "bone"

    bone_npz = read_npz(evaluations["scores"] / "A_bone.npz")
    joint_npz = read_npz(evaluations["scores"] / "A.npz")
    samples = [str(bone_npz["frame_dir"][i]) for i in (0, 5)]
    second = run_all({
        "eval_bone": ("evaluate_action.py", evaluate_argv(setup, tmp / "run_bone" / "best_epoch.bin",
                                                          tmp / "run_bone_eval", "stream=bone")),
        **{f"infer_{s}": ("deployment/infer_action.py", ["--onnx", tmp / "bone.onnx", "--pickle",
                                                         setup["tmp"] / "tiny.pkl", "--sample", s, "--json-out"])
           for s in samples},
    })
    for result in second.values():
        assert_ok(result)
    metrics = read_json(tmp / "run_bone_eval" / "metrics.json")
    assert metrics["protocol"] == {"num_clips": 1, "flip_test": False, "stream": "bone"}
    assert metrics["samples"] == 20
    # The trained checkpoint's scores are its logits on bone clips (joints made into bones here).
    cfg_bone = setup["make_cfg"]("stream=bone")
    trained = load_model(setup, cfg=cfg_bone, path=tmp / "run_bone" / "best_epoch.bin")
    joint_dataset = ActionDataset(setup["store"], setup["cfg"].data, train=False)
    joint_clips = np.stack([joint_dataset[i][0] for i in range(len(joint_dataset))])
    bone_clips = np.stack([to_stream(c, "bone") for c in joint_clips])
    eval_npz = read_npz(tmp / "run_bone_eval" / "predictions.npz")
    np.testing.assert_allclose(eval_npz["logits"], model_logits(trained, bone_clips), rtol=0, atol=1e-5)
    assert np.abs(eval_npz["logits"] - model_logits(trained, joint_clips)).max() > 1e-4

    for s in samples:
        out = json.loads(second[f"infer_{s}"].stdout.strip().splitlines()[-1])
        (prediction,) = out["predictions"]
        row = list(bone_npz["frame_dir"]).index(s)
        probabilities = np.asarray(prediction["probabilities"])
        assert out["label"] == int(bone_npz["label"][row])
        assert np.abs(probabilities - bone_npz["probabilities"][row]).max() <= 1e-4
        assert np.abs(probabilities - joint_npz["probabilities"][row]).max() > 1e-3  # the stream matters


# ---------------------------------------------------------------------------------------------------------
# 5. Fusion


def ensemble_argv(setup, out_dir, *paths, weights=None):
    argv = [*FLAGS, "--ensemble", *paths, "--out-dir", out_dir, *sets(*setup["overrides"])]
    return argv + (["--weights", *weights] if weights is not None else [])


def test_save_scores_and_ensemble(setup, evaluations):
    scores, dirs, tmp = evaluations["scores"], evaluations["dir"], setup["tmp"] / "fusion"
    tmp.mkdir()
    a_path, b_path = scores / "A.npz", scores / "B.npz"
    a, b = read_npz(a_path), read_npz(b_path)
    # --save-scores is a copy of predictions.npz.
    assert a_path.read_bytes() == (dirs["plain"] / "predictions.npz").read_bytes()
    assert set(a) >= {"frame_dir", "label", "logits", "probabilities"}
    np.testing.assert_array_equal(a["frame_dir"], b["frame_dir"])
    np.testing.assert_array_equal(a["label"], b["label"])

    # B with its samples in another order.
    permutation = np.random.default_rng(0).permutation(len(b["label"]))
    assert not np.array_equal(permutation, np.arange(len(permutation)))
    np.savez(tmp / "B_shuffled.npz", **{key: value[permutation] for key, value in b.items()})
    results = run_all({
        "weighted": ("evaluate_action.py", ensemble_argv(setup, tmp / "weighted", a_path, b_path, weights=[2, 1])),
        "self": ("evaluate_action.py", ensemble_argv(setup, tmp / "self", a_path, a_path)),
        "shuffled": ("evaluate_action.py",
                     ensemble_argv(setup, tmp / "shuffled", a_path, tmp / "B_shuffled.npz", weights=[2, 1])),
    })
    for result in results.values():
        assert_ok(result)

    fused = (2 * a["probabilities"].astype(np.float64) + b["probabilities"]) / 3
    expected = fused_metrics(fused, a["label"])
    weighted = read_json(tmp / "weighted" / "metrics.json")
    assert_metrics_close(weighted, expected)
    assert weighted["weights"] == [2.0, 1.0]
    assert weighted["ensemble"] == [str(a_path), str(b_path)]
    for artefact in ("per_class.csv", "confusion.png", "predictions.npz"):
        assert (tmp / "weighted" / artefact).is_file(), artefact
    out = read_npz(tmp / "weighted" / "predictions.npz")
    rows = [list(a["frame_dir"]).index(f) for f in out["frame_dir"]]
    assert sorted(rows) == list(range(len(rows)))
    np.testing.assert_array_equal(out["label"], a["label"][rows])
    np.testing.assert_allclose(out["probabilities"], fused[rows], rtol=0, atol=1e-6)
    # The weights matter: the equal-weight fusion gives other probabilities.
    assert np.abs(fused - (a["probabilities"] + b["probabilities"]) / 2).max() > 1e-3
    # per_class.csv counts the fused predictions.
    import csv

    with open(tmp / "weighted" / "per_class.csv") as f:
        per_class = list(csv.DictReader(f))
    assert sum(int(r["samples"]) for r in per_class) == len(a["label"])
    assert sum(int(r["correct"]) for r in per_class) == round(expected["top1"] * len(a["label"]) / 100)

    # A file fused with itself is the file's own evaluation.
    own = read_json(dirs["plain"] / "metrics.json")
    fused_self = read_json(tmp / "self" / "metrics.json")
    assert_metrics_close(fused_self, own, keys=("top1", "top5", "mean_class_accuracy", "loss", "samples"))

    # Samples in another order are aligned by frame_dir.
    shuffled = read_json(tmp / "shuffled" / "metrics.json")
    assert_metrics_close(shuffled, weighted, keys=("top1", "top5", "mean_class_accuracy", "loss", "samples"))
    out_shuffled = read_npz(tmp / "shuffled" / "predictions.npz")
    np.testing.assert_array_equal(out_shuffled["frame_dir"], out["frame_dir"])
    np.testing.assert_allclose(out_shuffled["probabilities"], out["probabilities"], rtol=0, atol=1e-7)


def run_evaluate_in_process(argv, capsys, monkeypatch):
    """evaluate_action.py's main in this process, as `python evaluate_action.py ARGV` runs it (run_main
    turns a user error into one line on stderr and exit status 2); its status and output."""
    import evaluate_action
    from lib.cli import run_main

    monkeypatch.chdir(ROOT)
    capsys.readouterr()
    status = run_main(evaluate_action.main, [str(a) for a in argv])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(argv, status, captured.out, captured.err)


def test_ensemble_errors_are_one_line(setup, evaluations, capsys, monkeypatch):
    """Run in this process, for speed; tests/test_vis.py::test_bad_input_in_a_real_process checks that a
    real process prints such an error as one line, without a traceback."""
    scores, tmp = evaluations["scores"], setup["tmp"] / "fusion_errors"
    tmp.mkdir()
    a_path = scores / "A.npz"
    b = read_npz(scores / "B.npz")
    # Other samples: one frame_dir renamed; and one sample fewer.
    renamed = dict(b, frame_dir=np.array([*b["frame_dir"][:-1], "S999C001P001R001A001"]))
    np.savez(tmp / "renamed.npz", **renamed)
    np.savez(tmp / "fewer.npz", **{key: value[:-1] for key, value in b.items()})
    # Other labels for the same samples.
    relabelled = dict(b, label=b["label"].copy())
    relabelled["label"][3] = (relabelled["label"][3] + 1) % 60
    np.savez(tmp / "relabelled.npz", **relabelled)
    # Another class count.
    np.savez(tmp / "classes.npz", **dict(b, probabilities=b["probabilities"][:, :59], logits=b["logits"][:, :59]))
    (tmp / "not_scores.npz").write_text("not an npz file")
    cases = {
        "renamed": (ensemble_argv(setup, tmp / "out_renamed", a_path, tmp / "renamed.npz"), ("other samples",)),
        "fewer": (ensemble_argv(setup, tmp / "out_fewer", a_path, tmp / "fewer.npz"), ("other samples",)),
        "labels": (ensemble_argv(setup, tmp / "out_labels", a_path, tmp / "relabelled.npz"), ("other labels",)),
        "weights": (ensemble_argv(setup, tmp / "out_weights", a_path, scores / "B.npz", weights=[1, 2, 3]),
                    ("--weights", "3", "2")),
        "missing": (ensemble_argv(setup, tmp / "out_missing", a_path, tmp / "nowhere.npz"),
                    ("not found", "nowhere.npz")),
        "classes": (ensemble_argv(setup, tmp / "out_classes", a_path, tmp / "classes.npz"), ("classes",)),
        "not_scores": (ensemble_argv(setup, tmp / "out_not_scores", a_path, tmp / "not_scores.npz"),
                       ("not_scores.npz",)),
    }
    for name, (argv, fragments) in cases.items():
        assert_one_line_error(run_evaluate_in_process(argv, capsys, monkeypatch), *fragments)
        assert not (tmp / f"out_{name}").exists(), name  # nothing written
