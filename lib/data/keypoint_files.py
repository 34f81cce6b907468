"""Per-video COCO-17 keypoint files: a sample of a PYSKL pickle, a .npz / .npy array (what
deployment/extract_poses.py writes) or a pose estimator's JSON. Read by deployment/infer_action.py and
the dataset builder (lib/data/build_dataset.py); numpy only."""
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lib.errors import DAMAGED_FILE_ERRORS, UserError

DEFAULT_IMG_SHAPE = (1080, 1920)  # (height, width) of the NTU videos


@dataclass
class Keypoints:
    keypoint: np.ndarray  # [M, T, 17, 2] pixels, COCO-17 order
    score: np.ndarray  # [M, T, 17]
    img_hw: tuple
    label: int = None  # known only for pickle samples


def _checked(keypoint, score, img_hw, source: str, label=None) -> Keypoints:
    keypoint, score = np.asarray(keypoint, dtype=np.float32), np.asarray(score, dtype=np.float32)
    if keypoint.ndim == 3:  # one person [T, 17, 2]
        keypoint, score = keypoint[None], score[None]
    if keypoint.ndim != 4 or keypoint.shape[2:] != (17, 2) or score.shape != keypoint.shape[:3]:
        raise UserError(f"{source}: expected COCO-17 keypoints [M, T, 17, 2] with scores [M, T, 17], "
                        f"got {keypoint.shape} and {score.shape}")
    if keypoint.shape[0] == 0 or keypoint.shape[1] == 0:
        raise UserError(f"{source}: no frames or no persons")
    if not (np.isfinite(keypoint).all() and np.isfinite(score).all()):
        raise UserError(f"{source}: NaN or infinite keypoints")
    return Keypoints(keypoint, score, tuple(int(v) for v in img_hw), label)


def read_pickle_sample(path, frame_dir: str) -> Keypoints:
    """A sample of a PYSKL pickle, from its packed store (lib/data/pyskl.py; built on the first use, through the
    restricted unpickler). A Kinetics table of contents reads its kpfiles from kpfiles/ beside it."""
    from lib.data.pyskl import load_store

    store = load_store(path)
    found = np.flatnonzero(store.frame_dir == frame_dir)
    if len(found) == 0:
        raise UserError(f"sample '{frame_dir}' is not in {path} (e.g. {store.frame_dir[0]})")
    i = int(found[0])
    return _checked(*store.raw_sample(i), store.img_hw[i], f"{path}:{frame_dir}", int(store.label[i]))


def write_npz(path, keypoints: Keypoints, frame_dir: str, **extra):
    """Write one video's keypoints as .npz in the PYSKL sample layout (keypoint, keypoint_score, img_shape,
    total_frames, frame_dir; `extra` adds more arrays, e.g. fps), atomically: a temporary file, then
    renamed, so an interrupted run never leaves a partial file that would be taken as done."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(tmp, keypoint=keypoints.keypoint.astype(np.float32), keypoint_score=keypoints.score.astype(np.float32),
             img_shape=np.array(keypoints.img_hw, dtype=np.int64), total_frames=np.int64(keypoints.keypoint.shape[1]),
             frame_dir=np.str_(frame_dir), **{k: np.asarray(v) for k, v in extra.items()})
    tmp.replace(path)


def read_array_file(path, img_hw) -> Keypoints:
    """.npz with `keypoint` [M, T, 17, 2] (or [T, 17, 2]) and `keypoint_score` (optional `img_shape`),
    or .npy [M, T, 17, 3] / [T, 17, 3] holding x, y, score."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"keypoint file not found: {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
        data = {name: loaded[name] for name in loaded.files} if isinstance(loaded, np.lib.npyio.NpzFile) else loaded
    except DAMAGED_FILE_ERRORS as e:
        raise UserError(f"cannot read {path}: {why_unreadable(path, e)}") from None
    if isinstance(data, dict):
        missing = {"keypoint", "keypoint_score"} - set(data)
        if missing:
            raise UserError(f"{path} lacks {', '.join(sorted(missing))}: expected arrays keypoint [M, T, 17, 2] "
                            "and keypoint_score [M, T, 17]")
        img = tuple(data["img_shape"]) if "img_shape" in data else img_hw
        return _checked(data["keypoint"], data["keypoint_score"], img, str(path))
    if data.ndim not in (3, 4) or data.shape[-1] != 3:
        raise UserError(f"{path}: expected [M, T, 17, 3] or [T, 17, 3] (x, y, score), got {data.shape}")
    return _checked(data[..., :2], data[..., 2], img_hw, str(path))


NUMPY_MAGIC = {b"\x93NUMPY": ".npy", b"PK\x03\x04": ".npz"}  # how a .npy file and a zip (.npz) begin


def why_unreadable(path: Path, error: Exception) -> str:
    """What is wrong with an array file that numpy could not read, in words a user can act on (numpy's own
    message suggests allow_pickle for any file it does not recognise, which is never the answer here)."""
    with open(path, "rb") as f:
        head = f.read(6)
    if not head:
        return "the file is empty (a pose extraction that stopped early?); extract the keypoints again"
    if not any(head.startswith(magic) for magic in NUMPY_MAGIC):
        return "it is no .npz or .npy file (it does not begin like one); keypoint files are .npz, .npy or .json"
    if "pickle" in str(error) or "Object arrays" in str(error):
        return ("it holds Python objects, which are never loaded (unpickling can run code): save numeric arrays, "
                "keypoint [M, T, 17, 2] and keypoint_score [M, T, 17], with np.savez")
    return (f"it is damaged, probably truncated ({type(error).__name__}: {' '.join(str(error).split())[:120]}); "
            "extract the keypoints again")


def _person_keypoints(person, source: str) -> tuple[np.ndarray, np.ndarray]:
    """One detected person -> ([17, 2], [17]). Accepts COCO results ('keypoints': 51 numbers x, y, score)
    and MMPose ('keypoints': 17 [x, y] pairs, 'keypoint_scores': 17 numbers)."""
    if not isinstance(person, dict) or "keypoints" not in person:
        raise UserError(f"{source}: every person needs 'keypoints'")
    points = np.asarray(person["keypoints"], dtype=np.float32)
    if points.shape == (51,):
        points = points.reshape(17, 3)
        return points[:, :2], points[:, 2]
    if points.shape == (17, 2) and "keypoint_scores" in person:
        return points, np.asarray(person["keypoint_scores"], dtype=np.float32).reshape(17)
    if points.shape == (17, 3):
        return points[:, :2], points[:, 2]
    raise UserError(f"{source}: 'keypoints' must be 51 numbers (x, y, score per COCO joint) or 17 [x, y] "
                    f"pairs with 'keypoint_scores'; got shape {points.shape}")


def read_json_file(path, img_hw) -> Keypoints:
    """Per-frame COCO-17 detections: a list of frames (or {'frames': [...], 'img_shape': [h, w]}); a frame is
    a list of persons or a dict with 'instances' (MMPose) or 'persons'. Persons are stacked in the order
    given; the preprocessing keeps the two most confident and tracks them."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"keypoint file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: not valid JSON ({' '.join(str(e).split())[:120]})") from None
    if isinstance(data, dict):
        img_hw = tuple(data.get("img_shape", img_hw))
        data = data.get("frames")
    if not isinstance(data, list) or not data:
        raise UserError(f"{path}: expected a non-empty list of frames")
    frames = []
    for i, frame in enumerate(data):
        persons = frame.get("instances", frame.get("persons")) if isinstance(frame, dict) else frame
        if not isinstance(persons, list):
            raise UserError(f"{path}: frame {i} must be a list of persons (or have 'instances' / 'persons')")
        frames.append([_person_keypoints(p, f"{path}: frame {i}") for p in persons])
    num_persons = max(1, max(len(f) for f in frames))
    keypoint = np.zeros((num_persons, len(frames), 17, 2), dtype=np.float32)
    score = np.zeros((num_persons, len(frames), 17), dtype=np.float32)
    for t, persons in enumerate(frames):
        for m, (points, scores) in enumerate(persons):
            keypoint[m, t], score[m, t] = points, scores
    return _checked(keypoint, score, img_hw, str(path))
