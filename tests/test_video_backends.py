"""The real pose backends on real images: run by `make test-video`, which first exports the yolo backend's
model (make yolo-pose). Skipped where that model is missing (a fresh clone, CI). The photographs are
Ultralytics' own samples, taken from its wheel on PyPI (downloaded once into ~/.cache; skipped, saying why,
where the package index cannot be reached)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from video_helpers import ROOT, TINY, load_script  # noqa: E402

from benchmarks.common import wheel_file  # noqa: E402
from lib.cli import run_main  # noqa: E402
from lib.video.estimators import load_estimator  # noqa: E402
from lib.video.frames import FrameSource  # noqa: E402
from lib.video.yolo_pose import DEFAULT_MODEL  # noqa: E402

if not DEFAULT_MODEL.is_file():
    pytest.skip(f"no YOLO pose model at {DEFAULT_MODEL.relative_to(ROOT)} (make yolo-pose exports it; "
                "make test-video runs these tests)", allow_module_level=True)

RECORDED = Path(__file__).parent / "data" / "yolo11n_pose_ultralytics.json"  # tests/data/record_ultralytics_yolo.py


def photograph(name: str) -> Path:
    try:
        return wheel_file("ultralytics==8.4.190", f"ultralytics/assets/{name}")
    except RuntimeError as e:
        pytest.skip(f"no sample photograph: {e}")


@pytest.fixture(scope="module")
def yolo():
    return load_estimator("yolo")


@pytest.mark.parametrize("photo", ["bus.jpg", "zidane.jpg"])
def test_yolo_through_onnx_finds_the_persons_and_keypoints_ultralytics_finds(yolo, photo, capsys):
    """The same persons, in the same order, with the same boxes and keypoints (to 0.01 pixel) and scores (to
    1e-4) as Ultralytics' own predictor with the .pt weights on torch (recorded in tests/data)."""
    recorded = json.loads(RECORDED.read_text())["photos"][photo]
    found = yolo.detect(cv2.imread(str(photograph(photo))))
    keypoint_error = np.abs(found.keypoint - np.array(recorded["keypoint"])).max()
    with capsys.disabled():
        print(f"\n{photo}: {len(found.box)} persons (Ultralytics: {len(recorded['box'])}), largest keypoint "
              f"difference {keypoint_error:.4f} px")
    assert len(found.box) == len(recorded["box"]) >= 2
    np.testing.assert_allclose(found.box, recorded["box"], atol=0.01)
    np.testing.assert_allclose(found.box_score, recorded["box_score"], atol=1e-4)
    assert keypoint_error < 0.01
    np.testing.assert_allclose(found.score, recorded["score"], atol=1e-4)


@pytest.fixture(scope="module")
def bus_video(tmp_path_factory):
    """A real video of real people: a 810 x 720 view panning down bus.jpg, 4 pixels a frame, 40 frames."""
    image = cv2.imread(str(photograph("bus.jpg")))  # 1080 x 810
    path = tmp_path_factory.mktemp("bus") / "bus_pan.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 20.0, (810, 720))
    for t in range(40):
        writer.write(np.ascontiguousarray(image[4 * t:4 * t + 720]))
    writer.release()
    return path


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    """A tiny model trained one epoch on synthetic data and exported."""
    python = sys.executable
    tmp = tmp_path_factory.mktemp("model")
    data = ["--set", f"data_root={tmp}", "--set", "dataset=tiny"]
    steps = [["-m", "lib.data.synthetic", "--preset", "demo", "--num-samples", "60", "--out", tmp / "tiny.pkl"],
             ["train_action.py", "--config", "configs/action/demo_synthetic.yaml", "--checkpoint", tmp / "run",
              *data, *TINY],
             ["deployment/deployment_action.py", "--config", "configs/action/demo_synthetic.yaml",
              "--evaluate", tmp / "run" / "latest_epoch.bin", "--deployment", tmp / "model.onnx", *data, *TINY]]
    for step in steps:
        result = subprocess.run([python, *map(str, step)], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
    return tmp / "model.onnx"


def test_a_real_video_through_extraction_tracking_inference_and_rendering(bus_video, onnx_model, tmp_path, capsys):
    extract_poses = load_script("deployment/extract_poses.py")
    assert run_main(extract_poses.main, ["--videos", str(bus_video), "--out", str(tmp_path / "keypoints"),
                                         "--backend", "yolo", "--max-persons", "8"]) == 0
    summary = capsys.readouterr().out
    npz = np.load(tmp_path / "keypoints" / "bus_pan.npz")
    assert tuple(npz["img_shape"]) == (720, 810) and int(npz["total_frames"]) == 40
    seen = (npz["keypoint_score"].max(axis=2) > 0)  # [M, T]
    assert seen.sum(axis=0).mean() >= 3.5  # the people of the bus photo in (nearly) every frame
    long_tracks = (seen.sum(axis=1) >= 36).sum()
    assert long_tracks >= 3  # identities kept while the view moves
    report = [summary.strip(), f"tracks: {len(seen)}, frames per track: {seen.sum(axis=1).tolist()}"]

    infer_action = load_script("deployment/infer_action.py")
    assert run_main(infer_action.main, ["--onnx", str(onnx_model), "--video", str(bus_video), "--backend", "yolo",
                                        "--window", "16", "--stride", "8", "--render", str(tmp_path / "out.mp4"),
                                        "--json-out"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [p["frames"] for p in result["predictions"]] == [[0, 16], [8, 24], [16, 32], [24, 40]]
    assert all(abs(sum(p["probabilities"]) - 1) < 1e-4 for p in result["predictions"])
    assert sum(1 for _ in FrameSource(tmp_path / "out.mp4")) == 40
    assert cv2.imread(str(tmp_path / "out_timeline.png")) is not None
    report.append(f"infer_action.py --video: extraction {result['extraction_frames_per_second']:.1f} frames/s; "
                  f"top-1 per window: {[p['top'][0]['name'] for p in result['predictions']]}")

    assert run_main(infer_action.main, ["--onnx", str(onnx_model), "--stream", str(bus_video), "--backend", "yolo",
                                        "--window", "16", "--stride", "8", "--json-out"]) == 0
    streamed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [p["frames"] for p in streamed] == [[0, 16], [8, 24], [16, 32], [24, 40]]
    report.append("--stream latency per window (ms): " + ", ".join(f"{p['latency_ms']:.0f}" for p in streamed))
    with capsys.disabled():
        print("\n" + "\n".join(report))



@pytest.fixture(scope="module")
def street(tmp_path_factory):
    """The real street video that the sports2d package ships (Demo/demo.mp4: 1768 x 994, 230 frames at 30
    frames a second; a man on a box and a woman walking past, BSD-3-Clause), and a 4-person version: the
    video at half size, tiled 2 x 2."""
    try:
        video = wheel_file("sports2d==0.8.34", "Sports2D/Demo/demo.mp4")
    except RuntimeError as e:
        pytest.skip(f"no street video: {e}")
    tiled = tmp_path_factory.mktemp("street") / "street_2x2.mp4"
    source, writer = cv2.VideoCapture(str(video)), None
    while True:
        ok, frame = source.read()
        if not ok:
            break
        half = cv2.resize(frame, (frame.shape[1] // 2, frame.shape[0] // 2), interpolation=cv2.INTER_AREA)
        grid = np.vstack([np.hstack([half, half]), np.hstack([half, half])])
        if writer is None:
            writer = cv2.VideoWriter(str(tiled), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, grid.shape[1::-1])
        writer.write(grid)
    writer.release()
    return {"video": video, "tiled": tiled}


@pytest.mark.parametrize("which, persons", [("video", 2), ("tiled", 4)])
def test_every_person_of_a_real_street_gets_their_own_predictions_and_segments(street, onnx_model, tmp_path,
                                                                                which, persons, capsys):
    infer_action = load_script("deployment/infer_action.py")
    out = tmp_path / f"{which}.mp4"
    assert run_main(infer_action.main, ["--onnx", str(onnx_model), "--video", str(street[which]), "--backend", "yolo",
                                        "--per-person", "--max-persons", "8", "--window", "32", "--stride", "16",
                                        "--render", str(out), "--json-out"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    windows = {}
    for line in lines:
        windows.setdefault(line["track"], []).append(line["frames"])
    followed = [track for track, frames in windows.items() if len(frames) >= 5]  # seen for 3 s or more
    segments = json.loads(out.with_name(f"{which}_segments.json").read_text())["segments"]
    with capsys.disabled():
        print(f"\n{which}: windows per track {dict((t, len(f)) for t, f in windows.items())}; segments "
              + "; ".join(f"person {s['track']} {s['class']} {s['start_s']}-{s['end_s']} s" for s in segments))
    assert len(followed) >= persons
    assert {s["track"] for s in segments} >= set(followed)
    assert all(len(line["top"]) == 5 and len(line["box"]) == 4 for line in lines)
    assert sum(1 for _ in FrameSource(out)) == 230
    assert cv2.imread(str(out.with_name(f"{which}_segments.png"))) is not None


def test_rtmlib_finds_the_people_or_says_it_cannot_get_its_models():
    """Where rtmlib is installed (requirements-rtmlib.txt): with its models (downloaded
    on the first run) it finds the 4 people of bus.jpg; without network and models, a one-line error."""
    pytest.importorskip("rtmlib")
    from lib.errors import UserError

    try:
        estimator = load_estimator("rtmlib:lightweight")
    except UserError as e:
        assert "could not load its models" in str(e) and "\n" not in str(e)
        pytest.skip(f"rtmlib has no models here: {e}")
    keypoint, score = estimator(cv2.imread(str(photograph("bus.jpg"))))
    assert len(keypoint) >= 4 and keypoint.shape[1:] == (17, 2) and score.shape == keypoint.shape[:2]
