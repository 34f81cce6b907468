"""YOLO pose through ONNX Runtime: Ultralytics' pose models (YOLO11n-pose by default), exported to ONNX
once by deployment/export_yolo_pose.py, run without torch or Ultralytics. The letterbox, the decoding of
the [1, 5 + 17*3, anchors] output and the non-maximum suppression are those of Ultralytics' predictor,
written here in numpy, so the keypoints are Ultralytics' own (tests/test_video_backends.py compares them
with a recording of Ultralytics on photographs)."""
import ast
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lib.errors import UserError
from lib.onnx_session import open_session

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = ROOT / "checkpoint" / "pose" / "yolo11n-pose.onnx"
EXPORT_HINT = "make yolo-pose exports it (or: python deployment/export_yolo_pose.py, see docs/video.md)"
PAD_VALUE = 114  # the grey Ultralytics pads its letterbox with


@dataclass
class PoseDetections:
    """The persons found in one frame, most confident first."""
    box: np.ndarray          # [P, 4] x0, y0, x1, y1 in pixels
    box_score: np.ndarray    # [P]
    keypoint: np.ndarray     # [P, 17, 2] pixels
    score: np.ndarray        # [P, 17]


@dataclass
class Letterbox:
    """Where a frame lies in the model's input: scaled by (gain_x, gain_y), then shifted by (left, top)."""
    image: np.ndarray  # [1, 3, H', W'] float32 RGB in [0, 1]
    gain_x: float
    gain_y: float
    left: int
    top: int

    def to_frame(self, xy: np.ndarray, frame_hw: tuple[int, int]) -> np.ndarray:
        """Model-input pixels [..., 2] -> frame pixels, clipped to the frame."""
        x = ((xy[..., 0] - self.left) / self.gain_x).clip(0, frame_hw[1])
        y = ((xy[..., 1] - self.top) / self.gain_y).clip(0, frame_hw[0])
        return np.stack([x, y], axis=-1)


def letterbox(frame: np.ndarray, size: int, stride: int) -> Letterbox:
    """Ultralytics' rectangular letterbox: the long side scaled to `size`, each side padded to a multiple of
    `stride`, half the padding on each side; BGR uint8 [H, W, 3] -> the model's input."""
    import cv2

    h, w = frame.shape[:2]
    ratio = min(size / h, size / w)
    new_w, new_h = max(round(w * ratio), 1), max(round(h * ratio), 1)
    pad_x, pad_y = (size - new_w) % stride / 2, (size - new_h) % stride / 2
    if (new_w, new_h) != (w, h):
        frame = cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, left = round(pad_y - 0.1), round(pad_x - 0.1)
    frame = cv2.copyMakeBorder(frame, top, round(pad_y + 0.1), left, round(pad_x + 0.1), cv2.BORDER_CONSTANT,
                               value=(PAD_VALUE,) * 3)
    image = frame[..., ::-1].transpose(2, 0, 1)[None].astype(np.float32) / 255  # [1, 3, H', W'] RGB
    return Letterbox(np.ascontiguousarray(image), new_w / w, new_h / h, left, top)


def non_max_suppression(box: np.ndarray, score: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes [N, 4] kept by greedy non-maximum suppression, highest score first: a box is
    dropped when its intersection over union with a kept one exceeds `iou_threshold`."""
    area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
    order = np.argsort(-score, kind="stable")
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        width = (np.minimum(box[best, 2], box[rest, 2]) - np.maximum(box[best, 0], box[rest, 0])).clip(0)
        height = (np.minimum(box[best, 3], box[rest, 3]) - np.maximum(box[best, 1], box[rest, 1])).clip(0)
        overlap = width * height
        order = rest[overlap / (area[best] + area[rest] - overlap) <= iou_threshold]
    return np.array(keep, dtype=np.int64)


class YoloPoseEstimator:
    """Called with a BGR frame [H, W, 3]: (keypoint [P, 17, 2] pixels, score [P, 17]) of the persons found.
    Ultralytics' prediction defaults: input size 640, box score above 0.25, IoU 0.7, at most 300 persons."""

    def __init__(self, model=None, imgsz: int = 640, conf: float = 0.25, iou: float = 0.7, max_det: int = 300):
        path = Path(model) if model else DEFAULT_MODEL
        if path.suffix == ".pt":
            raise UserError(f"{path} is a PyTorch model: the yolo backend runs ONNX; "
                            f"python deployment/export_yolo_pose.py --weights {path} exports it")
        if not path.is_file():
            raise UserError(f"YOLO pose model not found: {path}; {EXPORT_HINT}")
        self.session = open_session(path)
        meta = self.session.get_modelmeta().custom_metadata_map
        args = ast.literal_eval(meta.get("args", "{}"))
        if meta.get("task") != "pose" or json.loads(meta.get("kpt_shape", "null")) != [17, 3]:
            raise UserError(f"{path} is not an Ultralytics pose model of the 17 COCO keypoints; {EXPORT_HINT}")
        if meta.get("end2end") == "True" or not args.get("dynamic"):
            raise UserError(f"{path} was exported with a fixed input size or end-to-end; export it again with "
                            "python deployment/export_yolo_pose.py")
        self.name = f"yolo:{path.name}"
        self.stride = int(meta["stride"])
        self.imgsz, self.conf, self.iou, self.max_det = imgsz, conf, iou, max_det
        self.input = self.session.get_inputs()[0].name

    def detect(self, frame: np.ndarray) -> PoseDetections:
        """The persons in one BGR frame, with their boxes."""
        fitted = letterbox(frame, self.imgsz, self.stride)
        rows = self.session.run(None, {self.input: fitted.image})[0][0].T  # [anchors, 4 + 1 + 51]
        rows = rows[rows[:, 4] > self.conf]
        centre, size = rows[:, 0:2], rows[:, 2:4]
        box = np.concatenate([centre - size / 2, centre + size / 2], axis=1)  # [N, 4] in the input's pixels
        keep = non_max_suppression(box, rows[:, 4], self.iou)[:self.max_det]
        joints = rows[keep, 5:].reshape(-1, 17, 3)
        hw = frame.shape[:2]
        corners = fitted.to_frame(box[keep].reshape(-1, 2, 2), hw).reshape(-1, 4)
        return PoseDetections(corners.astype(np.float32), rows[keep, 4].astype(np.float32),
                              fitted.to_frame(joints[..., :2], hw).astype(np.float32),
                              joints[..., 2].astype(np.float32))

    def __call__(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        found = self.detect(frame)
        return found.keypoint, found.score
