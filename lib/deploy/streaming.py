"""Streaming classification: frames are classified as they come, from a video file read frame by frame, or
from a live source (lib.video.live: a camera, a network stream, a file played in real time) whose frames a
slow consumer partly misses. Each frame goes through the pose estimator and the tracker, or, with
`pose_every` k, every k-th frame does and the frames between carry the last poses (so do missed frames):
the poses keep one entry per frame of the source. Once `window` frames are in, every `stride` frames the
last `window` frames are classified.

For a live source the estimator's input size and k can be chosen from measured speed (`live_settings`)."""
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from lib.data.keypoint_files import Keypoints
from lib.deploy.inference import OnnxActionModel, predict
from lib.deploy.persons import predict_persons
from lib.video.extract import FramePoses
from lib.video.live import LiveFrame
from lib.video.tracking import stack_tracks

POSE_SIZES = (640, 480, 320)  # the yolo estimator's input sizes that live_settings tries, largest first
MAX_POSE_EVERY = 4
HEADROOM = 0.8  # live_settings plans for this share of a frame's time


def timed_frames(frames):
    """A video's frames as LiveFrames: numbered in order, stamped when they arrive."""
    for index, image in enumerate(frames):
        yield LiveFrame(index, image, time.perf_counter())


def stream_predictions(model: OnnxActionModel, frames, poses: FramePoses, window: int, stride: int,
                       top_k: int = 5, max_persons: int = 2, gallery=None, threshold: float = None,
                       per_person: bool = False, pose_every: int = 1):
    """Yield the predictions of the last `window` frames each time `stride` more frames of the source have
    come (LiveFrames; `timed_frames` wraps a video's): one dict for the scene (the `max_persons` tracks of
    highest total score), or with `per_person` one for each person in the window (lib.deploy.persons, all
    in one model call), each with `frames` [start, end) in the source's numbering, the keys of `predict`
    (with a `gallery`, its classes), `latency_ms`: from the capture of the frame that completed the window
    to the prediction (its pose estimation and tracking, the clip, the model), and `model_ms`: the clip and
    the model alone."""
    recent = deque(maxlen=window)  # per source frame: {track id: (keypoint [17, 2], score [17])}
    current, count, next_end, estimated = {}, 0, window, -pose_every
    for frame in frames:
        recent.extend([current] * (frame.index - count))  # frames the source sent that never came: carried
        if frame.index - estimated >= pose_every:
            current, estimated = poses(frame.image), frame.index
        recent.append(current)
        count = frame.index + 1
        if count < next_end:
            continue
        next_end = count + stride
        posed = time.perf_counter()
        persons = list(recent)
        if per_person:
            results = predict_persons(model, persons, frame.image.shape[:2], count - window, top_k, gallery,
                                      threshold)
        else:
            keypoint, score = stack_tracks(persons, max_persons)
            results = predict(model, Keypoints(keypoint, score, frame.image.shape[:2]), top_k=top_k,
                              gallery=gallery, threshold=threshold)
        done = time.perf_counter()
        for result in results:
            result.update(frames=[count - window, count], latency_ms=1000 * (done - frame.captured),
                          model_ms=1000 * (done - posed))
            yield result


@dataclass
class LiveSettings:
    pose_size: int | None  # the estimator's input size (None: an estimator without one)
    pose_every: int
    estimator_ms: dict  # per input size tried
    model_ms: float  # one window's clip and model
    frame_ms: float  # the time between two frames of the source
    keeps_up: bool  # False: nothing fits, the cheapest settings were taken and frames will be lost


def median_ms(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def live_settings(estimator, model: OnnxActionModel, image: np.ndarray, fps: float, window: int, stride: int,
                  pose_size=None, pose_every=None) -> LiveSettings:
    """The estimator's input size and k (estimate every k-th frame) for a source of `fps` frames a second,
    each given or chosen from speed measured on `image` so that the estimator's time / k plus one window's
    model time / stride fits in HEADROOM of the time between two frames: the largest input size of
    POSE_SIZES with every frame estimated, else the smallest size with the smallest k up to MAX_POSE_EVERY
    (with k given: the largest size); the smallest size and the largest k when nothing fits (the source then
    loses frames)."""
    sized = hasattr(estimator, "imgsz")
    sizes = [pose_size] if pose_size else list(POSE_SIZES) if sized else [None]
    estimator_ms = {}
    for size in sizes:
        if size:
            estimator.imgsz = size
        estimator_ms[size] = median_ms(lambda: estimator(image))
    clip = model.clip(Keypoints(np.zeros((1, window, 17, 2), np.float32), np.zeros((1, window, 17), np.float32),
                                image.shape[:2]))
    model_ms = median_ms(lambda: model.run(clip[None]), repeats=1)
    budget, per_window = HEADROOM * 1000 / fps, model_ms / stride
    ks = [pose_every] if pose_every else list(range(1, MAX_POSE_EVERY + 1))
    options = [(size, k) for k in ks for size in (sizes if k == ks[0] else sizes[-1:])]
    chosen = next(((size, k) for size, k in options if estimator_ms[size] / k + per_window <= budget), None)
    keeps_up = chosen is not None
    if chosen is None:
        chosen = (sizes[-1], pose_every or MAX_POSE_EVERY)
    if chosen[0]:
        estimator.imgsz = chosen[0]
    return LiveSettings(chosen[0], chosen[1], estimator_ms, model_ms, 1000 / fps, keeps_up)


def describe(settings: LiveSettings) -> str:
    """One line: the settings and the speeds they were chosen from."""
    measured = ", ".join(f"{ms:.0f} ms" + (f" at {size}" if size else "") for size, ms in settings.estimator_ms.items())
    size = f"pose size {settings.pose_size}, " if settings.pose_size else ""
    every = "every frame" if settings.pose_every == 1 else f"every {settings.pose_every} frames"
    return (f"live: {size}poses {every} (estimator {measured}; model {settings.model_ms:.0f} ms a window; "
            f"{settings.frame_ms:.0f} ms between frames)")

