"""Videos -> tracked COCO-17 keypoints, one .npz per video in the PYSKL sample layout (written by
lib.data.keypoint_files.write_npz, read by deployment/infer_action.py and lib/data/build_dataset.py)."""
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from lib.data.keypoint_files import Keypoints, write_npz
from lib.errors import UserError
from lib.video.frames import FrameSource, video_name
from lib.video.tracking import PersonTracker, stack_tracks

log = logging.getLogger(__name__)


class FramePoses:
    """An estimator and a tracker: one frame -> {track id: (keypoint [17, 2], score [17])}. Detections
    with no joint scored above zero are dropped."""

    def __init__(self, estimator, tracker: PersonTracker = None):
        self.estimator, self.tracker = estimator, tracker or PersonTracker()

    def __call__(self, frame: np.ndarray) -> dict:
        keypoint, score = self.estimator(frame)  # [P, 17, 2], [P, 17]
        present = score.max(axis=1, initial=0) > 0
        keypoint, score = keypoint[present], score[present]
        ids = self.tracker.update(keypoint, score)
        return {i: (keypoint[d], score[d]) for d, i in enumerate(ids)}


@dataclass
class Extraction:
    keypoints: Keypoints  # the `max_persons` tracks of highest total score, [M, T, 17, 2] pixels
    poses: list  # every track, per frame: {track id: (keypoint [17, 2], score [17])}
    fps: float  # of the video
    seconds: float  # decoding, estimation and tracking
    detections: int  # persons found, summed over frames


def extract(source: FrameSource, estimator, max_persons: int = 2, progress: bool = True) -> Extraction:
    """Run the estimator on every frame of `source` and track its persons; keep the `max_persons` tracks
    with the highest total score."""
    poses, frames, shape = FramePoses(estimator), [], None
    start = time.perf_counter()
    for frame in tqdm(source, total=source.frame_count, desc=source.name, unit="frame", disable=not progress,
                      leave=False, mininterval=0.5):
        shape = frame.shape[:2]
        frames.append(poses(frame))
    seconds = time.perf_counter() - start
    keypoint, score = stack_tracks(frames, max_persons)
    return Extraction(Keypoints(keypoint, score, shape), frames, source.fps, seconds, sum(len(f) for f in frames))


def extract_videos(videos: list, out_dir, estimator, max_persons: int = 2, fps: float = 30.0,
                   overwrite: bool = False, progress: bool = True) -> dict:
    """Extract every video into out_dir/NAME.npz. A video whose .npz exists is skipped (unless
    `overwrite`); one that cannot be read is logged as a one-line error and the others go on. Returns the
    summary: counts, frames, persons a frame and frames a second."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {"extracted": 0, "skipped": 0, "failed": [], "frames": 0, "detections": 0, "seconds": 0.0,
               "backend": estimator.name}
    with logging_redirect_tqdm():  # an error line above the progress bars, not inside them
        for path in tqdm(videos, desc="videos", unit="video", disable=not progress or len(videos) < 2):
            out = out_dir / f"{video_name(path)}.npz"
            if out.exists() and not overwrite:
                summary["skipped"] += 1
                continue
            try:
                result = extract(FrameSource(path, fps), estimator, max_persons, progress)
            except UserError as e:
                log.error("%s", e)
                summary["failed"].append(str(path))
                continue
            write_npz(out, result.keypoints, video_name(path), fps=result.fps, backend=estimator.name)
            summary["extracted"] += 1
            summary["frames"] += result.keypoints.keypoint.shape[1]
            summary["detections"] += result.detections
            summary["seconds"] += result.seconds
    return summary


def describe(summary: dict) -> str:
    """The summary as one line."""
    frames, seconds = summary["frames"], summary["seconds"]
    text = f"{summary['extracted']} videos extracted"
    if summary["skipped"]:
        text += f", {summary['skipped']} skipped (already extracted; --overwrite redoes them)"
    if summary["failed"]:
        text += f", {len(summary['failed'])} failed"
    if frames:
        text += (f" | {frames} frames, {summary['detections'] / frames:.2f} persons a frame, "
                 f"{frames / seconds:.1f} frames/s with {summary['backend']}")
    return text
