"""CPU inference with ONNX Runtime on COCO-17 keypoints (no torch): read keypoints from a PYSKL pickle,
a .npz/.npy array or a pose estimator's JSON, make clips with exactly the validation preprocessing
(lib.data.preprocess.make_clip) and classify them."""
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lib.data.preprocess import make_clip
from lib.errors import UserError

DEFAULT_IMG_SHAPE = (1080, 1920)  # (height, width) of the NTU videos


@dataclass
class Keypoints:
    keypoint: np.ndarray  # [M, T, 17, 2] pixels, COCO-17 order
    score: np.ndarray  # [M, T, 17]
    img_hw: tuple
    label: int = None  # known only for pickle samples


class OnnxActionModel:
    """An exported action model with the settings stored in its metadata."""

    def __init__(self, path, threads: int = None):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise UserError(f"ONNX model not found: {path}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for unreadable models
            raise UserError(f"cannot load ONNX model {path}: {' '.join(str(e).split())[:200]}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if "class_names" not in meta:
            raise UserError(f"{path} was not exported by deployment/deployment_action.py (no class names in it)")
        self.class_names = json.loads(meta["class_names"])
        self.clip_len = int(meta["clip_len"])
        self.layout = meta["layout"]
        self.scale_range = json.loads(meta["scale_range_test"])
        self.legacy_conf_order = json.loads(meta["legacy_conf_order"])
        self.stream = meta.get("stream", "joint")  # exports older than the stream option: joints

    def clip(self, keypoints: Keypoints) -> np.ndarray:
        """The validation pipeline: float32 [2, clip_len, 17, 3]."""
        return make_clip(keypoints.keypoint, keypoints.score, keypoints.img_hw, self.clip_len,
                         scale_range=self.scale_range, legacy_conf_order=self.legacy_conf_order,
                         stream=self.stream)

    def probabilities(self, clips: np.ndarray) -> np.ndarray:
        """[N, 2, T, 17, 3] -> softmax probabilities [N, K]."""
        if self.layout == "NTVC":
            clips = clips[:, 0]
        logits = self.session.run(["action_label"], {"pose2d": np.ascontiguousarray(clips, dtype=np.float32)})[0]
        logits = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)


def window_starts(num_frames: int, window: int, stride: int) -> list[int]:
    """Start frames of windows of `window` frames every `stride` frames; the last one ends at the end."""
    if window is None or window >= num_frames:
        return [0]
    starts = list(range(0, num_frames - window + 1, stride))
    if starts[-1] + window < num_frames:
        starts.append(num_frames - window)
    return starts


def predict(model: OnnxActionModel, keypoints: Keypoints, window: int = None, stride: int = None, top_k: int = 5):
    """One prediction per window (the whole sequence without a window): dicts with the frame range and the
    top-k (class, name, probability)."""
    num_frames = keypoints.keypoint.shape[1]
    starts = window_starts(num_frames, window, stride or window)
    span = num_frames if window is None else min(window, num_frames)
    clips = np.stack([model.clip(Keypoints(keypoints.keypoint[:, s:s + span], keypoints.score[:, s:s + span],
                                           keypoints.img_hw)) for s in starts])
    probabilities = model.probabilities(clips)
    results = []
    for start, probs in zip(starts, probabilities):
        order = np.argsort(-probs)[:top_k]
        results.append({
            "frames": [start, start + span],
            "top": [{"label": int(k), "name": model.class_names[k], "probability": float(probs[k])} for k in order],
            "probabilities": probs,
        })
    return results


# ---------------------------------------------------------------------------------------------------------
# Input formats


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
    """A sample of a PYSKL pickle, read through the restricted unpickler."""
    from lib.data.pyskl import read_pickle

    for ann in read_pickle(path)["annotations"]:
        if ann.get("frame_dir") == frame_dir:
            return _checked(ann["keypoint"], ann["keypoint_score"], ann["img_shape"], f"{path}:{frame_dir}",
                            int(ann["label"]))
    raise UserError(f"sample '{frame_dir}' is not in {path}")


def read_array_file(path, img_hw) -> Keypoints:
    """.npz with `keypoint` [M, T, 17, 2] (or [T, 17, 2]) and `keypoint_score` (optional `img_shape`),
    or .npy [M, T, 17, 3] / [T, 17, 3] holding x, y, score."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"keypoint file not found: {path}")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {' '.join(str(e).split())[:200]}") from None
    if path.suffix == ".npz":
        missing = {"keypoint", "keypoint_score"} - set(data.files)
        if missing:
            raise UserError(f"{path} lacks {', '.join(sorted(missing))}: expected arrays keypoint [M, T, 17, 2] "
                            "and keypoint_score [M, T, 17]")
        img = tuple(data["img_shape"]) if "img_shape" in data.files else img_hw
        return _checked(data["keypoint"], data["keypoint_score"], img, str(path))
    if data.ndim not in (3, 4) or data.shape[-1] != 3:
        raise UserError(f"{path}: expected [M, T, 17, 3] or [T, 17, 3] (x, y, score), got {data.shape}")
    return _checked(data[..., :2], data[..., 2], img_hw, str(path))


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
