"""Preprocess stage (the batcher): normalises frames into pooled batch buffers and hands batches on.

Frames arrive already shrunk to the model's geometry by their capture threads; what is left here per
frame is one table lookup per channel into the batch buffer's row.

A batch is handed on when it is full, when ``batch_timeout`` has passed since its first frame, or when
a stream ends, so a slow or ending stream never holds frames back. A free buffer is secured *before* a
frame is taken: frames wait in the frame mux, where a live stream keeps only its newest ones, rather than
in this stage's hands, so what gets classified is as fresh as it can be. For the same reason, when any
stream is live a new batch is started only one fill-time before the engine is expected to take it
(``EngineClock``), not as soon as a buffer is free.
"""

from __future__ import annotations

import queue
import threading
import time

from pipelines.frames import Batch, EndOfStream, Frame
from pipelines.preprocess.buffers import BufferPool, InputBuffer
from pipelines.preprocess.transform import Normaliser
from pipelines.runtime.engine_clock import EngineClock, FillTimer
from pipelines.runtime.frame_mux import FrameMux
from pipelines.runtime.metrics import PipelineMetrics
from pipelines.runtime.queues import POLL_S, put
from pipelines.runtime.stage import Stage
from pipelines.runtime.stream_set import StreamSet


class PreprocessStage(Stage):
    def __init__(self, inp: FrameMux, out: queue.Queue, normalise: Normaliser, pool: BufferPool,
                 streams: StreamSet, batch_timeout_s: float, clock: EngineClock, abort: threading.Event,
                 metrics: PipelineMetrics) -> None:
        super().__init__("preprocess", abort)
        self._in, self._out = inp, out
        self._normalise = normalise
        self._pool = pool
        self._streams = streams
        self._batch_timeout_s = batch_timeout_s
        self._clock = clock
        self.just_in_time = False  # whether a stream is live (set as streams come and go)
        self._fill = FillTimer()
        self._metrics = metrics
        self._buffer: InputBuffer | None = None
        self._frames: list[Frame] = []

    def loop(self) -> None:
        ends = 0
        deadline = 0.0
        while not self._streams.done(ends):
            if self._buffer is None:  # a new batch: once a frame waits, secure a buffer before taking it
                if not self._in.wait(self.abort, POLL_S):
                    if self.abort.is_set():
                        return
                    continue
                self._buffer = self._acquire()
                if self._buffer is None:
                    return
            if not self._frames and self.just_in_time and not self._wait_for_engine():
                return
            timeout = max(0.0, deadline - time.monotonic()) if self._frames else POLL_S
            item = self._in.get(self.abort, timeout)
            if self.abort.is_set():
                return
            if item is None:  # the partial batch's time is up, or nothing came (a look at whether all ended)
                self._hand_on()
                self._release_unused()
            elif isinstance(item, EndOfStream):
                self._hand_on()
                self._release_unused()  # before the end goes on: once a stream's end is out, no buffer is held for it
                put(self._out, item, self.abort)
                ends += 1
            else:
                if not self._frames:
                    deadline = time.monotonic() + self._batch_timeout_s
                self._add(item)
                if len(self._frames) == self._pool.batch or time.monotonic() >= deadline:
                    self._hand_on()
        self._release_unused()

    def _release_unused(self) -> None:
        """An empty buffer goes back while no frame comes (all streams ended, or idle ones)."""
        if self._buffer is not None and not self._frames:
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
        assert self._buffer is not None and frame.pixels is not None
        frame.times.preprocess_start = time.perf_counter()
        self._normalise(frame.pixels, self._buffer.array[len(self._frames)])
        frame.pixels = None  # in the buffer now
        frame.times.preprocess_end = time.perf_counter()
        self._fill.observe(frame.times.preprocess_end - frame.times.preprocess_start)
        self._frames.append(frame)

    def _hand_on(self) -> None:
        if not self._frames:
            return
        self._metrics.count_frames(self._frames, "preprocess")
        batch = Batch(self._frames, self._buffer)
        self._buffer, self._frames = None, []
        self._clock.handed_on()
        put(self._out, batch, self.abort)
