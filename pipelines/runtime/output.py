"""Output stage: logits → top-k → one message per frame, published with a contiguous per-stream seq and
the number of that stream's frames dropped since its previous message; stream state changes on the
status topic, each stream's end after its last label.

Streams come and go (a reload): a stream's settings arrive through :meth:`OutputStage.configure` before
its first frame, and what is kept per stream lives from its first frame to its end."""

from __future__ import annotations

import collections
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import Counter

from pipelines.frames import Batch, EndOfStream
from pipelines.log_context import stream_context
from pipelines.postprocess.per_stream import StreamPostprocess
from pipelines.postprocess.topk import softmax, top_k
from pipelines.publishers.base import Publisher
from pipelines.publishers.message import (
    EndAccounts,
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
from pipelines.runtime.stream_set import StreamSet
from pipelines.runtime.stream_state import StateChange, StreamStates
from pipelines.sources.config import SourceBase

log = logging.getLogger(__name__)


@dataclass
class _Registration:
    """What the output stage keeps of a stream's current registration (from its first frame to its end)."""

    postprocess: StreamPostprocess
    published: Counter  # its publish-stage frame counter (looked up once)
    end_to_end: Any  # its end-to-end latency series
    published_here: int = 0  # messages of this registration
    last_index: int = -1  # its last published frame's index
    suppressed: int = 0  # classified, not published (on_change, min_score) since its last message
    suppressed_here: int = 0  # the same, over the whole registration


class OutputStage(Stage):
    def __init__(self, inp: queue.Queue, publishers: list[Publisher], labels: tuple[str, ...], k: int,
                 model_id: str, run: RunIdentity, streams: StreamSet, states: StreamStates,
                 abort: threading.Event, metrics: PipelineMetrics) -> None:
        super().__init__("output", abort)
        self._in = inp
        self._publishers = publishers
        self._labels, self._k = labels, k
        self._model_id = model_id
        self._run = run
        self._streams = streams
        self._states = states
        self._metrics = metrics
        self._stage_latency = {stage: metrics.stage_latency.labels(stage=stage) for stage in STAGES}
        self._configs: dict[str, SourceBase] = {}  # each stream's settings
        self._registrations: dict[str, _Registration] = {}
        self.published: dict[str, int] = {}  # each stream's messages in this run, also its next seq
        self.ends_published: collections.Counter[str] = collections.Counter()  # per stream: registrations ended
        self.ends_total = 0
        self.incomplete: dict[str, str] = {}  # configured streams whose latest registration was not read in full
        self.completed = False  # every stream's end published: nothing read is left unpublished
        self._settings_lock = threading.Lock()
        self._new_k: int | None = None
        self._new_configs: dict[str, SourceBase] = {}
        self._new_removed: list[str] = []
        # Held while a registration's end is published, and by amend_end: an amendment reaches its end or is
        # refused, never lost in between.
        self._ends_lock = threading.Lock()
        self._amendments: dict[str, tuple[int, str]] = {}  # stream -> (which of its ends, news for it)

    def configure(self, k: int | None = None, sources: Iterable[SourceBase] = (), removed: Iterable[str] = ()) -> None:
        """New top-k and streams' settings, in force from the next item on (any thread). A new stream's
        settings are given before its capture stage starts, and so before its first frame. ``removed``: streams
        removed after their end was published (the publishers are told)."""
        with self._settings_lock:
            if k is not None:
                self._new_k = k
            self._new_configs.update((config.id, config) for config in sources)
            self._new_removed.extend(removed)

    def amend_end(self, stream: str, ordinal: int, because: str) -> bool:
        """The stream's ``ordinal``-th end (counting from 1) is to say ``because`` too, and count as its removal
        (its next registration was withdrawn before it started); False if that end is published already."""
        with self._ends_lock:
            if self.ends_published[stream] >= ordinal:
                return False
            self._amendments[stream] = (ordinal, because)
            return True

    def published_counts(self) -> dict[str, int]:
        """A copy of :attr:`published` (safe from any thread while streams are added)."""
        return self.published.copy()

    def _apply_new_settings(self) -> None:
        with self._settings_lock:
            k, configs, removed = self._new_k, self._new_configs, self._new_removed
            self._new_k, self._new_configs, self._new_removed = None, {}, []
        for stream in removed:
            for publisher in self._publishers:
                publisher.stream_removed(status_topic(stream))
        if k is not None:
            self._k = k
        for stream, config in configs.items():
            self._configs[stream] = config
            if stream in self._registrations:
                self._registrations[stream].postprocess.configure(config)

    def _registration(self, stream: str) -> _Registration:
        registration = self._registrations.get(stream)
        if registration is None:
            registration = _Registration(StreamPostprocess(self._configs[stream]),
                                         self._metrics.counter_for(stream, "publish"),
                                         self._metrics.end_to_end_latency.labels(stream=stream))
            self._registrations[stream] = registration
            self.published.setdefault(stream, 0)
        return registration

    def loop(self) -> None:
        ends = 0
        while not self._streams.done(ends):
            item = get(self._in, self.abort, timeout=POLL_S)
            self._apply_new_settings()
            self._announce_changes()
            for publisher in self._publishers:
                publisher.serve()
            if self.abort.is_set():
                return
            if isinstance(item, EndOfStream):
                self._end(item)
                ends += 1
            elif item is not None:
                self._publish(item)
        self._announce_changes()
        self.completed = True

    def _publish(self, batch: Batch) -> None:
        """One message per frame that passes its stream's publish rules; metrics once per batch."""
        assert batch.scores is not None
        postprocess_start = time.perf_counter()
        probabilities = softmax(batch.scores)
        registrations = [self._registration(frame.stream_id) for frame in batch.frames]
        smoothed = np.stack([registration.postprocess.smooth(row)
                             for registration, row in zip(registrations, probabilities, strict=True)])
        latencies: dict[str, list[dict[str, float]]] = {}
        for frame, registration, predictions in zip(batch.frames, registrations,
                                                    top_k(smoothed, self._labels, self._k), strict=True):
            frame.times.postprocess_start = postprocess_start
            if not registration.postprocess.should_publish(predictions[0].index, predictions[0].score,
                                                           time.monotonic()):
                registration.suppressed += 1
                registration.suppressed_here += 1
                continue
            stream = frame.stream_id
            seq = self.published[stream]
            suppressed, registration.suppressed = registration.suppressed, 0
            dropped = frame.index - registration.last_index - 1 - suppressed
            registration.last_index = frame.index
            latency = latency_breakdown_ms(frame, time.perf_counter())
            self._send(label_topic(stream), build_label_message(
                frame, seq, dropped, suppressed, predictions, self._model_id, time.time_ns(), latency, self._run))
            self.published[stream] = seq + 1
            registration.published_here += 1
            latencies.setdefault(stream, []).append(latency)
        self._record(latencies)

    def _record(self, latencies: dict[str, list[dict[str, float]]]) -> None:
        """The batch's published frames in the metrics: counts per stream, latency histograms."""
        for stream, rows in latencies.items():
            registration = self._registrations[stream]
            registration.published.inc(len(rows))
            registration.end_to_end.observe_many([row["total"] / 1000.0 for row in rows])
        every = [row for rows in latencies.values() for row in rows]
        if every:
            for stage in STAGES:
                self._stage_latency[stage].observe_many([row[stage] / 1000.0 for row in every])

    def _end(self, end: EndOfStream) -> None:
        """The end of a stream's registration, after its last label. The next registration of the stream
        (its settings changed) starts afresh: frame indexes from 0, no smoothing history; seq goes on."""
        stream = end.stream_id
        with self._ends_lock:
            ordinal, because = self._amendments.pop(stream, (0, ""))
            if ordinal == self.ends_published[stream] + 1:  # its next registration was withdrawn, and why
                end = dataclasses.replace(end, detail="; ".join(filter(None, (end.detail, because))), removed=True)
            self._publish_end(end)
            self.ends_published[stream] += 1
            self.ends_total += 1

    def _publish_end(self, end: EndOfStream) -> None:
        stream = end.stream_id
        registration = self._registrations.pop(stream, None)
        published = registration.published_here if registration else 0
        seq = self.published[stream] - 1 if self.published.get(stream) else None
        log.info("stream %s: %s; %d of its %d frames published", stream, end.state, published, end.frames,
                 extra=stream_context(stream, seq=seq))
        self._metrics.streams_ended.labels(stream=stream, state=end.state).inc()
        detail = "; ".join(filter(None, (end.detail, f"{published} of {end.frames} frames published")))
        accounts = EndAccounts(end.frames, published, registration.suppressed_here if registration else 0,
                               end.drops.snapshot() if end.drops else {}, end.missing, seq)
        self._send(status_topic(stream), build_status_message(
            stream, end.state, end.previous_state, detail, time.time_ns(), self._run, accounts))
        if end.complete or end.removed:
            self.incomplete.pop(stream, None)
        else:
            self.incomplete[stream] = end.detail
        if end.removed:
            for publisher in self._publishers:
                publisher.stream_removed(status_topic(stream))

    def announce_failed(self, stream: str, why: str) -> None:
        """After an abort, once this stage's thread has returned (the publishers are then free): announce that
        ``stream``, whose end never came through, failed, saying ``why``."""
        if self.is_alive():
            raise RuntimeError("the output stage is still running: it publishes the ends itself")
        self._metrics.streams_ended.labels(stream=stream, state="failed").inc()
        self._send(status_topic(stream), build_status_message(stream, "failed", self._states.get(stream), why,
                                                              time.time_ns(), self._run))

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
