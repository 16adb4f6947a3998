"""What a video file should hold, for counting what of it could not be read: its length in frames, and, at a
constant frame rate, the interval its timestamps step by.

Both decoders take it from the same place, FFmpeg's view of the container through PyAV, so that they count
the same file alike. A container that declares no frame count (Matroska, WebM, MPEG-TS) is expected to hold
its duration times its frame rate, as OpenCV's ``CAP_PROP_FRAME_COUNT`` has it: an estimate, one frame off at
times. A demuxer that resynchronises past damaged data says nothing about what it skipped; the timestamps
then jump, by a whole number of frame intervals at a constant rate. At a variable rate (FFmpeg's average
rate differs from the rate all timestamps fit) a jump means nothing, and is not counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Timeline:
    frames: int = 0  # the frames the file should hold (0: unknown)
    estimated: bool = False  # ``frames`` is the duration times the frame rate, not a count the container declares
    interval_s: float = 0.0  # a constant frame rate's interval (0: variable or unknown: timestamps not checked)

    def slot(self, since_s: float, from_index: int) -> int:
        """The index of the frame ``since_s`` seconds after frame ``from_index``, or -1 when timestamps are not
        checked. Never past the file's last frame: a timestamp that leaps beyond the file's length (a
        discontinuity) cannot make it lose more frames than it holds."""
        if not self.interval_s or since_s < 0:
            return -1
        return min(from_index + round(since_s / self.interval_s), self.frames - 1)


class FramePlacer:
    """Each frame read from a file at its index on the file's timeline, so that the frames lost before it (a
    gap in the indexes) are counted where they were lost.

    A frame's index is the furthest of: the next index, its place on the timeline, and the frames read plus
    the decoder's failures so far. A decoder can report a failure a few frames before or after the gap it
    leaves (frame threads): frames are then off their place for a while, and the loss counts once. The place
    is measured from the last frame that was at its place (the first frame read, to start with: a container's
    start time can lie before it), so that a frame rate a little off does not add up over a long file."""

    def __init__(self, timeline: Timeline) -> None:
        self._timeline = timeline
        self._read = 0
        self._decode_failures = 0
        self._anchor: tuple[float, int] | None = None  # (pts, index) of the last frame at its place

    def place(self, pts: float, undecodable_before: int, next_index: int) -> int:
        """The index of a frame read with timestamp ``pts`` (seconds) after ``undecodable_before`` frames the
        decoder could not decode, ``next_index`` being the index that follows the last one given out."""
        self._decode_failures += undecodable_before
        since, at = self._anchor or (pts, next_index)
        slot = self._timeline.slot(pts - since, at)
        index = max(next_index, slot, self._read + self._decode_failures)
        if index == slot or self._anchor is None:
            self._anchor = (pts, index)
        self._read += 1
        return index


def stream_timeline(container: Any, stream: Any) -> Timeline:
    """The timeline of a PyAV video ``stream`` of ``container``."""
    rate = stream.average_rate
    declared = max(0, stream.frames) or int(_tag(stream, "NUMBER_OF_FRAMES") or 0)
    if not rate:
        return Timeline(declared)
    constant = stream.base_rate is not None and abs(Fraction(stream.base_rate) / Fraction(rate) - 1) < 0.001
    frames = declared or round(_duration_s(container, stream) * rate)
    return Timeline(frames, not declared, float(1 / rate) if constant and frames else 0.0)


def _tag(stream: Any, name: str) -> str | None:
    """A Matroska track's statistics tag (mkvmerge and ffmpeg write them), with or without a language suffix."""
    for key, value in stream.metadata.items():
        if key.upper() == name or key.upper().startswith(f"{name}-"):
            return value
    return None


def _duration_s(container: Any, stream: Any) -> float:
    """The video stream's duration: its own, else its Matroska ``DURATION`` tag (HH:MM:SS.nnnnnnnnn), else the
    container's, which a longer audio track lengthens."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    hours, _, rest = (_tag(stream, "DURATION") or "").partition(":")
    minutes, _, seconds = rest.partition(":")
    try:
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return container.duration / 1_000_000 if container.duration else 0.0


def file_timeline(path: Path) -> Timeline | None:
    """The timeline of a file's first video stream; None when PyAV is missing or cannot open it."""
    try:
        import av
    except ImportError:
        return None
    try:
        with av.open(str(path)) as container:
            return stream_timeline(container, container.streams.video[0]) if container.streams.video else None
    except av.FFmpegError:
        return None
