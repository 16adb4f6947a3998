"""Inference: one stage submits batches to the engine, another collects their logits in order.

Two threads, so that waiting for a running batch never holds the next one back: up to
``engine.max_in_flight`` batches are outstanding, and a GPU engine copies batch N+1 while it computes
batch N. Batches and end-of-stream markers pass from submitter to collector in one queue, in order.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

from pipelines.engines.base import Engine
from pipelines.frames import Batch, EndOfStream
from pipelines.preprocess.buffers import BufferPool
from pipelines.runtime.engine_clock import EngineClock
from pipelines.runtime.metrics import PipelineMetrics
from pipelines.runtime.progress import ProgressTracker
from pipelines.runtime.queues import POLL_S, get, put
from pipelines.runtime.stage import Stage
from pipelines.runtime.stream_set import StreamSet


@dataclass(frozen=True, slots=True)
class _Submitted:
    batch: Batch
    handle: Any
    start: float


class InFlight:
    """What the submitter hands the collector, and the bound on how many batches the engine holds."""

    def __init__(self, max_in_flight: int) -> None:
        self.items: queue.Queue[_Submitted | EndOfStream] = queue.Queue()
        self.slots = threading.BoundedSemaphore(max_in_flight)


class SubmitStage(Stage):
    def __init__(self, inp: queue.Queue, in_flight: InFlight, engine: Engine, pool: BufferPool,
                 streams: StreamSet, clock: EngineClock, progress: ProgressTracker, abort: threading.Event) -> None:
        super().__init__("inference-submit", abort)
        self._in, self._in_flight = inp, in_flight
        self._engine = engine
        self._pool = pool
        self._streams = streams
        self._clock = clock
        self._progress = progress

    def loop(self) -> None:
        ends = 0
        while not self._streams.done(ends):
            item = get(self._in, self.abort, timeout=POLL_S)
            if self.abort.is_set():
                return
            if item is None:
                continue
            if isinstance(item, EndOfStream):
                ends += 1
                self._in_flight.items.put(item)
                continue
            if not self._take_slot():
                self._pool.release(item.buffer)
                return
            self._progress.took()
            start = time.perf_counter()
            self._clock.submitted(start)  # before: a synchronous engine has finished when submit returns
            try:
                handle = self._engine.submit(item.buffer.array, len(item.frames))
            except BaseException:
                self._pool.release(item.buffer)
                raise
            self._in_flight.items.put(_Submitted(item, handle, start))

    def _take_slot(self) -> bool:
        while not self.abort.is_set():
            if self._in_flight.slots.acquire(timeout=POLL_S):
                return True
        return False


class CollectStage(Stage):
    def __init__(self, in_flight: InFlight, out: queue.Queue, engine: Engine, pool: BufferPool,
                 streams: StreamSet, clock: EngineClock, progress: ProgressTracker, abort: threading.Event,
                 metrics: PipelineMetrics) -> None:
        super().__init__("inference-collect", abort)
        self._in_flight, self._out = in_flight, out
        self._engine = engine
        self._pool = pool
        self._streams = streams
        self._clock = clock
        self._progress = progress
        self._metrics = metrics

    def loop(self) -> None:
        ends = 0
        while not self._streams.done(ends):
            item = get(self._in_flight.items, self.abort, timeout=POLL_S)
            if self.abort.is_set():
                return
            if item is None:
                continue
            if isinstance(item, EndOfStream):
                ends += 1
                if not put(self._out, item, self.abort):
                    return
            elif not self._collect(item):
                return

    def _collect(self, submitted: _Submitted) -> bool:
        batch = submitted.batch
        try:
            batch.scores = self._engine.result(submitted.handle)
        finally:
            self._in_flight.slots.release()
            self._pool.release(batch.buffer)
        end = time.perf_counter()
        self._clock.collected(end)
        self._metrics.batch_size.observe(len(batch.frames))
        for frame in batch.frames:
            frame.times.inference_start, frame.times.inference_end = submitted.start, end
        self._metrics.count_frames(batch.frames, "inference")
        if not put(self._out, batch, self.abort):
            return False
        self._progress.handed_on()
        return True
