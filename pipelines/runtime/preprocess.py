"""Preprocess stage: fills pooled batch buffers with preprocessed frames and hands full batches on.

A batch is handed on when it is full, when ``batch_timeout`` has passed since its first frame, or when
a stream ends, so a slow or ending stream never holds frames back.
"""

from __future__ import annotations

import queue
import threading
import time

from pipelines.frames import Batch, EndOfStream, Frame
from pipelines.preprocess.buffers import BufferPool, InputBuffer
from pipelines.preprocess.transform import Preprocessor
from pipelines.runtime.metrics import PipelineMetrics
from pipelines.runtime.queues import POLL_S, get, put
from pipelines.runtime.stage import Stage


class PreprocessStage(Stage):
    def __init__(self, inp: queue.Queue, out: queue.Queue, preprocessor: Preprocessor, pool: BufferPool,
                 streams: list[str], batch_timeout_s: float, abort: threading.Event,
                 metrics: PipelineMetrics) -> None:
        super().__init__("preprocess", abort)
        self._in, self._out = inp, out
        self._preprocess = preprocessor
        self._pool = pool
        self._streams = len(streams)
        self._batch_timeout_s = batch_timeout_s
        self._counters = {s: metrics.counter_for(s, "preprocess") for s in streams}
        self._buffer: InputBuffer | None = None
        self._frames: list[Frame] = []

    def loop(self) -> None:
        open_streams = self._streams
        deadline = 0.0
        while open_streams:
            timeout = max(0.0, deadline - time.monotonic()) if self._frames else None
            item = get(self._in, self.abort, timeout)
            if self.abort.is_set():
                return
            if item is None:  # the partial batch's time is up
                self._hand_on()
            elif isinstance(item, EndOfStream):
                self._hand_on()
                put(self._out, item, self.abort)
                open_streams -= 1
            else:
                if self._buffer is None:
                    self._buffer = self._acquire()
                    if self._buffer is None:
                        return
                    deadline = time.monotonic() + self._batch_timeout_s
                self._add(item)
                if len(self._frames) == self._pool.batch or time.monotonic() >= deadline:
                    self._hand_on()

    def _acquire(self) -> InputBuffer | None:
        while not self.abort.is_set():
            buffer = self._pool.acquire(timeout=POLL_S)
            if buffer is not None:
                return buffer
        return None

    def _add(self, frame: Frame) -> None:
        assert self._buffer is not None and frame.image is not None
        frame.times.preprocess_start = time.perf_counter()
        self._preprocess(frame.image, self._buffer.array[len(self._frames)])
        frame.image = None  # the pixels are in the buffer now; free the decoded frame early
        frame.times.preprocess_end = time.perf_counter()
        self._frames.append(frame)
        self._counters[frame.stream_id].inc()

    def _hand_on(self) -> None:
        if self._buffer is None:
            return
        batch = Batch(self._frames, self._buffer)
        self._buffer, self._frames = None, []
        put(self._out, batch, self.abort)
