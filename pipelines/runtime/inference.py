"""Inference stage: submits batches to the engine, collects their logits in order, recycles buffers.

Up to ``engine.max_in_flight`` batches are outstanding, so a GPU engine copies batch N+1 while it
computes batch N. The oldest is collected as soon as the engine is full or no new batch is waiting, so
a lull never holds a finished batch back.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from typing import Any

from pipelines.engines.base import Engine
from pipelines.frames import Batch, EndOfStream
from pipelines.preprocess.buffers import BufferPool
from pipelines.runtime.metrics import PipelineMetrics
from pipelines.runtime.progress import ProgressTracker
from pipelines.runtime.queues import get, put
from pipelines.runtime.stage import Stage


class InferenceStage(Stage):
    def __init__(self, inp: queue.Queue, out: queue.Queue, engine: Engine, pool: BufferPool,
                 streams: list[str], abort: threading.Event, metrics: PipelineMetrics) -> None:
        super().__init__("inference", abort)
        self._in, self._out = inp, out
        self._engine = engine
        self._pool = pool
        self._streams = len(streams)
        self._counters = {s: metrics.counter_for(s, "inference") for s in streams}
        self._batch_size = metrics.batch_size
        self._pending: deque[tuple[Batch, Any, float]] = deque()
        self.progress = ProgressTracker()

    def loop(self) -> None:
        open_streams = self._streams
        while open_streams or self._pending:
            if self._pending and (not open_streams or len(self._pending) >= self._engine.max_in_flight
                                  or self._in.empty()):
                if not self._collect():
                    return
                continue
            item = get(self._in, self.abort)
            if item is None:
                return
            if isinstance(item, EndOfStream):
                while self._pending:  # everything of this stream before its end marker goes first
                    if not self._collect():
                        return
                put(self._out, item, self.abort)
                open_streams -= 1
                continue
            self.progress.took()
            start = time.perf_counter()
            try:
                handle = self._engine.submit(item.buffer.array, len(item.frames))
            except BaseException:
                self._pool.release(item.buffer)
                raise
            self._pending.append((item, handle, start))

    def _collect(self) -> bool:
        batch, handle, start = self._pending.popleft()
        try:
            batch.scores = self._engine.result(handle)
        finally:
            self._pool.release(batch.buffer)
        end = time.perf_counter()
        self._batch_size.observe(len(batch.frames))
        for frame in batch.frames:
            frame.times.inference_start, frame.times.inference_end = start, end
            self._counters[frame.stream_id].inc()
        if not put(self._out, batch, self.abort):
            return False
        self.progress.handed_on()
        return True
