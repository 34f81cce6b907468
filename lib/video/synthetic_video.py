"""Synthetic videos with known keypoints, and the stand-in estimator that reads them back: for testing and
benchmarking everything around a pose estimator (decoding, tracking, windows, rendering, the dataset
builder) without one.

Each frame shows the skeletons of one sample of a synthetic PYSKL pickle (lib/data/synthetic.py), scaled
to the video size, and carries a stamp: a row of black and white squares in the top-left corner giving
the sample's position in the pickle and the frame number. `StampedFrameReader` decodes the stamp and
returns that sample's keypoints at that frame (scaled to the frame), so its output is known exactly;
a frame lost or repeated by the decoder shows up as wrong keypoints."""
import argparse
import sys
from pathlib import Path

import numpy as np

from lib.data.pyskl import read_pickle
from lib.errors import UserError
from lib.video.frames import VideoWriter
from lib.video.render import draw_skeletons

STAMP_BITS = 24  # 12 bits of sample position, 12 bits of frame number
FRAME_BITS = 12
SQUARE = 8  # pixels per stamp square
BACKGROUND = 96


def stamp(frame: np.ndarray, sample: int, t: int):
    """Write (sample, t) into the frame's top-left corner (in place)."""
    code = (sample << FRAME_BITS) | t
    for bit in range(STAMP_BITS):
        frame[:SQUARE, bit * SQUARE:(bit + 1) * SQUARE] = 255 if code >> bit & 1 else 0


def read_stamp(frame: np.ndarray) -> tuple[int, int]:
    """(sample, t) of a stamped frame; each square is read at its centre, which survives lossy codecs."""
    middle = slice(SQUARE // 4, SQUARE - SQUARE // 4)
    code = 0
    for bit in range(STAMP_BITS):
        square = frame[middle, bit * SQUARE + SQUARE // 4:(bit + 1) * SQUARE - SQUARE // 4]
        code |= int(square.mean() > 127) << bit
    return code >> FRAME_BITS, code & ((1 << FRAME_BITS) - 1)


def _scale(ann: dict, height: int) -> float:
    return height / float(ann["img_shape"][0])


def _video_size(ann: dict, height: int) -> tuple[int, int]:
    """(height, width), even numbers (codecs want them), the sample's aspect ratio."""
    h, w = ann["img_shape"]
    return height, 2 * round(w * height / h / 2)


def write_video(ann: dict, sample: int, path, height: int = 180, fps: float = 30.0):
    """One sample of a synthetic pickle as a video: its persons' skeletons on a grey background, stamped."""
    if ann["total_frames"] >= 1 << FRAME_BITS:
        raise UserError(f"sample {ann['frame_dir']} has more than {1 << FRAME_BITS} frames")
    size, scale = _video_size(ann, height), _scale(ann, height)
    writer = VideoWriter(path, fps)
    for t in range(ann["total_frames"]):
        frame = np.full(size + (3,), BACKGROUND, dtype=np.uint8)
        draw_skeletons(frame, ann["keypoint"][:, t] * scale, ann["keypoint_score"][:, t])
        stamp(frame, sample, t)
        writer.write(frame)
    writer.close()


class StampedFrameReader:
    """The stand-in estimator: the keypoints a stamped frame of `pickle_path`'s synthetic video shows,
    scaled to the frame; persons with no visible joint in that frame are not reported."""

    def __init__(self, pickle_path):
        self.name = "stand-in"
        self.annotations = read_pickle(pickle_path)["annotations"]

    def __call__(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sample, t = read_stamp(frame)
        if sample >= len(self.annotations) or t >= self.annotations[sample]["total_frames"]:
            raise ValueError(f"frame stamp ({sample}, {t}) names no frame of the pickle: the video was decoded wrongly")
        ann = self.annotations[sample]
        scale = _scale(ann, frame.shape[0])
        present = ann["keypoint_score"][:, t].max(axis=1) > 0
        return (ann["keypoint"][present, t] * scale).astype(np.float32), ann["keypoint_score"][present, t]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m lib.video.synthetic_video",
                                description="Write the samples of a synthetic pickle as stamped videos.")
    p.add_argument("--pickle", required=True, help="made by python -m lib.data.synthetic")
    p.add_argument("--out", required=True, help="folder for the videos (FRAME_DIR.mp4)")
    chosen = p.add_mutually_exclusive_group()
    chosen.add_argument("--samples", type=int, help="only the first N samples")
    chosen.add_argument("--frame-dir", nargs="+", help="only these samples")
    p.add_argument("--height", type=int, default=180, help="video height in pixels (default 180)")
    args = p.parse_args(argv)
    annotations = read_pickle(args.pickle)["annotations"]
    chosen = [i for i, ann in enumerate(annotations) if ann["frame_dir"] in args.frame_dir] if args.frame_dir \
        else range(min(args.samples or len(annotations), len(annotations)))
    missing = set(args.frame_dir or ()) - {annotations[i]["frame_dir"] for i in chosen}
    if missing:
        raise UserError(f"{args.pickle} has no sample {sorted(missing)[0]}")
    for i in chosen:
        write_video(annotations[i], i, Path(args.out) / f"{annotations[i]['frame_dir']}.mp4", args.height)
    print(f"{len(chosen)} videos in {args.out}")


if __name__ == "__main__":
    from lib.cli import run_main

    sys.exit(run_main(main))
