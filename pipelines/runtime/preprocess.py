"""Preprocess stage: fills pooled batch buffers with preprocessed frames and hands full batches on.

A batch is handed on when it is full, when ``batch_timeout`` has passed since its first frame, or when
a stream ends, so a slow or ending stream never holds frames back. A free buffer is secured *before* a
frame is taken: frames wait in the frame mux, where a live stream keeps only its newest ones, rather than
in this stage's hands, so what gets classified is as fresh as it can be. For the same reason, when any
stream is live a new batch is started only one fill-time before the engine is expected to take it
(``EngineClock``), not as soon as a buffer is free.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from pipelines.frames import Batch, EndOfStream, Frame
from pipelines.log_context import stream_context
from pipelines.preprocess.buffers import BufferPool, InputBuffer
from pipelines.preprocess.transform import Preprocessor
from pipelines.runtime.engine_clock import EngineClock, FillTimer
from pipelines.runtime.frame_mux import FrameMux
from pipelines.runtime.metrics import PipelineMetrics
from pipelines.runtime.queues import POLL_S, put
from pipelines.runtime.stage import Stage

log = logging.getLogger(__name__)


class PreprocessStage(Stage):
    def __init__(self, inp: FrameMux, out: queue.Queue, preprocessor: Preprocessor, pool: BufferPool,
                 streams: list[str], batch_timeout_s: float, clock: EngineClock, just_in_time: bool,
                 abort: threading.Event, metrics: PipelineMetrics) -> None:
        super().__init__("preprocess", abort)
        self._in, self._out = inp, out
        self._preprocess = preprocessor
        self._pool = pool
        self._streams = len(streams)
        self._batch_timeout_s = batch_timeout_s
        self._clock = clock
        self._just_in_time = just_in_time
        self._fill = FillTimer()
        self._counters = {s: metrics.counter_for(s, "preprocess") for s in streams}
        self._resolution_changes = {s: metrics.resolution_changes.labels(stream=s) for s in streams}
        self._frame_sizes: dict[str, tuple[int, int]] = {}
        self._size_change_logged: set[str] = set()
        self._buffer: InputBuffer | None = None
        self._frames: list[Frame] = []

    def loop(self) -> None:
        open_streams = self._streams
        deadline = 0.0
        while open_streams:
            if self._buffer is None:
                self._buffer = self._acquire()
                if self._buffer is None:
                    return
            if not self._frames and self._just_in_time and not self._wait_for_engine():
                return
            timeout = max(0.0, deadline - time.monotonic()) if self._frames else None
            item = self._in.get(self.abort, timeout)
            if self.abort.is_set():
                return
            if item is None:  # the partial batch's time is up
                self._hand_on()
            elif isinstance(item, EndOfStream):
                self._hand_on()
                put(self._out, item, self.abort)
                open_streams -= 1
            else:
                if not self._frames:
                    deadline = time.monotonic() + self._batch_timeout_s
                self._add(item)
                if len(self._frames) == self._pool.batch or time.monotonic() >= deadline:
                    self._hand_on()
        if self._buffer is not None:  # every stream has ended: the empty buffer goes back
            self._pool.release(self._buffer)
            self._buffer = None

    def _acquire(self) -> InputBuffer | None:
        while not self.abort.is_set():
            buffer = self._pool.acquire(timeout=POLL_S)
            if buffer is not None:
                return buffer
        return None

    def _wait_for_engine(self) -> bool:
        """Before a new batch of live frames, wait until the engine is one fill-time from taking it."""
        start_at = self._clock.accepts_at() - self._fill.lead_s(self._pool.batch)
        self.abort.wait(max(0.0, start_at - time.perf_counter()))
        return not self.abort.is_set()

    def _add(self, frame: Frame) -> None:
        assert self._buffer is not None and frame.image is not None
        self._note_frame_size(frame.stream_id, frame.index, frame.image.shape[:2])
        frame.times.preprocess_start = time.perf_counter()
        self._preprocess(frame.image, self._buffer.array[len(self._frames)])
        frame.image = None  # the pixels are in the buffer now; free the decoded frame early
        frame.times.preprocess_end = time.perf_counter()
        self._fill.observe(frame.times.preprocess_end - frame.times.preprocess_start)
        self._frames.append(frame)
        self._counters[frame.stream_id].inc()

    def _note_frame_size(self, stream_id: str, frame_index: int, size: tuple[int, int]) -> None:
        """Count every change of a stream's frame size; log the first one (the preprocessing adapts)."""
        previous = self._frame_sizes.get(stream_id)
        self._frame_sizes[stream_id] = size
        if previous is None or previous == size:
            return
        self._resolution_changes[stream_id].inc()
        if stream_id not in self._size_change_logged:
            self._size_change_logged.add(stream_id)
            log.warning("stream %s: frame size changed from %dx%d to %dx%d; preprocessing adapts "
                        "(further changes are only counted)", stream_id, previous[1], previous[0], size[1], size[0],
                        extra=stream_context(stream_id, frame_index=frame_index))

    def _hand_on(self) -> None:
        if not self._frames:
            return
        batch = Batch(self._frames, self._buffer)
        self._buffer, self._frames = None, []
        self._clock.handed_on()
        put(self._out, batch, self.abort)
