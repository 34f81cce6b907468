"""Live sources: a camera, a network stream that OpenCV opens (rtsp://, http://), or a video file played in
real time. A reader thread takes every frame as the source delivers it and keeps only the newest, as a
camera does: a consumer slower than the source gets the latest frame, and the frames in between are
dropped (counted). Each frame carries its number in the source and the time it was captured."""
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lib.errors import UserError
from lib.video.frames import require_cv2


@dataclass
class LiveFrame:
    index: int  # the frame's number in the source (0, 1, ...); gaps are dropped frames
    image: np.ndarray  # BGR [H, W, 3]
    captured: float  # time.perf_counter() when the reader got it


def open_capture(source):
    """An opened cv2.VideoCapture of a camera index (int), a video file or a URL; a one-line error if not."""
    cv2 = require_cv2()
    if isinstance(source, int):
        capture = cv2.VideoCapture(source)
        if not capture.isOpened():
            raise UserError(f"cannot open camera {source}; check the index (0 is the first camera)")
        return capture
    if "://" not in str(source) and not Path(source).is_file():
        raise UserError(f"video not found: {source}")
    capture = cv2.VideoCapture(str(source))
    if not capture.isOpened():
        raise UserError(f"cannot open stream {source}: OpenCV could not open or decode it")
    return capture


class LiveFrames:
    """The frames of a live source, newest first-come. `realtime`: the source is a file to be played at
    its frame rate (a camera or a stream sets its own pace). After the iteration, `received` counts the
    frames the source delivered, `dropped` those the consumer never got, and `lost` says whether the source
    stopped sending (a camera or stream that broke off; the end of a file is not a loss)."""

    def __init__(self, source, realtime: bool = False, capture=None):
        self.source, self.realtime = source, realtime
        self.capture = capture or open_capture(source)
        self.fps = self.capture.get(require_cv2().CAP_PROP_FPS) or 30.0
        self.is_file = not isinstance(source, int) and "://" not in str(source)
        self.received = self.dropped = 0
        self.lost = False
        self._latest, self._done = None, False
        self._ready = threading.Condition()

    def _read(self):
        start = time.perf_counter()
        try:
            while True:
                ok, image = self.capture.read()
                if not ok:
                    self.lost = not self.is_file
                    break
                if self.realtime:  # a file plays at its frame rate: wait for this frame's time
                    time.sleep(max(0.0, start + self.received / self.fps - time.perf_counter()))
                frame = LiveFrame(self.received, image, time.perf_counter())
                with self._ready:
                    if self._latest is not None:
                        self.dropped += 1
                    self._latest = frame
                    self.received += 1
                    self._ready.notify()
        finally:
            self.capture.release()
            with self._ready:
                self._done = True
                self._ready.notify()

    def __iter__(self):
        reader = threading.Thread(target=self._read, daemon=True)
        reader.start()
        while True:
            with self._ready:
                self._ready.wait_for(lambda: self._latest is not None or self._done)
                frame, self._latest = self._latest, None
            if frame is None:
                break
            yield frame
        reader.join()
        if self.received == 0:
            raise UserError(f"cannot read from {self.source}: no frame came")
