"""The source interface: something that yields decoded frames (BGR images, or a decoder's YUV planes) with
timestamps."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import cv2
import numpy as np

from pipelines.sources.config import SourceBase
from pipelines.sources.timeline import Timeline


class SourceError(RuntimeError):
    """A source cannot be opened or read; the message names the source and the cause."""


@dataclass(frozen=True, slots=True)
class Yuv420:
    """A decoded frame as the decoder holds it: 8-bit Y'CbCr planes, chroma at half the resolution both ways
    (FFmpeg's yuv420p and yuvj420p). Converting to RGB only after the frame is shrunk to the model's size saves
    a full-size conversion (a quarter of decoding a 1080p frame)."""

    y: np.ndarray  # H x W uint8
    u: np.ndarray  # ceil(H/2) x ceil(W/2) uint8 (Cb)
    v: np.ndarray  # ceil(H/2) x ceil(W/2) uint8 (Cr)
    full_range: bool  # JPEG range 0-255 (yuvj420p), else video range 16-235


# Quarter turns counter-clockwise (as a display matrix gives its rotation) as OpenCV's rotate codes.
_ROTATE = {1: cv2.ROTATE_90_COUNTERCLOCKWISE, 2: cv2.ROTATE_180, 3: cv2.ROTATE_90_CLOCKWISE}


def rotated(image: np.ndarray | Yuv420, degrees: float) -> np.ndarray | Yuv420:
    """``image`` turned ``degrees`` counter-clockwise, to the nearest quarter turn (a display matrix's rotation).

    Planes are turned one by one with ``cv2.rotate``, a copy (0.25 ms for a 1080p frame), and stay on the
    plane path: a rotated view (``np.rot90``) would be copied with its strides by every OpenCV call that
    shrinks it, ten times slower."""
    code = _ROTATE.get(round(degrees / 90) % 4)
    if code is None:
        return image
    if isinstance(image, Yuv420):
        return Yuv420(cv2.rotate(image.y, code), cv2.rotate(image.u, code), cv2.rotate(image.v, code),
                      image.full_range)
    return cv2.rotate(image, code)


@dataclass(frozen=True, slots=True)
class RawFrame:
    image: np.ndarray | Yuv420  # HxWx3 uint8 BGR, or planes
    pts: float  # seconds from the start of the source
    undecodable_before: int = 0  # frames just before this one that could not be decoded (a damaged file)

    @property
    def size_hw(self) -> tuple[int, int]:
        image = self.image.y if isinstance(self.image, Yuv420) else self.image
        return image.shape[0], image.shape[1]


class Source(ABC):
    stream_id: str
    config: SourceBase
    timeline: Timeline = Timeline()  # what a file should hold (length, frame interval); unknown when live

    @property
    @abstractmethod
    def is_open(self) -> bool:
        """Whether :meth:`open` succeeded and :meth:`close` was not called since."""

    @abstractmethod
    def check(self) -> None:
        """Raise :class:`SourceError` for what no reconnect can fix (a missing file, a missing decoder)."""

    @abstractmethod
    def open(self) -> None:
        """Open the source, raising :class:`SourceError` if it cannot deliver frames."""

    @abstractmethod
    def read(self) -> RawFrame | None:
        """The next frame, or None once the source has ended."""

    @abstractmethod
    def close(self) -> None:
        """Release the source; safe to call more than once."""
