"""Persons across frames: an online tracker that gives each detected person a track id, and the stacking
of tracks into the PYSKL layout [M, T, 17, 2]. numpy only.

The tracker matches each frame's detections to the tracks seen in the last `max_gap` frames, greedily,
cheapest pair first. The cost of a pair is the mean distance of the joints both see, divided by the size
of the track's last pose (the diagonal of its visible joints' box); a pair above `max_cost` does not
match, and an unmatched detection starts a new track."""
from dataclasses import dataclass, field

import numpy as np

MIN_VISIBLE_SCORE = 0.05  # a joint with a lower score is treated as not seen


@dataclass
class Track:
    keypoint: np.ndarray  # [17, 2] last pose
    score: np.ndarray  # [17]
    last_frame: int


def _visible(score: np.ndarray) -> np.ndarray:
    return score > MIN_VISIBLE_SCORE


def _size(keypoint: np.ndarray, visible: np.ndarray) -> float:
    """Diagonal of the box around the visible joints (at least one pixel)."""
    points = keypoint[visible]
    if len(points) < 2:
        return 1.0
    return max(float(np.linalg.norm(points.max(0) - points.min(0))), 1.0)


@dataclass
class PersonTracker:
    max_cost: float = 0.5  # mean joint distance, as a share of the person's size, above which a pair does not match
    max_gap: int = 30  # frames a track may go unseen and still be matched
    tracks: dict = field(default_factory=dict)  # id -> Track, the live ones
    frame: int = -1
    next_id: int = 0

    def update(self, keypoint: np.ndarray, score: np.ndarray) -> list[int]:
        """One frame's detections [P, 17, 2], [P, 17] -> the track id of each detection."""
        self.frame += 1
        self.tracks = {i: t for i, t in self.tracks.items() if self.frame - t.last_frame <= self.max_gap}
        pairs = []
        for d in range(len(keypoint)):
            seen = _visible(score[d])
            for i in self.tracks:
                track = self.tracks[i]
                both = seen & _visible(track.score)
                if both.any():
                    distance = np.linalg.norm(keypoint[d, both] - track.keypoint[both], axis=-1).mean()
                    cost = distance / _size(track.keypoint, _visible(track.score))
                    if cost <= self.max_cost:
                        pairs.append((cost, d, i))
        ids = [-1] * len(keypoint)
        taken = set()
        for _, d, i in sorted(pairs):
            if ids[d] < 0 and i not in taken:
                ids[d] = i
                taken.add(i)
        for d in range(len(keypoint)):
            if ids[d] < 0:
                ids[d], self.next_id = self.next_id, self.next_id + 1
            self.tracks[ids[d]] = Track(keypoint[d].copy(), score[d].copy(), self.frame)
        return ids


def stack_tracks(frames: list[dict], max_persons: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame {track id: (keypoint [17, 2], score [17])} -> (keypoint [M, T, 17, 2], score [M, T, 17])
    float32 of the `max_persons` tracks with the highest total score, in the order they first appear;
    zeros where a track is absent. M is at least 1 (all zeros when nobody was seen)."""
    totals = {}
    for persons in frames:
        for i, (_, score) in persons.items():
            totals[i] = totals.get(i, 0.0) + float(score.sum())
    kept = sorted(sorted(totals, key=lambda i: -totals[i])[:max_persons]) or [None]
    slot = {i: m for m, i in enumerate(kept)}
    keypoint = np.zeros((len(kept), len(frames), 17, 2), dtype=np.float32)
    score = np.zeros((len(kept), len(frames), 17), dtype=np.float32)
    for t, persons in enumerate(frames):
        for i, (points, scores) in persons.items():
            if i in slot:
                keypoint[slot[i], t], score[slot[i], t] = points, scores
    return keypoint, score
