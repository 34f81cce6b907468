"""Per-sample preprocessing of raw COCO-17 keypoints into a model clip. numpy only (no torch), so that
deployment/infer_action.py runs exactly this code with ONNX Runtime alone.

`make_clip` is the whole pipeline, for training (random resampling, random_move, random crop scale)
and for testing (deterministic):
    [M, T, 17, 2] pixels + [M, T, 17] scores
    -> keep the two most confident persons            (select_persons)
    -> make their tracks consistent over time         (track_two_persons; scores move with coordinates)
    -> pick clip_len frames                           (resample_indices)
    -> divide by the image size to [-1, 1]            (normalize_to_image)
    -> COCO-17 to H36M-17, coordinates and scores     (coco_to_h36m)
    -> pad to two persons, append the score channel   [2, clip_len, 17, 3]
    -> random_move (training only), crop_scale        float32 [2, clip_len, 17, 3]
    -> the input stream: joints, bones, or their motion (to_stream)
"""
from dataclasses import dataclass

import numpy as np

from lib.skeleton import H36M_PARENTS

STREAMS = ("joint", "bone", "joint_motion", "bone_motion")

NUM_PERSONS = 2

# H36M joint -> the COCO joints whose mean it is. COCO: 0 nose, 1/2 left/right eye, 3/4 ears,
# 5/6 shoulders, 7/8 elbows, 9/10 wrists, 11/12 hips, 13/14 knees, 15/16 ankles (left/right).
# Spine is the mean of pelvis (mean of hips) and thorax (mean of shoulders), i.e. of the four joints.
H36M_FROM_COCO = (
    (11, 12), (12,), (14,), (16,), (11,), (13,), (15,), (5, 6, 11, 12),
    (5, 6), (0,), (1, 2), (5,), (7,), (9,), (6,), (8,), (10,),
)


def _coco_to_h36m_matrix() -> np.ndarray:
    """[17 H36M, 17 COCO] averaging weights; each row sums to 1."""
    matrix = np.zeros((len(H36M_FROM_COCO), 17), dtype=np.float32)
    for h36m_joint, coco_joints in enumerate(H36M_FROM_COCO):
        matrix[h36m_joint, list(coco_joints)] = 1.0 / len(coco_joints)
    return matrix


COCO_TO_H36M = _coco_to_h36m_matrix()


def select_persons(keypoint: np.ndarray, score: np.ndarray, max_persons: int = NUM_PERSONS):
    """Keep the `max_persons` persons with the highest total score, in their original order."""
    if keypoint.shape[0] <= max_persons:
        return keypoint, score
    keep = np.sort(np.argsort(-score.sum(axis=(1, 2)), kind="stable")[:max_persons])
    return keypoint[keep], score[keep]


def _pose_distance(a, a_visible, b, b_visible) -> np.ndarray:
    """Mean distance over the joints visible in both poses. [..., 17, 2] x2 -> [...]."""
    both = a_visible & b_visible
    diff = a - b
    dist = np.sqrt(diff[..., 0] ** 2 + diff[..., 1] ** 2)  # the Euclidean norm, without a reduction over an axis of 2
    return (dist * both).sum(-1) / np.maximum(both.sum(-1), 1)


def track_two_persons(keypoint: np.ndarray, score: np.ndarray):
    """Reorder the two persons frame by frame so that slot 0 follows one person and slot 1 the other.

    A detector lists the people of each frame in no fixed order. Between consecutive frames where both
    are present we keep or swap the slots, whichever moves the joints less; a frame with one person
    puts it in the slot of the track it is nearest to. Scores are reordered with the coordinates.
    keypoint [2, T, 17, 2], score [2, T, 17] -> new arrays of the same shapes.
    """
    if keypoint.shape[0] != 2:
        return keypoint, score
    visible = score > 0  # [2, T, 17]
    present = visible.any(-1)  # [2, T]
    both = np.flatnonzero(present[0] & present[1])
    if len(both) == 0:
        return keypoint, score
    # Parity of the slot order at each frame where both are present, relative to the first such frame.
    a, b = both[:-1], both[1:]
    # distance[i, j]: slot i at each such frame to slot j at the one before, all four pairs at once [2, 2, n]
    distance = _pose_distance(keypoint[:, None, b], visible[:, None, b], keypoint[None, :, a], visible[None, :, a])
    keep = distance[0, 0] + distance[1, 1]
    swap = distance[0, 1] + distance[1, 0]
    parity_both = np.concatenate([[0], np.cumsum(swap < keep) % 2])
    # Every frame refers to the latest both-present frame (or the first one, before it).
    ref_pos = np.clip(np.searchsorted(both, np.arange(keypoint.shape[1]), side="right") - 1, 0, None)
    ref = both[ref_pos]  # [T]
    swapped = parity_both[ref_pos].astype(bool)  # [T]
    # A frame with a single person: which slot of the reference frame is it closest to?
    single = present[0] ^ present[1]
    if single.any():
        t = np.flatnonzero(single)
        slot = np.where(present[0, t], 0, 1)
        pose, pose_visible = keypoint[slot, t], visible[slot, t]
        to_slot0, to_slot1 = _pose_distance(pose, pose_visible, keypoint[:, ref[t]], visible[:, ref[t]])  # 2 x [n]
        track = (to_slot1 < to_slot0).astype(int) ^ swapped[t]  # the track it belongs to
        swapped[t] = track != slot
    order = np.stack([swapped.astype(int), 1 - swapped.astype(int)])  # [2, T]: source slot per track
    frames = np.arange(keypoint.shape[1])
    return keypoint[order, frames], score[order, frames]


def select_and_track(keypoint: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two persons of highest total score, tracked (select_persons, track_two_persons), as float32: the
    tracker's distances would overflow in float16 (Kinetics' precision)."""
    keypoint, score = select_persons(keypoint, score)
    return track_two_persons(keypoint.astype(np.float32, copy=False), score.astype(np.float32, copy=False))


def resample_indices(num_frames: int, clip_len: int, rng: np.random.Generator = None) -> np.ndarray:
    """Indices of `clip_len` frames spread over `num_frames`. Without rng: evenly spaced, deterministic.
    With rng (training): each index jitters within its own interval, so every draw gives a new clip."""
    even = np.linspace(0, num_frames, clip_len, endpoint=False)
    if rng is None:
        return np.floor(even).astype(np.int64)
    if num_frames < clip_len:
        picked = np.where(rng.random(clip_len) < 0.5, np.floor(even), np.ceil(even))
        picked = np.sort(picked)
    else:
        picked = even + rng.random(clip_len) * (num_frames / clip_len)
    return np.clip(picked, 0, num_frames - 1).astype(np.int64)


def normalize_to_image(xy: np.ndarray, img_hw) -> np.ndarray:
    """Pixels to [-1, 1] along the longer image side; the same divisor on both axes keeps the aspect ratio
    (for 1920x1080: x in [-1, 1], y in [-1, 0.125])."""
    return xy / float(max(img_hw)) * 2.0 - 1.0


def coco_to_h36m(xy: np.ndarray, score: np.ndarray, legacy_conf_order: bool = False):
    """[..., 17, 2] and [..., 17] in COCO order -> H36M order. Virtual joints (pelvis, spine, thorax, head)
    are means, of coordinates and of scores alike. `legacy_conf_order` leaves the scores in COCO order,
    as the published code did (joint v then carries the score of COCO joint v)."""
    xy = COCO_TO_H36M @ xy
    if not legacy_conf_order:
        score = score @ COCO_TO_H36M.T
    return xy, score


def random_move(clip: np.ndarray, rng: np.random.Generator, angle_deg=(-10.0, 10.0), scale=(0.9, 1.1),
                shift=(-0.1, 0.1)) -> np.ndarray:
    """Rotate, scale and shift x, y of every person, with parameters that drift linearly from a random
    start to a random end over the clip. [M, T, V, 3] -> new array; scores unchanged."""
    num_frames = clip.shape[1]
    start_end = np.stack([rng.uniform(*angle_deg, 2), rng.uniform(*scale, 2),
                          rng.uniform(*shift, 2), rng.uniform(*shift, 2)])  # [4, 2]
    ramp = np.linspace(0.0, 1.0, num_frames)
    angle, s, tx, ty = start_end[:, :1] + (start_end[:, 1:] - start_end[:, :1]) * ramp  # 4 x [T]
    angle = np.deg2rad(angle)
    cos, sin = np.cos(angle) * s, np.sin(angle) * s
    x, y = clip[..., 0], clip[..., 1]  # [M, T, V]
    out = clip.copy()
    out[..., 0] = cos[:, None] * x - sin[:, None] * y + tx[:, None]
    out[..., 1] = sin[:, None] * x + cos[:, None] * y + ty[:, None]
    return out


def crop_scale(clip: np.ndarray, scale_range, rng: np.random.Generator = None) -> np.ndarray:
    """Centre the bounding box of all confident joints (score != 0) and scale its longer side to span
    2 / ratio, ratio drawn from scale_range (its midpoint without rng); clip to [-1, 1].
    Fewer than 4 confident joints: all zeros. [M, T, V, 3] -> new array."""
    confident = clip[..., 2] != 0
    x, y = clip[..., 0][confident], clip[..., 1][confident]  # [P] each (min / max over a [P, 2] axis 0 are slow)
    if len(x) < 4:
        return np.zeros_like(clip)
    lo, hi = np.array([x.min(), y.min()]), np.array([x.max(), y.max()])
    ratio = rng.uniform(*scale_range) if rng is not None else 0.5 * (scale_range[0] + scale_range[1])
    size = (hi - lo).max() * ratio
    if size == 0:
        return np.zeros_like(clip)
    corner = (lo + hi - size) / 2
    out = clip.copy()
    out[..., :2] = ((clip[..., :2] - corner) / size - 0.5) * 2
    return np.clip(out, -1, 1)


def to_stream(clip: np.ndarray, stream: str) -> np.ndarray:
    """Joint coordinates -> the input stream; the confidence channel is kept. [M, T, V, 3] -> new array.
    bone: each joint minus its parent in the H36M tree (the pelvis, which has none, stays as it is);
    motion: the difference to the next frame (zero at the last frame)."""
    if stream not in STREAMS:
        raise ValueError(f"unknown stream '{stream}'")
    out = clip.copy()
    if stream.startswith("bone"):
        parents = np.array([max(p, 0) for p in H36M_PARENTS])
        out[..., 1:, :2] -= clip[..., parents[1:], :2]
    if stream.endswith("motion"):
        coords = out[..., :2].copy()
        out[..., :2] = 0.0
        out[:, :-1, :, :2] = coords[:, 1:] - coords[:, :-1]
    return out


def make_clip(keypoint: np.ndarray, score: np.ndarray, img_hw, clip_len: int, *,
              rng: np.random.Generator = None, random_move_on: bool = False, scale_range=(2.0, 2.0),
              legacy_conf_order: bool = False, stream: str = "joint", tracked: bool = False) -> np.ndarray:
    """The whole pipeline (module docstring). rng None: the deterministic test pipeline. `tracked`: the
    persons were selected and tracked already (`select_and_track`, as a Kinetics store holds them).
    keypoint [M, T, 17, 2] pixels, score [M, T, 17] -> float32 [2, clip_len, 17, 3]. A video in which
    nobody was detected (M = 0 or T = 0) gives all zeros, as crop_scale does for too few confident joints."""
    if keypoint.shape[0] == 0 or keypoint.shape[1] == 0:
        return np.zeros((NUM_PERSONS, clip_len, 17, 3), dtype=np.float32)
    if not tracked:
        keypoint, score = select_and_track(keypoint, score)
    frames = resample_indices(keypoint.shape[1], clip_len, rng)
    xy = normalize_to_image(keypoint[:, frames].astype(np.float32), img_hw)  # [M, clip_len, 17, 2]
    xy, conf = coco_to_h36m(xy, score[:, frames].astype(np.float32), legacy_conf_order)
    clip = np.zeros((NUM_PERSONS, clip_len, 17, 3), dtype=np.float32)
    clip[: len(xy), ..., :2] = xy
    clip[: len(xy), ..., 2] = conf
    if random_move_on:
        clip = random_move(clip, rng)
    clip = crop_scale(clip, scale_range, rng)
    if stream != "joint":
        clip = to_stream(clip, stream)
    return clip.astype(np.float32, copy=False)


@dataclass(frozen=True)
class ClipSettings:
    """A trained model's test pipeline: its clip length and the data options it was trained with."""
    clip_len: int
    scale_range: tuple = (2.0, 2.0)  # data.scale_range_test
    legacy_conf_order: bool = False
    stream: str = "joint"

    def clip(self, keypoint: np.ndarray, score: np.ndarray, img_hw) -> np.ndarray:
        """The deterministic test clip float32 [2, clip_len, 17, 3] of keypoint [M, T, 17, 2] pixels."""
        return make_clip(keypoint, score, img_hw, self.clip_len, scale_range=self.scale_range,
                         legacy_conf_order=self.legacy_conf_order, stream=self.stream)
