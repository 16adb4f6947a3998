"""What flows between stages: frames, batches, results, and the end-of-stream marker."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pipelines.preprocess.buffers import InputBuffer


@dataclass(slots=True)
class FrameTimes:
    """Monotonic timestamps (``time.perf_counter()`` seconds) of a frame's way through the stages."""

    read_start: float
    read_end: float
    shrink_s: float = 0.0  # the capture thread's share of preprocessing (FrameShrinker)
    preprocess_start: float = 0.0
    preprocess_end: float = 0.0
    inference_start: float = 0.0
    inference_end: float = 0.0
    postprocess_start: float = 0.0


@dataclass(slots=True)
class Frame:
    """A frame from one source, shrunk to the model's geometry by its capture thread: ``pixels`` is
    ``(3, H, W)`` uint8 RGB, dropped once normalised into a batch buffer."""

    stream_id: str
    index: int  # position in the source, counting from 0
    pts: float  # source timestamp, seconds
    capture_ns: int  # wall clock at capture, unix nanoseconds
    times: FrameTimes
    pixels: np.ndarray | None


@dataclass(slots=True)
class Batch:
    """Preprocessed frames occupying the first ``len(frames)`` rows of a pooled input buffer."""

    frames: list[Frame]
    buffer: InputBuffer
    scores: np.ndarray | None = None  # (len(frames), classes) logits, set by the inference stage


class DropCounts:
    """One registration's dropped frames by cause: each drop is counted in the stream's metric and kept here,
    for the registration's end status. Drops come from its capture thread and from the frame mux's taker,
    so the counts are kept under a lock."""

    def __init__(self, causes: tuple[str, ...], count_metric: Callable[[str], None]) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(causes, 0)
        self._count_metric = count_metric

    def __call__(self, cause: str, frames: int = 1) -> None:
        with self._lock:
            self._counts[cause] += frames
        self._count_metric(cause, frames)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """Sent by a capture stage after its source's last frame; forwarded by every stage after it."""

    stream_id: str
    frames: int = field(default=0)  # how many frames were read from the source
    state: str = "ended"  # or "failed": a live source whose reconnect attempts ran out, a source that broke,
    # or a stream cut short by the daemon's failure
    previous_state: str | None = None
    detail: str = ""  # why it failed, or what was missing (published in the final status message)
    complete: bool = True  # False: not read in full (failed, undecodable frames, shorter than declared)
    removed: bool = False  # its stream was removed from the configuration: gone, not only ended
    missing: int = 0  # frames a file's container declares that were never read (it was cut short)
    # its dropped frames by cause; read when the end is published, after every frame before it was taken
    drops: DropCounts | None = None
