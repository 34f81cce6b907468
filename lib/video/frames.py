"""Frames from a video file, a folder of images or a camera, one at a time, and video writing; through
OpenCV (opencv-python, the same package the rtmlib and Ultralytics backends install, so a backend never
brings a second copy of cv2). Frames are BGR uint8 [H, W, 3], OpenCV's and the backends' convention."""
import os
from pathlib import Path

import numpy as np

from lib.errors import UserError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
INSTALL_VIDEO = "pip install -r requirements-video.txt"


def require_cv2():
    """OpenCV, or a one-line error naming the install command."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # FFmpeg's own log lines off (read at import)
    try:
        import cv2
    except ImportError:
        raise UserError(f"video input needs OpenCV: {INSTALL_VIDEO}") from None
    # Silent: a file OpenCV cannot open becomes our one-line error instead of its log lines.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    return cv2


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def video_name(path: Path) -> str:
    """The name a video's outputs take: a file's stem, or a folder of images' name."""
    return path.stem if path.is_file() else path.name


class FrameSource:
    """The frames of one video, read as they come. `source`: a video file, a folder of images (in name
    order, at `fps` frames a second) or a camera index (an int). `name` names the output of this video."""

    def __init__(self, source, fps: float = 30.0):
        self.cv2 = require_cv2()
        self.source, self.fps, self.frame_count, self.images, self.capture = source, float(fps), None, None, None
        if not isinstance(source, int) and Path(source).is_dir():
            self.name, self.images = video_name(Path(source)), _images(Path(source))
            if not self.images:
                raise UserError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            self.frame_count = len(self.images)
            return
        if isinstance(source, int):
            self.name = f"camera{source}"
            self.capture = self.cv2.VideoCapture(source)
            if not self.capture.isOpened():
                raise UserError(f"cannot open camera {source}; check the index (0 is the first camera)")
        else:
            path = Path(source)
            if not path.is_file():
                raise UserError(f"video not found: {path}")
            self.name = video_name(path)
            self.capture = self.cv2.VideoCapture(str(path))
            if not self.capture.isOpened():
                raise UserError(f"cannot read video {path}: not a video OpenCV can decode")
            self.frame_count = int(self.capture.get(self.cv2.CAP_PROP_FRAME_COUNT)) or None
        self.fps = self.capture.get(self.cv2.CAP_PROP_FPS) or self.fps

    def __iter__(self):
        if self.images is not None:
            for path in self.images:
                frame = self.cv2.imread(str(path), self.cv2.IMREAD_COLOR)
                if frame is None:
                    raise UserError(f"cannot read image {path}")
                yield frame
            return
        try:
            count = 0
            while True:
                ok, frame = self.capture.read()
                if not ok:
                    break
                count += 1
                yield frame
            if count == 0:
                raise UserError(f"cannot read video {self.source}: no frame could be decoded")
        finally:
            self.capture.release()


VIDEO_OUT_SUFFIXES = (".mp4", ".avi")


class VideoWriter:
    """Writes BGR frames to an .mp4 (MPEG-4 part 2, 'mp4v': OpenCV's wheels have no H.264 encoder) or
    .avi (MJPG) file, opened at the first frame."""

    def __init__(self, path, fps: float):
        self.cv2, self.path, self.fps, self.writer = require_cv2(), Path(path), fps, None
        if self.path.suffix.lower() not in VIDEO_OUT_SUFFIXES:
            raise UserError(f"{self.path}: the rendered video must be .mp4 or .avi")

    def write(self, frame: np.ndarray):
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fourcc = self.cv2.VideoWriter_fourcc(*("mp4v" if self.path.suffix.lower() == ".mp4" else "MJPG"))
            self.writer = self.cv2.VideoWriter(str(self.path), fourcc, self.fps, (frame.shape[1], frame.shape[0]))
            if not self.writer.isOpened():
                raise UserError(f"cannot write video {self.path}")
        self.writer.write(frame)

    def close(self):
        if self.writer is not None:
            self.writer.release()


def list_videos(paths) -> list:
    """The videos named by command-line arguments: a file is a video; a folder gives its video files and
    its subfolders of images (one video each), or is itself one video when it holds only images."""
    videos = []
    for arg in paths:
        path = Path(arg)
        if path.is_file():
            videos.append(path)
        elif path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
            folders = sorted(p for p in path.iterdir() if p.is_dir() and _images(p))
            if not files and not folders and _images(path):
                videos.append(path)
            else:
                videos.extend(files + folders)
        else:
            raise UserError(f"not found: {path} (give video files or folders of videos)")
    names = [video_name(p) for p in videos]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"two videos would both be written as {twice[0]}.npz; rename one of them")
    if not videos:
        raise UserError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) or image folders in {', '.join(map(str, paths))}")
    return videos
