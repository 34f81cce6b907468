"""Per-person predictions: every tracked person gets their own windows and predictions.

A person's clip of a window is that person. For a model that reads two persons (the NMTVC layout), the
second slot holds the nearest other person in the window (the smallest mean distance between the two
persons' centres over the frames where both are seen), so that two-person classes such as a handshake still
see both, when that person is within reach: at most PARTNER_REACH times the person's size (the mean diagonal
of the box of their seen joints); zeros otherwise. The model averages its features over the two persons, so
two persons who share each other's clips get the same prediction, as the two sides of a handshake should; a
person far from everyone is classified alone. A person is in a window (gets a clip, or can be a partner) when
seen in at least MIN_PRESENCE of its frames. All persons of a window go to the model in one call.

The poses are per frame, {track id: (keypoint [17, 2], score [17])}, as lib.video.extract.FramePoses
gives them."""
from dataclasses import dataclass

import numpy as np

from lib.data.keypoint_files import Keypoints
from lib.deploy.inference import OnnxActionModel, classify_clips, window_starts
from lib.video.tracking import MIN_VISIBLE_SCORE

MIN_PRESENCE = 0.5  # share of a window's frames in which a person must be seen to be classified in it
PARTNER_REACH = 1.5  # the farthest partner, in multiples of the person's size


@dataclass
class PersonClip:
    track: int
    keypoint: np.ndarray  # [M, W, 17, 2] pixels: the person, then (M = 2) the nearest other person or zeros
    score: np.ndarray  # [M, W, 17]
    box: list  # [x0, y0, x1, y1] around the person's seen joints over the window


def track_array(poses: list[dict], track: int) -> tuple[np.ndarray, np.ndarray]:
    """One track over the frames of `poses`: keypoint [W, 17, 2], score [W, 17]; zeros where unseen."""
    keypoint = np.zeros((len(poses), 17, 2), dtype=np.float32)
    score = np.zeros((len(poses), 17), dtype=np.float32)
    for t, persons in enumerate(poses):
        if track in persons:
            keypoint[t], score[t] = persons[track]
    return keypoint, score


def centres(keypoint: np.ndarray, score: np.ndarray) -> np.ndarray:
    """[W, 17, 2], [W, 17] -> the mean of each frame's seen joints [W, 2]; NaN where none is seen."""
    seen = score > MIN_VISIBLE_SCORE
    counts = seen.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, (keypoint * seen[..., None]).sum(axis=1) / counts, np.nan)


def size(keypoint: np.ndarray, score: np.ndarray) -> float:
    """The mean diagonal of the box around each frame's seen joints, over the frames where any is seen."""
    seen = score > MIN_VISIBLE_SCORE
    low = np.where(seen[..., None], keypoint, np.inf).min(axis=1)  # [W, 2]
    high = np.where(seen[..., None], keypoint, -np.inf).max(axis=1)
    diagonal = np.linalg.norm(high - low, axis=1)[seen.any(axis=1)]
    return float(diagonal.mean()) if len(diagonal) else 0.0


def nearest_other(track: int, arrays: dict) -> int | None:
    """The track whose centre lies nearest `track`'s, on average over the frames where both are seen, if
    within PARTNER_REACH times `track`'s size."""
    own = centres(*arrays[track])
    best, best_distance = None, PARTNER_REACH * size(*arrays[track])
    for other, array in arrays.items():
        if other == track:
            continue
        distance = np.linalg.norm(own - centres(*array), axis=1)  # [W], NaN where either is unseen
        if np.isfinite(distance).any() and np.nanmean(distance) <= best_distance:
            best, best_distance = other, float(np.nanmean(distance))
    return best


def person_clips(poses: list[dict], persons_per_clip: int) -> list[PersonClip]:
    """The clips of one window (its frames' poses) for every person in it, in track order."""
    seen_in = {}
    for persons in poses:
        for track in persons:
            seen_in[track] = seen_in.get(track, 0) + 1
    present = sorted(t for t, n in seen_in.items() if n >= MIN_PRESENCE * len(poses))
    arrays = {track: track_array(poses, track) for track in present}
    clips = []
    for track in present:
        keypoint, score = arrays[track]
        slots = [(keypoint, score)]
        if persons_per_clip == 2:
            other = nearest_other(track, arrays)
            slots.append(arrays[other] if other is not None else (np.zeros_like(keypoint), np.zeros_like(score)))
        seen = score > MIN_VISIBLE_SCORE
        points = keypoint[seen]
        box = [*points.min(axis=0).tolist(), *points.max(axis=0).tolist()] if len(points) else [0.0] * 4
        clips.append(PersonClip(track, np.stack([k for k, _ in slots]), np.stack([s for _, s in slots]),
                                [round(v, 1) for v in box]))
    return clips


def predict_persons(model: OnnxActionModel, poses: list[dict], img_hw: tuple, start: int, top_k: int = 5,
                    gallery=None, threshold: float = None) -> list[dict]:
    """One prediction per person of the window whose frames' poses are `poses` (frames [start, start +
    len(poses))): `track`, `frames`, `box` and the keys of classify_clips; every person in one model call."""
    clips = person_clips(poses, 1 if model.layout == "NTVC" else 2)
    if not clips:
        return []
    inputs = np.stack([model.clip(Keypoints(c.keypoint, c.score, img_hw)) for c in clips])
    frames = [start, start + len(poses)]
    return [{"track": c.track, "frames": frames, "box": c.box, **result}
            for c, result in zip(clips, classify_clips(model, inputs, top_k, gallery, threshold))]


def poses_of(keypoints: Keypoints) -> list[dict]:
    """A keypoint file's persons as per-frame poses: person m is track m, in the frames where it has a
    joint scored above zero."""
    return [{m: (keypoints.keypoint[m, t], keypoints.score[m, t]) for m in range(len(keypoints.keypoint))
             if keypoints.score[m, t].max() > 0}
            for t in range(keypoints.keypoint.shape[1])]


def predict_every_person(model: OnnxActionModel, poses: list[dict], img_hw: tuple, window: int = None,
                         stride: int = None, top_k: int = 5, gallery=None, threshold: float = None) -> list[dict]:
    """predict_persons over windows of `window` frames every `stride` frames (the whole sequence without a
    window), window by window."""
    starts = window_starts(len(poses), window, stride or window)
    span = len(poses) if window is None else min(window, len(poses))
    return [result for start in starts
            for result in predict_persons(model, poses[start:start + span], img_hw, start, top_k, gallery, threshold)]
