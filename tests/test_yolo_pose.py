"""The yolo pose backend's own numpy code (lib/video/yolo_pose.py) on hand-worked cases: the letterbox and
its inverse, non-maximum suppression, and the decoding of a pose model's output through a real ONNX Runtime
session of a small stand-in model (a constant output of known persons). tests/test_video_backends.py
compares the real YOLO11n-pose with Ultralytics' own predictions, where the model has been exported."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from lib.errors import UserError
from lib.video.estimators import load_estimator
from lib.video.yolo_pose import PAD_VALUE, YoloPoseEstimator, letterbox, non_max_suppression

cv2 = pytest.importorskip("cv2")


def test_the_letterbox_scales_the_long_side_pads_to_the_stride_and_maps_back():
    frame = np.zeros((720, 1280, 3), np.uint8)
    frame[190:211, 190:211] = 255  # a white square centred on (200, 200)
    fitted = letterbox(frame, 640, 32)
    # half size: 640 x 360, padded by (640 - 360) % 32 = 24 rows, 12 above and 12 below
    assert fitted.image.shape == (1, 3, 384, 640) and fitted.image.dtype == np.float32
    assert (fitted.gain_x, fitted.gain_y, fitted.left, fitted.top) == (0.5, 0.5, 0, 12)
    assert np.allclose(fitted.image[0, :, :12], PAD_VALUE / 255) and np.allclose(fitted.image[0, :, -12:], PAD_VALUE / 255)
    assert fitted.image[0, :, 12 + 100, 100].min() == 1.0  # the square's centre, in every channel
    assert np.allclose(fitted.to_frame(np.array([[100.0, 112.0]]), (720, 1280)), [[200.0, 200.0]])
    assert np.allclose(fitted.to_frame(np.array([[-5.0, 1000.0]]), (720, 1280)), [[0.0, 720.0]])  # clipped


def test_the_letterbox_keeps_the_channel_order_of_ultralytics():
    frame = np.zeros((64, 64, 3), np.uint8)
    frame[..., 0] = 255  # blue in OpenCV's BGR
    image = letterbox(frame, 64, 32).image
    assert image.shape == (1, 3, 64, 64) and image[0, 2].min() == 1.0 and image[0, :2].max() == 0.0  # RGB


def test_non_max_suppression_keeps_the_best_of_each_overlapping_group():
    box = np.array([[0, 0, 10, 10],      # 0: kept, the best score
                    [0, 0, 10, 9],       # 1: IoU 0.9 with box 0: dropped
                    [20, 0, 30, 10],     # 2: disjoint: kept
                    [20, 0, 30, 7],      # 3: IoU 0.7 with box 2, not above the threshold: kept
                    [50, 50, 60, 60]],   # 4: alone: kept, lowest score last
                   dtype=np.float32)
    score = np.array([0.9, 0.95 - 0.1, 0.8, 0.7, 0.3], dtype=np.float32)
    assert non_max_suppression(box, score, 0.7).tolist() == [0, 2, 3, 4]
    assert non_max_suppression(box, score, 0.5).tolist() == [0, 2, 4]
    assert non_max_suppression(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.7).tolist() == []


def pose_model(path, rows: np.ndarray, **metadata):
    """An ONNX model with YOLO pose's input and metadata whose output0 is `rows` [1, 56, anchors]."""
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    output = helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(rows.shape))
    constant = helper.make_node("Constant", [], ["output0"], value=helper.make_tensor(
        "rows", TensorProto.FLOAT, rows.shape, rows.astype(np.float32).ravel()))
    model = helper.make_model(helper.make_graph([constant], "pose", [images], [output]),
                              opset_imports=[helper.make_opsetid("", 17)])
    meta = {"task": "pose", "kpt_shape": "[17, 3]", "stride": "32", "end2end": "False",
            "args": "{'dynamic': True, 'simplify': False}"} | metadata
    helper.set_model_props(model, meta)
    onnx.save(model, path)
    return path


def person(cx, cy, w, h, box_score, x0, y0):
    """One anchor's column: box centre and size, score, 17 keypoints at (x0 + 2k, y0 + k) scored 0.5 + k/100."""
    joints = [[x0 + 2 * k, y0 + k, 0.5 + k / 100] for k in range(17)]
    return np.array([cx, cy, w, h, box_score, *np.ravel(joints)], dtype=np.float32)


def test_the_output_of_a_pose_model_becomes_persons_in_frame_pixels(tmp_path):
    """A 1280 x 720 frame is fed as 640 x 384 (half size, 12 rows of padding above): the model's pixels map
    back by subtracting the padding and doubling. The second person overlaps the first (IoU 0.9) and is
    dropped; the third scores below 0.25."""
    rows = np.stack([person(100, 112, 40, 80, 0.9, 90, 80),
                     person(100, 114, 40, 80, 0.8, 91, 81),
                     person(300, 200, 40, 80, 0.2, 290, 180),
                     person(400, 212, 20, 20, 0.6, 395, 205)], axis=1)[None]  # [1, 56, 4]
    estimator = load_estimator(f"yolo:{pose_model(tmp_path / 'pose.onnx', rows)}")
    assert estimator.name == "yolo:pose.onnx"
    found = estimator.detect(np.zeros((720, 1280, 3), np.uint8))
    assert np.allclose(found.box, [[160, 120, 240, 280], [780, 380, 820, 420]])
    assert np.allclose(found.box_score, [0.9, 0.6])
    expected_first = np.stack([2 * (90 + 2 * np.arange(17)), 2 * (80 + np.arange(17) - 12)], axis=1)
    assert np.allclose(found.keypoint[0], expected_first)
    assert np.allclose(found.score[0], 0.5 + np.arange(17) / 100)
    keypoint, score = estimator(np.zeros((720, 1280, 3), np.uint8))
    assert keypoint.shape == (2, 17, 2) and score.shape == (2, 17) and keypoint.dtype == np.float32


def test_a_frame_without_anyone_gives_no_persons(tmp_path):
    rows = person(100, 112, 40, 80, 0.1, 90, 80)[None, :, None]  # [1, 56, 1], below the score threshold
    keypoint, score = load_estimator(f"yolo:{pose_model(tmp_path / 'pose.onnx', rows)}")(np.zeros((64, 64, 3), np.uint8))
    assert keypoint.shape == (0, 17, 2) and score.shape == (0, 17)


@pytest.mark.parametrize("metadata, message", [
    ({"task": "detect"}, "is not an Ultralytics pose model of the 17 COCO keypoints"),
    ({"kpt_shape": "[21, 3]"}, "is not an Ultralytics pose model of the 17 COCO keypoints"),
    ({"args": "{'dynamic': False}"}, "was exported with a fixed input size or end-to-end"),
    ({"end2end": "True"}, "was exported with a fixed input size or end-to-end"),
])
def test_a_model_the_backend_cannot_run_is_refused_in_one_line(tmp_path, metadata, message):
    rows = person(100, 112, 40, 80, 0.9, 90, 80)[None, :, None]
    with pytest.raises(UserError, match=message):
        YoloPoseEstimator(pose_model(tmp_path / "other.onnx", rows, **metadata))


def test_the_yolo_backend_runs_on_the_cpu_only():
    with pytest.raises(UserError, match="runs on the CPU"):
        load_estimator("yolo", device="cuda")
