"""CPU inference with ONNX Runtime on COCO-17 keypoints (no torch): make clips with exactly the validation
preprocessing (lib.data.preprocess.make_clip) and classify them. Keypoint files are read by
lib.data.keypoint_files."""
import json
from pathlib import Path

import numpy as np

from lib.data.keypoint_files import Keypoints
from lib.data.preprocess import make_clip
from lib.errors import UserError


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
