"""From videos to keypoints, datasets, predictions and rendered videos, with the stand-in estimator
(lib/video/synthetic_video.py): real video files, decoded by OpenCV, whose frames carry the keypoints
they show. The real estimators are tested by `make test-video` (tests/test_video_backends.py)."""
import csv
import importlib.util
import json

import numpy as np
import pytest

from lib.cli import run_main
from lib.data import synthetic
from lib.data.labels import class_names
from lib.video.frames import FrameSource
from lib.video.synthetic_video import write_video
from lib.video.tracking import PersonTracker, stack_tracks
from video_helpers import TINY, load_script

cv2 = pytest.importorskip("cv2")
HEIGHT = 180  # the videos are 320 x 180, the pickle's keypoints 1920 x 1080 pixels
extract_poses = load_script("deployment/extract_poses.py")
infer_action = load_script("deployment/infer_action.py")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """20 synthetic samples (2 of each of the demo's 10 actions), their pickle, and one .mp4 each."""
    tmp = tmp_path_factory.mktemp("video")
    data = synthetic.generate("demo", seed=5, num_samples=20)
    synthetic.write_pickle(data, tmp / "truth.pkl")
    for i, ann in enumerate(data["annotations"]):
        write_video(ann, i, tmp / "videos" / f"{ann['frame_dir']}.mp4", HEIGHT)
    return {"tmp": tmp, "data": data, "pickle": tmp / "truth.pkl", "dir": tmp / "videos",
            "backend": f"stand-in:{tmp / 'truth.pkl'}"}


@pytest.fixture(scope="module")
def extracted(videos):
    """The videos extracted once, all persons kept."""
    out = videos["tmp"] / "keypoints"
    assert run_main(extract_poses.main, ["--videos", str(videos["dir"]), "--out", str(out),
                                         "--backend", videos["backend"], "--max-persons", "4"]) == 0
    return out


def persons_of_frame(keypoint, score, t) -> list:
    """The persons present at frame t as sorted rows (x, y, score per joint), for an order-free comparison."""
    rows = [np.concatenate([keypoint[m, t], score[m, t, :, None]], axis=1).ravel()
            for m in range(len(keypoint)) if score[m, t].max() > 0]
    return sorted(rows, key=lambda r: tuple(r))


def test_extraction_recovers_every_frame_and_person(videos, extracted):
    scale = HEIGHT / 1080
    for ann in videos["data"]["annotations"]:
        npz = np.load(extracted / f"{ann['frame_dir']}.npz")
        assert tuple(npz["img_shape"]) == (HEIGHT, 320)
        assert int(npz["total_frames"]) == ann["total_frames"] == npz["keypoint"].shape[1]
        assert str(npz["frame_dir"]) == ann["frame_dir"] and float(npz["fps"]) == 30.0
        for t in range(ann["total_frames"]):
            got = persons_of_frame(npz["keypoint"], npz["keypoint_score"], t)
            want = persons_of_frame(ann["keypoint"] * scale, ann["keypoint_score"], t)
            assert len(got) == len(want), (ann["frame_dir"], t)
            np.testing.assert_allclose(np.array(got).reshape(-1), np.array(want).reshape(-1), atol=1e-3)


def test_a_second_run_skips_done_videos_and_a_broken_video_fails_alone(videos, extracted, tmp_path, capsys,
                                                                       caplog):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    capsys.readouterr()
    status = run_main(extract_poses.main, ["--videos", str(videos["dir"]), str(broken), "--out", str(extracted),
                                           "--backend", videos["backend"]])
    out = capsys.readouterr().out
    assert status == 1  # something failed
    assert "0 videos extracted, 20 skipped" in out and "1 failed" in out
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        f"cannot read video {broken}: not a video OpenCV can decode"]
    assert not (extracted / "broken.npz").exists()


def test_a_folder_of_frames_is_a_video(videos, extracted, tmp_path):
    ann = videos["data"]["annotations"][3]
    frames = tmp_path / ann["frame_dir"]
    frames.mkdir()
    for t, frame in enumerate(FrameSource(videos["dir"] / f"{ann['frame_dir']}.mp4")):
        cv2.imwrite(str(frames / f"{t:05d}.png"), frame)
    assert run_main(extract_poses.main, ["--videos", str(tmp_path), "--out", str(tmp_path / "out"),
                                         "--backend", videos["backend"], "--max-persons", "4", "--fps", "25"]) == 0
    from_folder, from_video = np.load(tmp_path / "out" / f"{ann['frame_dir']}.npz"), \
        np.load(extracted / f"{ann['frame_dir']}.npz")
    for key in ("keypoint", "keypoint_score", "img_shape"):
        np.testing.assert_array_equal(from_folder[key], from_video[key])
    assert float(from_folder["fps"]) == 25.0


def test_the_tracker_keeps_identities_when_the_detector_reorders_persons():
    rng = np.random.default_rng(0)
    base = [rng.uniform(0, 100, (17, 2)) + offset for offset in (0.0, 500.0)]  # two persons far apart
    tracker, frames = PersonTracker(max_gap=10), []
    for t in range(60):
        poses = [b + 2.0 * t for b in base]  # both walk
        scores = [np.full(17, 0.9), np.full(17, 0.5)]
        present = [0] + ([] if 20 <= t < 25 or 35 <= t < 50 else [1])  # person 1 away 5, then 15 frames
        order = present[::-1] if t % 2 else present  # the detector lists them in either order
        ids = tracker.update(np.stack([poses[p] for p in order]), np.stack([scores[p] for p in order]))
        frames.append({i: (poses[p], scores[p]) for i, p in zip(ids, order)})
        if t == 0:
            first = dict(zip(order, ids))
        assert dict(zip(order, ids))[0] == first[0]
        if 1 in order:  # person 1 keeps its track across the 5-frame gap, a new one after the 15-frame gap
            assert (dict(zip(order, ids))[1] == first[1]) == (t < 35)
    keypoint, score = stack_tracks(frames, max_persons=2)
    assert keypoint.shape == (2, 60, 17, 2)
    np.testing.assert_allclose(keypoint[0, 59], base[0] + 118.0, rtol=1e-6)  # the most confident track first
    assert (score[1, :20] == 0.5).all() and (score[1, 20:25] == 0).all()  # the longer of person 1's tracks
    assert stack_tracks([{}, {}], 2)[0].shape == (1, 2, 17, 2)  # nobody seen: one absent person


def test_video_to_dataset_to_model_to_rendered_predictions(videos, extracted, tmp_path, capsys):
    """Extraction -> dataset builder -> one epoch of training -> ONNX export -> infer_action.py --video with
    --render, and --stream; the video gives the same probabilities as its extracted keypoints."""
    from lib.data.build_dataset import main as build_dataset

    annotations = videos["data"]["annotations"]
    names = class_names(60)
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "label"])
        writer.writerows([ann["frame_dir"], names[ann["label"]]] for ann in annotations)
    pickle_path = tmp_path / "data" / "mine.pkl"
    assert run_main(build_dataset, ["--keypoints", str(extracted), "--labels", str(tmp_path / "labels.csv"),
                                    "--out", str(pickle_path), "--base-config", "configs/action/demo_synthetic.yaml"]) == 0
    config = pickle_path.with_suffix(".yaml")

    import train_action

    assert run_main(train_action.main, ["--config", str(config), "--checkpoint", str(tmp_path / "run"), *TINY]) == 0
    onnx_path = tmp_path / "mine.onnx"
    assert run_main(load_script("deployment/deployment_action.py").main,
                    ["--config", str(config), "--evaluate", str(tmp_path / "run" / "latest_epoch.bin"),
                     "--deployment", str(onnx_path), *TINY]) == 0

    ann = max(annotations, key=lambda a: a["total_frames"])
    video = videos["dir"] / f"{ann['frame_dir']}.mp4"
    windows = ["--window", "16", "--stride", "8"]
    capsys.readouterr()
    assert run_main(infer_action.main, ["--onnx", str(onnx_path), "--video", str(video), "--backend", videos["backend"],
                                        "--max-persons", "4", *windows, "--render", str(tmp_path / "out.mp4"),
                                        "--json-out"]) == 0
    from_video = json.loads(capsys.readouterr().out)
    assert run_main(infer_action.main, ["--onnx", str(onnx_path), "--keypoints",
                                        str(extracted / f"{ann['frame_dir']}.npz"), *windows, "--json-out"]) == 0
    from_keypoints = json.loads(capsys.readouterr().out)
    assert [p["frames"] for p in from_video["predictions"]] == [p["frames"] for p in from_keypoints["predictions"]]
    np.testing.assert_allclose([p["probabilities"] for p in from_video["predictions"]],
                               [p["probabilities"] for p in from_keypoints["predictions"]], atol=1e-6)
    assert sorted(from_video["predictions"][0]["probabilities"])[-1] < 1  # a real softmax over the classes
    assert len(from_video["predictions"][0]["probabilities"]) == len({names[a["label"]] for a in annotations})

    rendered = FrameSource(tmp_path / "out.mp4")
    assert sum(1 for _ in rendered) == ann["total_frames"] and rendered.fps == 30.0
    assert from_video["render"] == str(tmp_path / "out.mp4")
    timeline = cv2.imread(str(tmp_path / "out_timeline.png"))
    assert timeline is not None and timeline.shape[0] > 100

    assert run_main(infer_action.main, ["--onnx", str(onnx_path), "--stream", str(video), "--backend",
                                        videos["backend"], "--max-persons", "4", *windows, "--json-out"]) == 0
    streamed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    starts = list(range(0, ann["total_frames"] - 16 + 1, 8))
    assert [p["frames"] for p in streamed] == [[s, s + 16] for s in starts]
    assert all(p["latency_ms"] >= p["model_ms"] > 0 for p in streamed)
    for p in streamed:  # the same windows as the whole-video run: the same probabilities
        same = next(q for q in from_keypoints["predictions"] if q["frames"] == p["frames"])
        np.testing.assert_allclose(p["probabilities"], same["probabilities"], atol=1e-5)


@pytest.mark.parametrize("args, fragment", [
    (["--backend", "posenet"], "unknown pose backend 'posenet': use rtmlib[:MODE], yolo[:MODEL] or stand-in:PICKLE"),
    (["--backend", "rtmlib:fast"], "rtmlib mode 'fast' is not one of lightweight, balanced, performance"),
    (["--backend", "stand-in"], "needs the synthetic pickle"),
    (["--videos", "absent.mp4"], "not found: absent.mp4"),
])
def test_extraction_mistakes_are_one_line_errors(videos, tmp_path, args, fragment, capsys):
    base = {"--videos": str(videos["dir"]), "--backend": videos["backend"]}
    base.update(dict(zip(args[::2], args[1::2])))
    argv = [item for pair in base.items() for item in pair] + ["--out", str(tmp_path)]
    capsys.readouterr()
    assert run_main(extract_poses.main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err


def test_a_missing_backend_names_what_to_install_or_export(videos, tmp_path, capsys):
    """rtmlib not installed: its requirements file; the yolo model not exported: make yolo-pose; a .pt given
    to the yolo backend: the export command."""
    cases = [("yolo:" + str(tmp_path / "absent.onnx"), "make yolo-pose exports it"),
             ("yolo:" + str(tmp_path / "yolo11s-pose.pt"),
              f"python deployment/export_yolo_pose.py --weights {tmp_path / 'yolo11s-pose.pt'} exports it")]
    if not importlib.util.find_spec("rtmlib"):
        cases.append(("rtmlib", "pip install -r requirements-rtmlib.txt"))
    for backend, message in cases:
        assert run_main(extract_poses.main, ["--videos", str(videos["dir"]), "--out", str(tmp_path),
                                             "--backend", backend]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err