"""Every source kind through OpenCV's ``VideoCapture``: files and network streams via FFmpeg, cameras via
V4L2, pipelines via GStreamer. They differ only in what is opened and with which options."""

from __future__ import annotations

import os

import cv2
import numpy as np

from pipelines.paths import file_problem
from pipelines.sources.base import RawFrame, Source, SourceError
from pipelines.sources.config import (
    CameraSourceConfig,
    FileSourceConfig,
    GStreamerSourceConfig,
    SourceBase,
    StreamSourceConfig,
    describe_source,
)
from pipelines.sources.timeline import Timeline, file_timeline


def silence_native_logs() -> None:
    """Stop OpenCV and FFmpeg writing their own lines to stderr, past Python's logging (which JSON logs need).

    FFmpeg's level is read when OpenCV first registers it, so this must come before the first capture.
    """
    os.environ["OPENCV_FFMPEG_LOGLEVEL"] = "-8"  # AV_LOG_QUIET
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def has_gstreamer() -> bool:
    """Whether this OpenCV was built with GStreamer (pip's opencv-python wheels are not)."""
    return any(line.strip().startswith("GStreamer:") and "YES" in line
               for line in cv2.getBuildInformation().splitlines())


# A file's read that fails is retried: a damaged packet costs its frame, and decoding goes on after it.
# This many failures in a row is the end of the file (or of what can be read of it).
UNDECODABLE_IN_A_ROW = 100


def decodes_with_ffmpeg(config: SourceBase) -> bool:
    """Files and network streams: decoded by FFmpeg, whose thread count the daemon sets."""
    return isinstance(config, FileSourceConfig | StreamSourceConfig)


def decode_threads_per_stream(ffmpeg_streams: int, configured: int | None, cores: int, minimum: int = 1) -> int:
    """FFmpeg threads for each stream (0: FFmpeg's own choice, a thread per core). The cores are divided
    among several streams, ``minimum`` at least each: each decodes fewer frames in parallel, and its threads
    wait on each other less."""
    if configured is not None:
        return configured
    return 0 if ffmpeg_streams <= 1 else max(minimum, cores // ffmpeg_streams)


def _target(config: SourceBase, decode_threads: int) -> tuple[str | int, int, list[int]]:
    """What ``VideoCapture`` opens, the backend, and its open parameters."""
    stall_ms = int(config.reconnect.stall_timeout_s * 1000)
    threads = [cv2.CAP_PROP_N_THREADS, decode_threads] if decode_threads else []
    if isinstance(config, FileSourceConfig):
        problem = file_problem(config.path)
        if problem:
            raise SourceError(f"source {config.id!r}: video {problem}")
        return str(config.path), cv2.CAP_FFMPEG, threads
    if isinstance(config, StreamSourceConfig):
        return config.url, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(config.open_timeout_s * 1000),
                                            cv2.CAP_PROP_READ_TIMEOUT_MSEC, stall_ms, *threads]
    if isinstance(config, CameraSourceConfig):
        params = []
        if config.width:
            params += [cv2.CAP_PROP_FRAME_WIDTH, config.width]
        if config.height:
            params += [cv2.CAP_PROP_FRAME_HEIGHT, config.height]
        return config.device, cv2.CAP_V4L2, params
    if isinstance(config, GStreamerSourceConfig):
        if not has_gstreamer():
            raise SourceError(f"source {config.id!r}: this OpenCV build has no GStreamer support "
                              "(opencv-python wheels lack it; use a distribution OpenCV built with GStreamer)")
        return config.pipeline, cv2.CAP_GSTREAMER, []
    raise SourceError(f"source {config.id!r}: unknown source type {config.type!r}")


class OpenCvSource(Source):
    def __init__(self, config: SourceBase, decode_threads: int = 0) -> None:
        """``decode_threads``: FFmpeg's decoding threads for a file or network stream (0: its default)."""
        self.stream_id = config.id
        self.config = config
        self.decode_threads = decode_threads
        self._capture: cv2.VideoCapture | None = None
        self._pending: RawFrame | None = None
        self._fps = 0.0
        self._delivered = 0

    @property
    def is_open(self) -> bool:
        return self._capture is not None

    def check(self) -> None:
        """Raise :class:`SourceError` for what no reconnect can fix (a missing file, no GStreamer)."""
        _target(self.config, self.decode_threads)

    def open(self) -> None:
        self.close()
        target, backend, params = _target(self.config, self.decode_threads)
        capture = cv2.VideoCapture(target, backend, params)
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"source {self.stream_id!r}: cannot open {describe_source(self.config)}")
        if isinstance(self.config, FileSourceConfig):  # (not an open parameter: set before the first read)
            capture.set(cv2.CAP_PROP_ORIENTATION_AUTO, float(self.config.rotation == "auto"))
        ok, image = capture.read()
        if not ok or image is None:
            capture.release()
            raise SourceError(f"source {self.stream_id!r}: {describe_source(self.config)} delivered no decodable "
                              "video frame")
        self._fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
        if isinstance(self.config, FileSourceConfig):
            self.timeline = file_timeline(self.config.path) or \
                Timeline(max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT))), estimated=True)
        self._capture = capture
        self._delivered = 0
        # The probe's frame is kept, not re-read: seeking back is unreliable, and impossible on a stream.
        self._pending = self._frame(image)

    def read(self) -> RawFrame | None:
        """The next frame; None at the end. For a file, reads that fail are retried (OpenCV decodes on past
        a damaged packet): the frame after them says how many there were; ``UNDECODABLE_IN_A_ROW`` of them
        in a row is the end. A live source's failed read is its end (the capture stage reconnects)."""
        if self._capture is None:
            raise SourceError(f"source {self.stream_id!r} is not open")
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        retries = UNDECODABLE_IN_A_ROW if isinstance(self.config, FileSourceConfig) else 0
        for undecodable in range(retries + 1):
            ok, image = self._capture.read()
            if ok and image is not None:
                return self._frame(image, undecodable)
        return None

    def _frame(self, image: np.ndarray, undecodable_before: int = 0) -> RawFrame:
        assert self._capture is not None
        pts = self._capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        if pts <= 0.0 and self._delivered > 0 and self._fps > 0:
            pts = self._delivered / self._fps  # containers and streams without timestamps
        self._delivered += 1
        return RawFrame(image, pts, undecodable_before)

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None
