"""Capture stage: reads one source, shrinks each frame to the model's geometry, and hands it to the frame mux.

Shrinking here, right after decoding, spreads the heaviest per-frame CPU work over one thread per stream
(OpenCV releases the GIL for decoding and resizing), and keeps what waits in the mux small.

Every frame read gets the next index of its stream, whether it is then classified or dropped, so the
gap between two published frame indexes is exactly the number of frames dropped in between. A live
source that fails, ends unexpectedly or stalls is reconnected with jittered exponential backoff; a file
that ends, ends its stream. A source that cannot be reached stays in ``reconnecting`` (or ``failed``
after ``reconnect.max_attempts``): the daemon never exits because one stream failed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from pipelines.frames import EndOfStream, Frame, FrameTimes
from pipelines.log_context import stream_context
from pipelines.preprocess.transform import FrameShrinker
from pipelines.runtime.frame_mux import FrameMux
from pipelines.runtime.metrics import PipelineMetrics
from pipelines.runtime.stage import Stage
from pipelines.runtime.stream_state import StreamStates
from pipelines.sources.backoff import backoff_delay
from pipelines.sources.base import RawFrame, SourceError
from pipelines.sources.config import FileSourceConfig, is_live
from pipelines.sources.opencv import OpenCvSource

log = logging.getLogger(__name__)


class CaptureStage(Stage):
    def __init__(self, source: OpenCvSource, shrink: FrameShrinker, mux: FrameMux, states: StreamStates,
                 stop: threading.Event, abort: threading.Event, metrics: PipelineMetrics) -> None:
        super().__init__(f"capture-{source.stream_id}", abort)
        self._source = source
        self._shrink = shrink
        self._frame_size: tuple[int, int] | None = None
        self._size_changes = 0
        self._resolution_changes = metrics.resolution_changes.labels(stream=source.stream_id)
        self._config = source.config
        self._live = is_live(self._config)
        self._paced = isinstance(self._config, FileSourceConfig) and self._config.pace
        self._mux = mux
        self._states = states
        self._stop_reading = stop
        self._captured = metrics.frames.labels(stream=source.stream_id)
        self._drop: Callable[[str], None] = metrics.dropper(source.stream_id)
        self._index = 0  # the next frame's index in this stream
        self._last_accepted = float("-inf")
        self._pace_origin: tuple[float, float] | None = None  # (perf_counter, pts) of the first paced frame
        self._gave_up = ""  # why the stream failed, if it did
        self._context = stream_context(source.stream_id)

    def loop(self) -> None:
        stream_id = self._source.stream_id
        final_state = "ended"
        try:
            final_state = self._capture()
        finally:
            self._source.close()
        # The output stage announces the end, after this stream's last label.
        previous = self._states.get(stream_id)
        detail = "; ".join(filter(None, (self._gave_up, f"{self._index} frames read")))
        self._states.set(stream_id, final_state, detail, announce=False)
        self._mux.put(stream_id, EndOfStream(stream_id, self._index, final_state, previous), self.abort)

    def _capture(self) -> str:
        """Read until the source ends, fails for good, or the pipeline stops; return the final state."""
        failures = 0
        opened = self._source.is_open
        if opened:
            self._states.set(self._source.stream_id, "running")
        while not self._stop_reading.is_set():
            if not opened:
                try:
                    self._states.set(self._source.stream_id, "reconnecting" if failures else "connecting")
                    self._source.open()
                except SourceError as exc:
                    if not self._live:
                        raise
                    failures += 1
                    if self._give_up(failures, str(exc)):
                        return "failed"
                    continue
                opened, failures = True, 0
                self._pace_origin = None
                self._states.set(self._source.stream_id, "running")
            read_start = time.perf_counter()
            raw = self._source.read()
            if raw is None:
                if not self._live or self._paced:
                    log.info("stream %s: source ended after %d frames", self._source.stream_id, self._index,
                             extra=self._context)
                    return "ended"
                # A live source that stops delivering: a lost connection, a stall past the read timeout,
                # or a frame that would not decode. Count it as one lost frame and reconnect.
                self._index += 1
                self._drop("decode_error")
                self._source.close()
                opened = False
                failures += 1
                if self._give_up(failures, "the source stopped delivering frames"):
                    return "failed"
                continue
            self._hand_on(raw, read_start)
        log.info("stream %s: capture stopped after %d frames", self._source.stream_id, self._index,
                 extra=self._context)
        return "ended"

    def _hand_on(self, raw: RawFrame, read_start: float) -> None:
        index = self._index
        self._index += 1
        self._captured.inc()
        read_end = time.perf_counter()
        if self._paced:
            # The frame exists from the moment a camera would deliver it (its due time), decoded: the wait
            # for that moment is not latency, and a reader that falls behind the clock is late, exactly as
            # frames queued in a camera's driver would be. (For cameras and network streams read() itself
            # waits for the device, so their capture time includes up to one frame interval of waiting.)
            decode_s = read_end - read_start
            read_end = self._pace(raw.pts)
            read_start = read_end - decode_s
        now = time.monotonic()
        cap = self._config.fps_cap
        if index % self._config.interval or (cap and now - self._last_accepted < 1.0 / cap):
            self._drop("interval")
            return
        self._last_accepted = now
        self._note_frame_size(index, raw.image.shape[:2])
        shrink_start = time.perf_counter()
        pixels = self._shrink(raw.image)
        times = FrameTimes(read_start, read_end, shrink_s=time.perf_counter() - shrink_start)
        frame = Frame(self._source.stream_id, index, raw.pts, time.time_ns(), times, pixels)
        self._mux.put(self._source.stream_id, frame, self.abort)

    def _note_frame_size(self, index: int, size: tuple[int, int]) -> None:
        """Count every change of the stream's frame size; log the first one (the preprocessing adapts)."""
        previous, self._frame_size = self._frame_size, size
        if previous is None or previous == size:
            return
        self._resolution_changes.inc()
        self._size_changes += 1
        if self._size_changes == 1:
            log.warning("stream %s: frame size changed from %dx%d to %dx%d; preprocessing adapts "
                        "(further changes are only counted)", self._source.stream_id, previous[1], previous[0],
                        size[1], size[0], extra=stream_context(self._source.stream_id, frame_index=index))

    def _pace(self, pts: float) -> float:
        """Sleep until the frame's time has come, as a camera would deliver it; return that (perf_counter) time."""
        if self._pace_origin is None:
            self._pace_origin = (time.perf_counter(), pts)
        due = self._pace_origin[0] + (pts - self._pace_origin[1])
        self._stop_reading.wait(max(0.0, due - time.perf_counter()))
        return due

    def _give_up(self, failures: int, reason: str) -> bool:
        """Wait before the next attempt; True if attempts are exhausted."""
        reconnect = self._config.reconnect
        if reconnect.max_attempts is not None and failures >= reconnect.max_attempts:
            self._gave_up = f"gave up after {failures} attempts: {reason}"
            log.error("stream %s: %s", self._source.stream_id, self._gave_up, extra=self._context)
            return True
        delay = backoff_delay(failures, reconnect.base_s, reconnect.cap_s)
        log.info("stream %s: %s; reconnect attempt %d in %.1fs", self._source.stream_id, reason, failures, delay,
                 extra=self._context)
        self._states.set(self._source.stream_id, "reconnecting", f"{reason}; retry {failures} in {delay:.1f}s")
        self._stop_reading.wait(delay)
        return False
