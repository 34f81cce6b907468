"""Pose-estimator backends behind one small interface: an estimator is called with one BGR frame
[H, W, 3] and returns (keypoint [P, 17, 2] pixels, score [P, 17]) of the P persons it found, COCO-17
order. `load_estimator("NAME[:ARG]")` makes one:

* `rtmlib[:MODE]`: RTMPose with a YOLOX person detector through ONNX Runtime (rtmlib, Apache-2.0; MODE
  lightweight, balanced (default) or performance). It downloads its models on first use.
* `yolo[:MODEL]`: an Ultralytics YOLO pose model (AGPL-3.0) exported to ONNX, run by ONNX Runtime
  (lib/video/yolo_pose.py); default: checkpoint/pose/yolo11n-pose.onnx, which `make yolo-pose` exports.
* `stand-in:PICKLE`: not an estimator; reads the keypoints that a synthetic video made by
  lib/video/synthetic_video.py carries in its frames (tests and benchmarks of the code around an
  estimator).
"""
import numpy as np

from lib.errors import UserError

RTMLIB_MODES = ("lightweight", "balanced", "performance")
INSTALL_RTMLIB = "pip install -r requirements-rtmlib.txt"


def as_detections(keypoint, score) -> tuple[np.ndarray, np.ndarray]:
    """A backend's output as float32 ([P, 17, 2], [P, 17]); P may be 0."""
    keypoint = np.asarray(keypoint, dtype=np.float32).reshape(-1, 17, 2)
    score = np.asarray(score, dtype=np.float32).reshape(-1, 17)
    return keypoint, score


class RtmlibEstimator:
    def __init__(self, mode: str = "balanced", device: str = "cpu"):
        if mode not in RTMLIB_MODES:
            raise UserError(f"rtmlib mode '{mode}' is not one of {', '.join(RTMLIB_MODES)}")
        try:
            from rtmlib import Body
        except ImportError:
            raise UserError(f"the rtmlib backend needs rtmlib: {INSTALL_RTMLIB}") from None
        self.name = f"rtmlib:{mode}"
        try:
            self.body = Body(mode=mode, to_openpose=False, backend="onnxruntime", device=device)
        except OSError as e:  # urllib's URLError is an OSError: the first run could not download the models
            raise UserError(f"rtmlib could not load its models ({' '.join(str(e).split())[:120]}); its first run "
                            "downloads them, so run it once with internet access") from None

    def __call__(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return as_detections(*self.body(frame))


def load_estimator(spec: str, device: str = "cpu"):
    """The estimator named by `spec` (NAME[:ARG], see the module docstring)."""
    name, _, arg = spec.partition(":")
    if name == "rtmlib":
        return RtmlibEstimator(arg or "balanced", device)
    if name == "yolo":
        if device != "cpu":
            raise UserError("the yolo backend runs on the CPU (ONNX Runtime's CPU build): leave out --device")
        from lib.video.yolo_pose import YoloPoseEstimator

        return YoloPoseEstimator(arg or None)
    if name == "stand-in":
        from lib.video.synthetic_video import StampedFrameReader

        if not arg:
            raise UserError("the stand-in backend needs the synthetic pickle its videos were made from: "
                            "--backend stand-in:PICKLE")
        return StampedFrameReader(arg)
    raise UserError(f"unknown pose backend '{spec}': use rtmlib[:MODE], yolo[:MODEL] or stand-in:PICKLE")
