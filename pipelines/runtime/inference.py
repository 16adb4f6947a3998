"""Inference stage: runs each batch through the engine and gives its buffer back to the pool."""

from __future__ import annotations

import queue
import threading
import time

from pipelines.engines.base import Engine
from pipelines.frames import Batch, EndOfStream
from pipelines.preprocess.buffers import BufferPool
from pipelines.runtime.metrics import PipelineMetrics
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

    def loop(self) -> None:
        open_streams = self._streams
        while open_streams:
            item = get(self._in, self.abort)
            if item is None:
                return
            if isinstance(item, EndOfStream):
                put(self._out, item, self.abort)
                open_streams -= 1
                continue
            self._run(item)
            if not put(self._out, item, self.abort):
                return

    def _run(self, batch: Batch) -> None:
        count = len(batch.frames)
        start = time.perf_counter()
        try:
            batch.scores = self._engine.infer(batch.buffer.array, count)
        finally:
            self._pool.release(batch.buffer)
        end = time.perf_counter()
        self._batch_size.observe(count)
        for frame in batch.frames:
            frame.times.inference_start, frame.times.inference_end = start, end
            self._counters[frame.stream_id].inc()
