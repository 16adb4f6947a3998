"""The source interface: something that yields decoded BGR frames with timestamps."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


class SourceError(RuntimeError):
    """A source cannot be opened or read; the message names the source and the cause."""


@dataclass(frozen=True, slots=True)
class RawFrame:
    image: np.ndarray  # HxWx3 uint8, BGR
    pts: float  # seconds from the start of the source
    undecodable_before: int = 0  # frames just before this one that could not be decoded (a damaged file)


class Source(ABC):
    stream_id: str

    @abstractmethod
    def open(self) -> None:
        """Open the source, raising :class:`SourceError` if it cannot deliver frames."""

    @abstractmethod
    def read(self) -> RawFrame | None:
        """The next frame, or None once the source has ended."""

    @abstractmethod
    def close(self) -> None:
        """Release the source; safe to call more than once."""
