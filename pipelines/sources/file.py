"""Video files through OpenCV's FFmpeg backend; lossless, every frame in order."""

from __future__ import annotations

import cv2
import numpy as np

from pipelines.sources.base import RawFrame, Source, SourceError
from pipelines.sources.config import FileSourceConfig


class FileSource(Source):
    def __init__(self, config: FileSourceConfig) -> None:
        self.stream_id = config.id
        self._path = config.path
        self._capture: cv2.VideoCapture | None = None
        self._fps = 0.0
        self._delivered = 0
        self._pending: RawFrame | None = None

    def open(self) -> None:
        if not self._path.is_file():
            raise SourceError(f"source {self.stream_id!r}: video file not found: {self._path}")
        capture = cv2.VideoCapture(str(self._path), cv2.CAP_FFMPEG)
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"source {self.stream_id!r}: cannot open {self._path} as a video")
        ok, image = capture.read()
        if not ok or image is None:
            capture.release()
            raise SourceError(f"source {self.stream_id!r}: {self._path} holds no decodable video frame")
        self._fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
        self._capture = capture
        # The probe's frame is kept, not re-read: seeking back is unreliable for some codecs.
        self._pending = self._frame(image)

    def read(self) -> RawFrame | None:
        if self._capture is None:
            raise SourceError(f"source {self.stream_id!r} is not open")
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        ok, image = self._capture.read()
        return self._frame(image) if ok and image is not None else None

    def _frame(self, image: np.ndarray) -> RawFrame:
        assert self._capture is not None
        pts = self._capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        if pts <= 0.0 and self._delivered > 0 and self._fps > 0:
            pts = self._delivered / self._fps  # containers without timestamps
        self._delivered += 1
        return RawFrame(image, pts)

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None
