"""Streaming classification: frames are read as they come (a camera, or a video file frame by frame through
the same path), each goes through the pose estimator and the tracker, and once `window` frames are in,
every `stride` frames the last `window` frames are classified."""
import time
from collections import deque

from lib.data.keypoint_files import Keypoints
from lib.deploy.inference import OnnxActionModel, predict
from lib.video.extract import FramePoses
from lib.video.tracking import stack_tracks


def stream_predictions(model: OnnxActionModel, frames, poses: FramePoses, window: int, stride: int,
                       top_k: int = 5, max_persons: int = 2, gallery=None, threshold: float = None):
    """Yield one prediction dict per window as soon as its last frame has arrived: `frames` [start, end),
    the keys of `predict` (with a `gallery`, its classes), and `latency_ms`: the time from that frame's
    arrival to the prediction (pose estimation and tracking of that frame, clip, model), `model_ms`: the
    clip and the model alone."""
    recent = deque(maxlen=window)  # per frame: {track id: (keypoint [17, 2], score [17])}
    for t, frame in enumerate(frames):
        arrived = time.perf_counter()
        recent.append(poses(frame))
        end = t + 1
        if end < window or (end - window) % stride:
            continue
        posed = time.perf_counter()
        keypoint, score = stack_tracks(list(recent), max_persons)
        result = predict(model, Keypoints(keypoint, score, frame.shape[:2]), top_k=top_k, gallery=gallery,
                         threshold=threshold)[0]
        done = time.perf_counter()
        result.update(frames=[end - window, end], latency_ms=1000 * (done - arrived), model_ms=1000 * (done - posed))
        yield result
