"""Output stage: logits → top-k → one message per frame, published with a contiguous per-stream seq."""

from __future__ import annotations

import logging
import queue
import threading
import time

from pipelines.frames import Batch, EndOfStream
from pipelines.postprocess.topk import top_k
from pipelines.publishers.base import Publisher
from pipelines.publishers.message import build_label_message, encode, latency_breakdown_ms
from pipelines.runtime.metrics import STAGES, PipelineMetrics
from pipelines.runtime.queues import get
from pipelines.runtime.stage import Stage

log = logging.getLogger(__name__)


class OutputStage(Stage):
    def __init__(self, inp: queue.Queue, publishers: list[Publisher], labels: tuple[str, ...], k: int,
                 model_id: str, streams: list[str], abort: threading.Event,
                 metrics: PipelineMetrics) -> None:
        super().__init__("output", abort)
        self._in = inp
        self._publishers = publishers
        self._labels, self._k = labels, k
        self._model_id = model_id
        self._streams = streams
        self._metrics = metrics
        self._counters = {s: metrics.counter_for(s, "publish") for s in streams}
        self._end_to_end = {s: metrics.end_to_end_latency.labels(stream=s) for s in streams}
        self._stage_latency = {stage: metrics.stage_latency.labels(stage=stage) for stage in STAGES}
        self.published: dict[str, int] = dict.fromkeys(streams, 0)  # also each stream's next seq

    def loop(self) -> None:
        open_streams = len(self._streams)
        while open_streams:
            item = get(self._in, self.abort)
            if item is None:
                return
            if isinstance(item, EndOfStream):
                log.info("stream %s: ended; %d of its %d frames published",
                         item.stream_id, self.published[item.stream_id], item.frames)
                self._metrics.streams_ended.labels(stream=item.stream_id).inc()
                open_streams -= 1
                continue
            self._publish(item)

    def _publish(self, batch: Batch) -> None:
        assert batch.scores is not None
        postprocess_start = time.perf_counter()
        ranked = top_k(batch.scores, self._labels, self._k)
        for frame, predictions in zip(batch.frames, ranked, strict=True):
            frame.times.postprocess_start = postprocess_start
            seq = self.published[frame.stream_id]
            latency = latency_breakdown_ms(frame, time.perf_counter())
            message = build_label_message(frame, seq, predictions, self._model_id, time.time_ns(), latency)
            payload = encode(message)
            for publisher in self._publishers:
                publisher.publish(frame.stream_id, payload, message)
            self.published[frame.stream_id] = seq + 1
            self._counters[frame.stream_id].inc()
            self._end_to_end[frame.stream_id].observe(latency["total"] / 1000.0)
            for stage in STAGES:
                self._stage_latency[stage].observe(latency[stage] / 1000.0)
