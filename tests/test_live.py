"""Live sources (lib/video/live.py) and the streaming loop (lib/deploy/streaming.py): a video file played in
real time with frames dropped, a stream that breaks off, the poses carried over missed and skipped frames,
the settings chosen from measured speed, and the command's one-line errors."""
import json
import time

import numpy as np
import pytest

from lib.cli import run_main
from lib.deploy import streaming
from lib.deploy.streaming import live_settings, stream_predictions
from lib.video import live
from lib.video.live import LiveFrame, LiveFrames
from test_persons import onnx_model, pair_video  # noqa: F401 (fixtures: a small exported model, a video)
from video_helpers import load_script

cv2 = pytest.importorskip("cv2")
infer_action = load_script("deployment/infer_action.py")


def test_a_file_played_in_real_time_loses_the_frames_a_slow_consumer_misses(pair_video):  # noqa: F811
    stream = LiveFrames(pair_video["path"], realtime=True)
    start, got = time.perf_counter(), []
    for frame in stream:
        got.append(frame.index)
        time.sleep(0.1)  # a consumer at 10 frames a second, a third of the source's rate
    seconds = time.perf_counter() - start
    assert stream.received == pair_video["frames"] and not stream.lost
    assert stream.dropped == pair_video["frames"] - len(got) > 30
    assert got == sorted(got) and got[0] == 0 and len(set(np.diff(got))) > 1  # gaps where frames were lost
    assert seconds >= (pair_video["frames"] - 1) / 30 * 0.95  # played at the file's rate, not faster


class BrokenStream:
    """A capture that delivers the first `frames` frames of a video and then fails, as a camera or a network
    stream that breaks off."""

    def __init__(self, path, frames: int):
        self.capture, self.left = cv2.VideoCapture(str(path)), frames

    def get(self, prop):
        return self.capture.get(prop)

    def read(self):
        self.left -= 1
        return self.capture.read() if self.left >= 0 else (False, None)

    def release(self):
        self.capture.release()


def test_a_stream_that_breaks_off_ends_cleanly_with_what_it_gave(pair_video, onnx_model, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setattr(live, "open_capture", lambda source: BrokenStream(pair_video["path"], 40))
    code = run_main(infer_action.main, ["--onnx", onnx_model.name, "--stream", "rtsp://camera.local/live",
                                        "--backend", pair_video["backend"], "--window", "16", "--stride", "8",
                                        "--pose-every", "1", "--json-out"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "rtsp://camera.local/live stopped sending after 40 frames; the predictions above are all it gave" in err
    assert "Traceback" not in err
    assert "live: poses every frame (estimator" in err  # the settings on stderr; stdout holds JSON only
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines and all(line["frames"][1] <= 40 for line in lines)


def test_a_camera_that_cannot_be_opened_is_one_line(onnx_model, capsys):  # noqa: F811
    assert run_main(infer_action.main, ["--onnx", onnx_model.name, "--stream", "9", "--backend", "yolo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot open camera 9; check the index (0 is the first camera)" in err[0], err


@pytest.mark.parametrize("argv, message", [
    (["--stream", "0", "--realtime"], "--realtime plays a video file"),
    (["--video", "x.mp4", "--min-segment", "-1"], "--min-segment must be 0 or more seconds"),
    (["--video", "x.mp4", "--switch-margin", "2"], "--switch-margin must lie between 0 and 1"),
    (["--stream", "x.mp4", "--pose-every", "0"], "--pose-every must be 'auto' or a whole number of at least 1"),
])
def test_live_and_segment_settings_out_of_range_are_one_line_errors(argv, message, onnx_model, capsys):  # noqa: F811
    assert run_main(infer_action.main, ["--onnx", onnx_model.name, *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_a_pose_size_for_an_estimator_without_one_is_one_line(pair_video, onnx_model, capsys):  # noqa: F811
    assert run_main(infer_action.main, ["--onnx", onnx_model.name, "--stream", str(pair_video["path"]),
                                        "--backend", pair_video["backend"], "--pose-size", "320"]) == 2
    assert "--pose-size is for the yolo backend" in capsys.readouterr().err


class CountingPoses:
    """Stands for FramePoses: the frame's number as the only person's x, and the calls counted."""

    def __init__(self):
        self.calls = []

    def __call__(self, image):
        self.calls.append(int(image[0, 0, 0]))
        return {0: (np.full((17, 2), float(image[0, 0, 0]), np.float32), np.ones(17, np.float32))}


def frames_with(indices):
    for i in indices:
        yield LiveFrame(i, np.full((4, 4, 3), i, np.uint8), time.perf_counter())


def test_missed_and_skipped_frames_carry_the_last_poses_in_the_source_numbering(onnx_model, monkeypatch):  # noqa: F811
    seen = []
    monkeypatch.setattr(streaming, "stack_tracks", lambda persons, m: seen.append(
        [p[0][0][0, 0] for p in persons]) or (np.zeros((1, len(persons), 17, 2), np.float32),
                                           np.zeros((1, len(persons), 17), np.float32)))
    poses = CountingPoses()
    # frames 3, 4 and 9 never came; poses every 2nd frame of the source
    results = list(stream_predictions(onnx_model, frames_with([0, 1, 2, 5, 6, 7, 8, 10, 11, 12]), poses,
                                      window=6, stride=3, pose_every=2))
    assert poses.calls == [0, 2, 5, 7, 10, 12]  # at least 2 source frames after the last estimate
    assert [r["frames"] for r in results] == [[0, 6], [3, 9], [6, 12]]
    # frame 3 and 4 carry frame 2's poses; 6 carries 5's; 9 (missed) carries 7's
    assert seen[:2] == [[0, 0, 2, 2, 2, 5], [2, 2, 5, 5, 7, 7]]
    assert all(r["latency_ms"] >= r["model_ms"] > 0 for r in results)


class SizedEstimator:
    imgsz = 640
    name = "sized"

    def __call__(self, image):
        return np.zeros((0, 17, 2), np.float32), np.zeros((0, 17), np.float32)


@pytest.mark.parametrize("times, fps, given, expected", [
    ({640: 20, 480: 12, 320: 6}, 30, None, (640, 1)),    # 20 + model fits 0.8 * 33 ms
    ({640: 50, 480: 24, 320: 12}, 30, None, (480, 1)),
    ({640: 90, 480: 60, 320: 40}, 30, None, (320, 2)),  # 40 / 2 + 2 fits; 40 + 2 does not
    ({640: 400, 480: 300, 320: 200}, 30, None, (320, 4)),  # nothing fits: the cheapest settings
    ({640: 48, 480: 25, 320: 12}, 30, 2, (640, 2)),    # k given: the largest size that fits with it
])
def test_live_settings_take_the_largest_input_size_then_the_smallest_k_that_keep_up(
        times, fps, given, expected, onnx_model, monkeypatch):  # noqa: F811
    estimator = SizedEstimator()
    measured = iter([times[640], times[480], times[320], 32.0])  # the estimator at each size, then the model
    monkeypatch.setattr(streaming, "median_ms", lambda fn, repeats=3: next(measured))
    settings = live_settings(estimator, onnx_model, np.zeros((8, 8, 3), np.uint8), fps, window=16, stride=16,
                             pose_every=given)
    assert (settings.pose_size, settings.pose_every) == expected and estimator.imgsz == expected[0]
    assert settings.model_ms == 32.0 and settings.estimator_ms == times
    assert settings.keeps_up is (times[320] < 200)  # the fourth case: nothing fits
