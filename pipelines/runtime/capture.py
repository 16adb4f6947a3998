"""Capture stage: reads one source and hands its frames on, in order, until it ends or is stopped."""

from __future__ import annotations

import logging
import queue
import threading
import time

from pipelines.frames import EndOfStream, Frame, FrameTimes
from pipelines.runtime.metrics import PipelineMetrics
from pipelines.runtime.queues import put
from pipelines.runtime.stage import Stage
from pipelines.sources.base import Source

log = logging.getLogger(__name__)


class CaptureStage(Stage):
    def __init__(self, source: Source, out: queue.Queue, stop: threading.Event, abort: threading.Event,
                 metrics: PipelineMetrics) -> None:
        super().__init__(f"capture-{source.stream_id}", abort)
        self._source = source
        self._out = out
        self._stop_reading = stop
        self._captured = metrics.counter_for(source.stream_id, "capture")

    def loop(self) -> None:
        stream_id = self._source.stream_id
        index = 0
        try:
            while not self._stop_reading.is_set():
                read_start = time.perf_counter()
                raw = self._source.read()
                if raw is None:
                    log.info("stream %s: source ended after %d frames", stream_id, index)
                    break
                frame = Frame(stream_id, index, raw.pts, time.time_ns(),
                              FrameTimes(read_start, time.perf_counter()), raw.image)
                if not put(self._out, frame, self.abort):
                    return
                self._captured.inc()
                index += 1
            else:
                log.info("stream %s: capture stopped after %d frames", stream_id, index)
        finally:
            self._source.close()
        put(self._out, EndOfStream(stream_id, index), self.abort)
