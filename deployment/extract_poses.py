"""Videos (or folders of frames) -> COCO-17 keypoints per frame and person, one .npz per video.

    python deployment/extract_poses.py --videos my_videos/ --out data/keypoints/
    python deployment/extract_poses.py --videos a.mp4 b.mp4 frames_folder/ --out data/keypoints/ --backend rtmlib:performance

Each NAME.npz holds keypoint [M, T, 17, 2] (pixels), keypoint_score [M, T, 17], img_shape, total_frames,
frame_dir, fps: the PYSKL sample layout that deployment/infer_action.py and python -m
lib.data.build_dataset read. Backends: lib/video/estimators.py. Formats: deployment/inference.md.
"""
import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.cli import run_main  # noqa: E402
from lib.video.estimators import load_estimator  # noqa: E402
from lib.video.extract import describe, extract_videos  # noqa: E402
from lib.video.frames import list_videos  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", nargs="+", required=True, metavar="PATH",
                   help="video files, folders of videos, or folders of images (one video each)")
    p.add_argument("--out", required=True, help="folder for the NAME.npz files")
    p.add_argument("--backend", default="rtmlib",
                   help="pose estimator: rtmlib[:lightweight|balanced|performance] (default), yolo[:MODEL.onnx] "
                        "(AGPL-3.0; make yolo-pose exports it) or stand-in:PICKLE (tests)")
    p.add_argument("--device", default="cpu", help="cpu or cuda, for the rtmlib estimator (yolo runs on the CPU)")
    p.add_argument("--max-persons", type=int, default=2,
                   help="keep the persons tracked with the highest total confidence (default 2, as the model)")
    p.add_argument("--fps", type=float, default=30.0, help="frame rate of image folders (default 30)")
    p.add_argument("--overwrite", action="store_true", help="extract videos again whose .npz exists")
    args = p.parse_args(argv)
    if args.max_persons < 1:
        p.error("--max-persons must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    videos = list_videos(args.videos)
    estimator = load_estimator(args.backend, args.device)
    summary = extract_videos(videos, args.out, estimator, args.max_persons, args.fps, args.overwrite)
    print(describe(summary))
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
