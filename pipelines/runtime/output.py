"""Output stage: logits → top-k → one message per frame, published with a contiguous per-stream seq and
the number of that stream's frames dropped since its previous message; stream state changes on the
status topic, each stream's end after its last label."""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

import numpy as np

from pipelines.frames import Batch, EndOfStream
from pipelines.log_context import stream_context
from pipelines.postprocess.per_stream import StreamPostprocess
from pipelines.postprocess.topk import softmax, top_k
from pipelines.publishers.base import Publisher
from pipelines.publishers.message import (
    RunIdentity,
    build_label_message,
    build_status_message,
    encode,
    label_topic,
    latency_breakdown_ms,
    status_topic,
)
from pipelines.runtime.metrics import STAGES, PipelineMetrics
from pipelines.runtime.queues import POLL_S, get
from pipelines.runtime.stage import Stage
from pipelines.runtime.stream_state import FINAL_STATES, StateChange, StreamStates
from pipelines.sources.config import SourceBase

log = logging.getLogger(__name__)


class OutputStage(Stage):
    def __init__(self, inp: queue.Queue, publishers: list[Publisher], labels: tuple[str, ...], k: int,
                 model_id: str, run: RunIdentity, sources: dict[str, SourceBase], states: StreamStates,
                 abort: threading.Event, metrics: PipelineMetrics) -> None:
        super().__init__("output", abort)
        self._in = inp
        self._publishers = publishers
        self._labels, self._k = labels, k
        self._model_id = model_id
        self._run = run
        streams = list(sources)
        self._streams = streams
        self._postprocess = {stream: StreamPostprocess(config) for stream, config in sources.items()}
        self._suppressed: dict[str, int] = dict.fromkeys(streams, 0)  # classified, not published (on_change)
        self._states = states
        self._counters = {s: metrics.counter_for(s, "publish") for s in streams}
        self._end_to_end = {s: metrics.end_to_end_latency.labels(stream=s) for s in streams}
        self._stage_latency = {stage: metrics.stage_latency.labels(stage=stage) for stage in STAGES}
        # Every stream's ends exist from the start, at 0: an end is then an increase that rate() and increase() see.
        self._ends = {(s, state): metrics.streams_ended.labels(stream=s, state=state)
                      for s in streams for state in FINAL_STATES}
        self.published: dict[str, int] = dict.fromkeys(streams, 0)  # also each stream's next seq
        self.incomplete: dict[str, str] = {}  # streams not read in full, and why
        self.completed = False  # every stream's end published: nothing read is left unpublished
        self._last_index: dict[str, int] = dict.fromkeys(streams, -1)
        self._settings_lock = threading.Lock()
        self._new_settings: tuple[int, dict[str, SourceBase]] | None = None

    def reconfigure(self, k: int, sources: dict[str, SourceBase]) -> None:
        """Replace top-k and the streams' postprocess settings, from the next batch on (any thread)."""
        with self._settings_lock:
            self._new_settings = (k, sources)

    def _apply_new_settings(self) -> None:
        with self._settings_lock:
            settings, self._new_settings = self._new_settings, None
        if settings is not None:
            self._k = settings[0]
            for stream, config in settings[1].items():
                self._postprocess[stream].configure(config)

    def loop(self) -> None:
        open_streams = len(self._streams)
        while open_streams:
            item = get(self._in, self.abort, timeout=POLL_S)
            self._apply_new_settings()
            self._announce_changes()
            for publisher in self._publishers:
                publisher.serve()
            if self.abort.is_set():
                return
            if isinstance(item, EndOfStream):
                self._end(item)
                open_streams -= 1
            elif item is not None:
                self._publish(item)
        self._announce_changes()
        self.completed = True

    def _publish(self, batch: Batch) -> None:
        """One message per frame that passes its stream's publish rules; metrics once per batch."""
        assert batch.scores is not None
        postprocess_start = time.perf_counter()
        probabilities = softmax(batch.scores)
        smoothed = np.stack([self._postprocess[frame.stream_id].smooth(row)
                             for frame, row in zip(batch.frames, probabilities, strict=True)])
        latencies: dict[str, list[dict[str, float]]] = {}
        for frame, predictions in zip(batch.frames, top_k(smoothed, self._labels, self._k), strict=True):
            frame.times.postprocess_start = postprocess_start
            stream = frame.stream_id
            if not self._postprocess[stream].should_publish(predictions[0].index, predictions[0].score,
                                                            time.monotonic()):
                self._suppressed[stream] += 1
                continue
            seq = self.published[stream]
            suppressed, self._suppressed[stream] = self._suppressed[stream], 0
            dropped = frame.index - self._last_index[stream] - 1 - suppressed
            self._last_index[stream] = frame.index
            latency = latency_breakdown_ms(frame, time.perf_counter())
            self._send(label_topic(stream), build_label_message(
                frame, seq, dropped, suppressed, predictions, self._model_id, time.time_ns(), latency, self._run))
            self.published[stream] = seq + 1
            latencies.setdefault(stream, []).append(latency)
        self._record(latencies)

    def _record(self, latencies: dict[str, list[dict[str, float]]]) -> None:
        """The batch's published frames in the metrics: counts per stream, latency histograms."""
        for stream, rows in latencies.items():
            self._counters[stream].inc(len(rows))
            self._end_to_end[stream].observe_many([row["total"] / 1000.0 for row in rows])
        every = [row for rows in latencies.values() for row in rows]
        if every:
            for stage in STAGES:
                self._stage_latency[stage].observe_many([row[stage] / 1000.0 for row in every])

    def _end(self, end: EndOfStream) -> None:
        stream = end.stream_id
        published = self.published[stream]
        log.info("stream %s: %s; %d of its %d frames published", stream, end.state, published, end.frames,
                 extra=stream_context(stream, seq=published - 1 if published else None))
        self._ends[(stream, end.state)].inc()
        detail = "; ".join(filter(None, (end.detail, f"{published} of {end.frames} frames published")))
        self._send(status_topic(stream), build_status_message(
            stream, end.state, end.previous_state, detail, time.time_ns(), self._run, frames=end.frames))
        if not end.complete:
            self.incomplete[stream] = end.detail

    def _announce_changes(self) -> None:
        while True:
            try:
                change: StateChange = self._states.changes.get_nowait()
            except queue.Empty:
                return
            self._send(status_topic(change.stream_id), build_status_message(
                change.stream_id, change.state, change.previous, change.detail, change.time_ns, self._run))

    def _send(self, topic: str, message: dict[str, Any]) -> None:
        payload = encode(message)
        for publisher in self._publishers:
            publisher.publish(topic, payload, message)
