"""CPU inference with ONNX Runtime on COCO-17 keypoints (no torch): make clips with exactly the validation
preprocessing (lib.data.preprocess.make_clip) and classify them. Keypoint files are read by
lib.data.keypoint_files."""
import json
from pathlib import Path

import numpy as np

from lib.data.keypoint_files import Keypoints
from lib.data.preprocess import ClipSettings
from lib.engine.matching import UNKNOWN
from lib.errors import UserError
from lib.onnx_session import open_session

UNKNOWN_NAME = "unknown"


class OnnxActionModel:
    """An exported action model with the settings stored in its metadata."""

    def __init__(self, path, threads: int = None):
        path = Path(path)
        self.session = open_session(path, threads)
        meta = self.session.get_modelmeta().custom_metadata_map
        if "class_names" not in meta:
            raise UserError(f"{path} was not exported by deployment/deployment_action.py (no class names in it)")
        self.name = str(path)
        self.class_names = json.loads(meta["class_names"])
        self.task = meta.get("task", "class")  # class: logits; embed: embeddings (exports before embeddings: class)
        self.layout = meta["layout"]
        # exports older than the stream option: joints
        self.settings = ClipSettings(int(meta["clip_len"]), tuple(json.loads(meta["scale_range_test"])),
                                     json.loads(meta["legacy_conf_order"]), meta.get("stream", "joint"))
        self.clip_len = self.settings.clip_len
        self.output = self.session.get_outputs()[0].name  # action_label or embedding

    def clip(self, keypoints: Keypoints) -> np.ndarray:
        """The validation pipeline: float32 [2, clip_len, 17, 3]."""
        return self.settings.clip(keypoints.keypoint, keypoints.score, keypoints.img_hw)

    def run(self, clips: np.ndarray) -> np.ndarray:
        """[N, 2, T, 17, 3] -> the model's output: logits [N, K] or embeddings [N, D]."""
        if self.layout == "NTVC":
            clips = clips[:, 0]
        return self.session.run([self.output], {"pose2d": np.ascontiguousarray(clips, dtype=np.float32)})[0]

    def embed(self, clips: np.ndarray) -> np.ndarray:
        """[N, 2, T, 17, 3] -> unit-length embeddings [N, D] (an embedding model)."""
        return self.run(clips)

    def probabilities(self, clips: np.ndarray) -> np.ndarray:
        """[N, 2, T, 17, 3] -> softmax probabilities [N, K] (a classification model)."""
        logits = self.run(clips)
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


def classify_clips(model: OnnxActionModel, clips: np.ndarray, top_k: int = 5, gallery=None,
                   threshold: float = None) -> list[dict]:
    """Clips [N, 2, T, 17, 3] in one model call -> one dict each with the top-k classes: (label, name,
    probability) of a classification model, or with a `gallery` (lib.fewshot.gallery.Gallery) of an
    embedding model (label, name, similarity), with `class` the nearest gallery class or "unknown" below
    `threshold` (default: the gallery's suggestion)."""
    if gallery is not None:
        similarities, predicted = gallery.classify(model.embed(clips), threshold)
        return [{"class": UNKNOWN_NAME if best == UNKNOWN else gallery.class_names[best],
                 "top": [{"label": int(k), "name": gallery.class_names[k], "similarity": float(sims[k])}
                         for k in np.argsort(-sims)[:top_k]],
                 "similarities": sims}
                for sims, best in zip(similarities, predicted)]
    return [{"top": [{"label": int(k), "name": model.class_names[k], "probability": float(probs[k])}
                     for k in np.argsort(-probs)[:top_k]],
             "probabilities": probs}
            for probs in model.probabilities(clips)]


def predict(model: OnnxActionModel, keypoints: Keypoints, window: int = None, stride: int = None, top_k: int = 5,
            gallery=None, threshold: float = None):
    """One prediction per window (the whole sequence without a window): the frame range [start, end) and
    the keys of `classify_clips`."""
    num_frames = keypoints.keypoint.shape[1]
    starts = window_starts(num_frames, window, stride or window)
    span = num_frames if window is None else min(window, num_frames)
    clips = np.stack([model.clip(Keypoints(keypoints.keypoint[:, s:s + span], keypoints.score[:, s:s + span],
                                           keypoints.img_hw)) for s in starts])
    return [{"frames": [start, start + span], **result}
            for start, result in zip(starts, classify_clips(model, clips, top_k, gallery, threshold))]
