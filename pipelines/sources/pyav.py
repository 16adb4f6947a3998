"""Files decoded by FFmpeg through PyAV (``decoder = "pyav"``, the default for files).

OpenCV's ``read()`` converts every decoded frame to a full-size BGR image, which the capture thread then
shrinks to the model's size: at 1080p the conversion is a quarter of the decoding. Here the decoder's
4:2:0 planes are handed on as they are (:class:`~pipelines.sources.base.Yuv420`, views of the decoder's
buffers), and only the model-sized result is converted. Other pixel formats are converted to BGR by
FFmpeg, as OpenCV would. A damaged file is read past its bad packets like OpenCV's (each one counted as an
undecodable frame), and past its demuxer's failures (an MPEG-TS's EAGAIN on garbage, an I/O error), which
OpenCV retries too; ``UNDECODABLE_IN_A_ROW`` failures in a row are the end. A frame is turned as its display
matrix says (``rotation = "auto"``), as OpenCV turns it.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np

from pipelines.paths import file_problem
from pipelines.sources.base import RawFrame, Source, SourceError, Yuv420, rotated
from pipelines.sources.config import FileSourceConfig, describe_source
from pipelines.sources.opencv import UNDECODABLE_IN_A_ROW
from pipelines.sources.timeline import stream_timeline

# FFmpeg's planar 4:2:0 formats handed on as planes, and whether each is full (JPEG) range.
PLANAR_420 = {"yuv420p": False, "yuvj420p": True}

# The fewest FFmpeg threads a file gets when the cores are shared out among streams. Between two frames the
# reading thread needs the GIL (to demux, to wrap the frame); decoding in the reader itself (one thread)
# stalls whenever it waits for the GIL, where a second, frame thread goes on decoding meanwhile. Measured at
# 4 x 720p on 2 cores: the whole daemon 10-15 % faster with 2 threads a stream than with 1 (OpenCV's read(),
# one GIL-free call a frame, gains nothing from it).
MIN_DECODE_THREADS = 2


def import_av() -> ModuleType:
    """PyAV, or a :class:`SourceError` that says how to install it."""
    try:
        import av
    except ImportError as exc:
        raise SourceError("decoder = \"pyav\" (the default for files) needs PyAV, a dependency of nfnet-stream "
                          "that is not installed: pip install av (or decoder = \"opencv\")") from exc
    return av


def _view(plane: Any) -> np.ndarray:
    """A decoded frame's plane as a (height, width) view, without its row padding."""
    return np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:plane.height, :plane.width]


def _packets(av: ModuleType, container: Any, stream: Any) -> Iterator[Any | None]:
    """The stream's packets to the end of the file (PyAV ends them with a flush); None for each read that
    fails (an I/O error), after which reading goes on from where it stopped."""
    while True:
        try:
            yield from container.demux(stream)
            return
        except av.FFmpegError:
            yield None


class PyAvFileSource(Source):
    def __init__(self, config: FileSourceConfig, decode_threads: int = 0) -> None:
        """``decode_threads``: FFmpeg's decoding threads (0: its default, one per core)."""
        self.stream_id = config.id
        self.config = config
        self.decode_threads = decode_threads
        self._container: Any = None
        self._frames: Iterator[RawFrame] | None = None
        self._pending: RawFrame | None = None

    @property
    def is_open(self) -> bool:
        return self._container is not None

    def check(self) -> None:
        problem = file_problem(self.config.path)
        if problem:
            raise SourceError(f"source {self.stream_id!r}: video {problem}")
        import_av()

    def open(self) -> None:
        self.close()
        self.check()
        av = import_av()
        where = f"source {self.stream_id!r}: {describe_source(self.config)}"
        try:
            container = av.open(str(self.config.path))
        except av.FFmpegError as exc:
            raise SourceError(f"{where} cannot be opened: {exc}") from exc
        if not container.streams.video:
            container.close()
            raise SourceError(f"{where} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame and slice threads, as OpenCV sets them
        if self.decode_threads:
            stream.thread_count = self.decode_threads
        self._container = container
        self.timeline = stream_timeline(container, stream)
        self._frames = self._decode(av, container, stream)
        self._pending = next(self._frames, None)
        if self._pending is None:
            self.close()
            raise SourceError(f"{where} delivered no decodable video frame")

    def read(self) -> RawFrame | None:
        """The next frame; None at the end of the file (or of what can be read of it)."""
        if self._frames is None:
            raise SourceError(f"source {self.stream_id!r} is not open")
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        return next(self._frames, None)

    def _decode(self, av: ModuleType, container: Any, stream: Any) -> Iterator[RawFrame]:
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        rate = float(stream.average_rate or 0)
        delivered = undecodable = failures = 0  # failures: reads and decodes that failed in a row
        turn = self.config.rotation == "auto"
        for packet in _packets(av, container, stream):
            if failures >= UNDECODABLE_IN_A_ROW:
                return
            if packet is None:  # a read that failed: what it cost shows in the next frame's timestamp
                failures += 1
                continue
            try:
                frames = packet.decode()
            except av.FFmpegError:  # a damaged packet: its frame is lost, decoding goes on after it
                undecodable, failures = undecodable + 1, failures + 1
                continue
            for frame in frames:
                full_range = PLANAR_420.get(frame.format.name)
                # (frame.planes makes new plane objects at each access: taken once)
                image = (frame.to_ndarray(format="bgr24") if full_range is None
                         else Yuv420(*map(_view, frame.planes), full_range))
                if turn and frame.rotation:
                    image = rotated(image, frame.rotation)
                pts = frame.time - start if frame.time is not None else (delivered / rate if rate else 0.0)
                yield RawFrame(image, pts, undecodable)
                delivered, undecodable, failures = delivered + 1, 0, 0

    def close(self) -> None:
        if self._container is not None:
            self._frames = self._pending = None
            self._container.close()
            self._container = None
