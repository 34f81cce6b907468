"""Per-person predictions (lib/deploy/persons.py, infer_action.py --per-person): which persons get a clip,
the second-person rule, the batched model call, and the command on keypoint files."""
import json

import numpy as np
import pytest
import torch

from lib.cli import run_main
from lib.config import load_yaml_config
from lib.data.keypoint_files import Keypoints, write_npz
from lib.deploy.export import export_onnx
from lib.deploy.inference import OnnxActionModel, classify_clips
from lib.deploy.persons import (MIN_PRESENCE, PARTNER_REACH, person_clips, poses_of, predict_every_person,
                                predict_persons, size)
from lib.engine.build import action_model
from video_helpers import ROOT, load_script

SMALL = ["dim_rep=16", "depth=1", "num_heads=2", "hidden_dim=32", "clip_len=16", "maxlen=16"]


def standing(x: float, y: float = 500.0, score: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """A person as 17 joints in a 40 x 160 pixel column whose centre is (x + 10, y + 80)."""
    joints = np.stack([x + 20 * (np.arange(17) % 2), y + 10 * np.arange(17)], axis=1).astype(np.float32)
    return joints, np.full(17, score, dtype=np.float32)


def scene(frames: int = 10) -> list[dict]:
    """Four tracks: 0 at x=100 and 1 at x=180 all the time, 2 far away (x=1500) all the time, 3 at x=130
    in only 2 frames (below MIN_PRESENCE)."""
    poses = []
    for t in range(frames):
        persons = {0: standing(100), 1: standing(180), 2: standing(1500)}
        if t < 2:
            persons[3] = standing(130)
        poses.append(persons)
    return poses


def test_every_person_in_the_window_gets_a_clip_with_the_nearest_other_person_within_reach_second():
    assert 2 / 10 < MIN_PRESENCE
    reach = PARTNER_REACH * size(*[np.stack(a) for a in zip(*[standing(100)] * 3)])
    assert reach == pytest.approx(1.5 * np.hypot(20, 160)) and 80 < reach < 1320
    clips = {c.track: c for c in person_clips(scene(), persons_per_clip=2)}
    assert sorted(clips) == [0, 1, 2]  # track 3 is seen in 2 of 10 frames
    first = clips[0]
    assert first.keypoint.shape == (2, 10, 17, 2) and first.score.shape == (2, 10, 17)
    assert np.array_equal(first.keypoint[0, :, 0], np.tile([100.0, 500.0], (10, 1)))
    # the nearest other person in the window: track 3 (30 px away) is seen in too few frames to be in it
    assert np.array_equal(first.keypoint[1, :, 0], np.tile([180.0, 500.0], (10, 1)))
    assert np.array_equal(clips[1].keypoint[1, :, 0], np.tile([100.0, 500.0], (10, 1)))
    assert not clips[2].keypoint[1].any()  # the nearest to track 2 (1320 px) is out of reach: zeros
    assert first.box == [100.0, 500.0, 120.0, 660.0]


def test_the_partner_is_zeros_when_nobody_else_is_there_and_absent_for_one_person_models():
    alone = [{7: standing(300)} for _ in range(6)]
    clip, = person_clips(alone, persons_per_clip=2)
    assert clip.track == 7 and not clip.keypoint[1].any() and not clip.score[1].any()
    clip, = person_clips(alone, persons_per_clip=1)
    assert clip.keypoint.shape == (1, 6, 17, 2)


def test_a_person_absent_in_some_frames_has_zeros_there():
    poses = [{0: standing(100)} if t % 2 == 0 else {} for t in range(8)]
    clip, = person_clips(poses, persons_per_clip=1)
    assert clip.score[0, 1::2].max() == 0 and clip.score[0, ::2].min() == pytest.approx(0.9)


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    """A small random-weights action model of the demo config, exported."""
    cfg = load_yaml_config(ROOT / "configs/action/demo_synthetic.yaml", overrides=[f"{s}" for s in SMALL])
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("persons") / "model.onnx"
    export_onnx(action_model(cfg).eval(), cfg, [f"class {k}" for k in range(cfg.data.action_classes)], path)
    return OnnxActionModel(path)


def test_all_persons_of_a_window_go_to_the_model_in_one_call_with_the_results_of_one_by_one(onnx_model):
    calls = []
    run = onnx_model.run
    onnx_model.run = lambda clips: calls.append(len(clips)) or run(clips)
    try:
        results = predict_persons(onnx_model, scene(16), (1080, 1920), start=32, top_k=3)
    finally:
        del onnx_model.run
    assert calls == [3] and [r["track"] for r in results] == [0, 1, 2]
    assert all(r["frames"] == [32, 48] for r in results)
    for clip, result in zip(person_clips(scene(16), 2), results):
        alone = classify_clips(onnx_model, onnx_model.clip(Keypoints(clip.keypoint, clip.score, (1080, 1920)))[None])
        np.testing.assert_allclose(result["probabilities"], alone[0]["probabilities"], atol=1e-5)
        assert result["box"] == clip.box and len(result["top"]) == 3


def test_windows_over_a_sequence_give_each_person_their_predictions(onnx_model):
    poses = scene(40)
    results = predict_every_person(onnx_model, poses, (1080, 1920), window=16, stride=8)
    # windows start at 0, 8, 16, 24 (the last one ends at 40); track 3 is seen in 2 frames of the first only
    assert [(r["frames"][0], r["track"]) for r in results] == [(s, t) for s in (0, 8, 16, 24) for t in (0, 1, 2)]


def test_the_command_on_a_keypoint_file_of_one_person_gives_one_track(onnx_model, tmp_path, capsys):
    keypoint, score = standing(400)
    keypoints = Keypoints(np.tile(keypoint, (1, 24, 1, 1)), np.tile(score, (1, 24, 1)), (1080, 1920))
    assert len(poses_of(keypoints)) == 24 and all(list(p) == [0] for p in poses_of(keypoints))
    write_npz(tmp_path / "one.npz", keypoints, "one")
    infer_action = load_script("deployment/infer_action.py")
    assert run_main(infer_action.main, ["--onnx", onnx_model.name, "--keypoints", str(tmp_path / "one.npz"),
                                        "--per-person", "--window", "16", "--stride", "8", "--json-out"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line["track"], line["frames"]) for line in lines] == [(0, [0, 16]), (0, [8, 24])]
    assert set(lines[0]) == {"track", "frames", "box", "top"}  # no frame rate: no times


@pytest.fixture(scope="module")
def pair_video(tmp_path_factory):
    """A 71-frame synthetic two-person video at 30 frames a second, and the stand-in backend that reads the
    poses its frames carry (from the pickle they come from)."""
    pytest.importorskip("cv2")
    from lib.data import synthetic
    from lib.video.synthetic_video import write_video

    tmp = tmp_path_factory.mktemp("pair")
    data = synthetic.generate("demo", seed=5, num_samples=20)
    synthetic.write_pickle(data, tmp / "truth.pkl")
    assert data["annotations"][0]["keypoint"].shape[:2] == (2, 71)
    write_video(data["annotations"][0], 0, tmp / "pair.mp4", height=180)
    return {"path": tmp / "pair.mp4", "backend": f"stand-in:{tmp / 'truth.pkl'}", "frames": 71}


def test_a_video_per_person_with_its_rendered_video_segments_and_timeline(onnx_model, pair_video, tmp_path, capsys):
    """One JSON line per person per window, the rendered video, and each person's segments in JSON, CSV and
    a picture."""
    cv2 = pytest.importorskip("cv2")
    infer_action = load_script("deployment/infer_action.py")
    out = tmp_path / "out" / "pair.mp4"
    assert run_main(infer_action.main, ["--onnx", onnx_model.name, "--video", str(pair_video["path"]),
                                        "--backend", pair_video["backend"], "--per-person",
                                        "--window", "16", "--stride", "8", "--render", str(out),
                                        "--json-out"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    starts = [0, 8, 16, 24, 32, 40, 48, 55]  # the last window ends at frame 71
    assert sorted((line["frames"][0], line["track"]) for line in lines) == [(s, t) for s in starts for t in (0, 1)]
    assert lines[0]["seconds"] == [0.0, round(16 / 30, 3)]
    frames = cv2.VideoCapture(str(out))
    assert int(frames.get(cv2.CAP_PROP_FRAME_COUNT)) == 71
    segments = json.loads(out.with_name("pair_segments.json").read_text())
    assert {s["track"] for s in segments["segments"]} == {0, 1} and segments["per_person"] is True
    for track in (0, 1):  # each person's segments cover their windows, from the first frame to the last
        own = [s for s in segments["segments"] if s["track"] == track]
        assert own[0]["first_frame"] == 0 and own[-1]["last_frame"] == 70
    assert out.with_name("pair_segments.csv").read_text().splitlines()[0].startswith("track,class,first_frame")
    assert cv2.imread(str(out.with_name("pair_segments.png"))) is not None
    assert not out.with_name("pair_timeline.png").exists()  # the probability timeline is the scene's
