"""Pipeline metrics in a private Prometheus registry (nothing global is touched on import).

Per-frame figures are recorded a batch at a time: counters by ``inc(n)``, latency histograms through
:class:`BatchHistogram` (one lock and one numpy call per batch, where prometheus_client's ``Histogram``
takes a lock per observation: five observations per frame cost about as much as encoding the frame's
message). So many buckets cost nothing per frame, only a few lines per scrape.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, PlatformCollector, ProcessCollector
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.registry import RestrictedRegistry
from prometheus_client.utils import floatToGoString

from pipelines.frames import DropCounts, Frame

if TYPE_CHECKING:
    from pipelines.engines.base import DeviceMemory

PREFIX = "nfnet_stream"

# Renard's R10 preferred numbers: ten bounds a decade, each 1.25-1.28 times the one before, from 0.5 ms (a GPU's
# small batch) to 10 s (a CPU engine at overload). histogram_quantile() interpolates inside the bucket that
# holds the quantile, and the true quantile is in that bucket too, so the two differ by less than 28 % (the
# widest bucket's ratio), whatever the engine; beyond 10 s only "more than 10 s" is known.
_R10 = (1.0, 1.25, 1.6, 2.0, 2.5, 3.15, 4.0, 5.0, 6.3, 8.0)
LATENCY_BUCKETS = (0.0005, 0.00063, 0.0008,
                   *(round(mantissa * decade, 6) for decade in (0.001, 0.01, 0.1, 1.0) for mantissa in _R10), 10.0)
STAGES = ("capture", "preprocess", "inference", "postprocess")  # the stage latencies
COUNTED_STAGES = ("preprocess", "inference", "publish")  # the stages whose frames are counted per stream
# Why a frame read was not classified: its live buffer was full (the oldest goes), it waited too long, it could
# not be decoded, fps_cap/interval skipped it, or its stream failed on it (an ROI that does not fit it).
DROP_CAUSES = ("queue_full", "stale", "decode_error", "interval", "error")
SOURCE_STATES = ("connecting", "running", "reconnecting", "ended", "failed")
FINAL_STATES = ("ended", "failed")  # what a stream's EndOfStream says
DEVICE_MEMORY_KINDS = ("total", "used", "ours")  # fields of DeviceMemory


class BatchHistogramChild:
    """One label set's buckets: counts per bucket (the last is +Inf), the sum, under one lock."""

    def __init__(self, bounds: np.ndarray) -> None:
        self._bounds = bounds
        self._lock = threading.Lock()
        self._counts = np.zeros(len(bounds) + 1, dtype=np.int64)
        self._sum = 0.0

    def observe_many(self, values: Sequence[float] | np.ndarray) -> None:
        """Record every value (seconds, say) at once: a value lands in the first bucket whose upper bound
        it does not exceed, as Prometheus' ``le`` says."""
        array = np.asarray(values, dtype=np.float64)
        counts = np.bincount(np.searchsorted(self._bounds, array, side="left"), minlength=len(self._counts))
        total = float(array.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def snapshot(self) -> tuple[list[int], float]:
        """Cumulative counts per bucket (the last: all values) and the sum."""
        with self._lock:
            return np.cumsum(self._counts).tolist(), self._sum


class BatchHistogram:
    """A Prometheus histogram (``_bucket``, ``_sum``, ``_count``) fed whole batches of observations; a
    collector of the registry, read at scrape time."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float],
                 registry: CollectorRegistry) -> None:
        self._name, self._documentation, self._labelnames = name, documentation, tuple(labelnames)
        self._bounds = np.asarray(buckets, dtype=np.float64)
        self._bucket_names = [floatToGoString(bound) for bound in buckets] + ["+Inf"]
        self._children: dict[tuple[str, ...], BatchHistogramChild] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def labels(self, **labels: str) -> BatchHistogramChild:
        key = tuple(labels[name] for name in self._labelnames)
        with self._lock:
            if key not in self._children:
                self._children[key] = BatchHistogramChild(self._bounds)
            return self._children[key]

    def remove(self, *values: str) -> None:
        """Drop one label set's series (no error if it never existed)."""
        with self._lock:
            self._children.pop(tuple(values), None)

    def describe(self) -> list[HistogramMetricFamily]:
        return [HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)]

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        with self._lock:
            children = list(self._children.items())
        for key, child in children:
            cumulative, total = child.snapshot()
            family.add_metric(list(key), list(zip(self._bucket_names, cumulative, strict=True)), total)
        yield family


class CreatedFreeRegistry(CollectorRegistry):
    """A registry that leaves the ``*_created`` samples of its counters and histograms out of every scrape.

    Prometheus 2.x stores each ``_created`` sample as a series of its own (one beside every counter), and
    nothing here reads them. prometheus_client's own switch (``disable_created_metrics()``, or
    ``PROMETHEUS_DISABLE_CREATED_SERIES``) is process-wide, for every registry: this is only for this one.
    """

    def collect(self) -> Iterator[Metric]:
        return _without_created(super().collect())

    def restricted_registry(self, names: Iterable[str]) -> _CreatedFreeView:
        """What ``/metrics?name[]=...`` reads: restricted, still without ``_created``."""
        return _CreatedFreeView(super().restricted_registry(names))


class _CreatedFreeView:
    def __init__(self, source: RestrictedRegistry) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        return _without_created(self._source.collect())


def _without_created(metrics: Iterable[Metric]) -> Iterator[Metric]:
    for metric in metrics:
        if metric.type in ("counter", "histogram", "summary"):
            created = f"{metric.name}_created"
            metric = copy.copy(metric)  # a collector may hand out the same object every time
            metric.samples = [sample for sample in metric.samples if sample.name != created]
        yield metric


class PipelineMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CreatedFreeRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total, ... (Linux)
        PlatformCollector(registry=r)  # python_info
        self.frames = Counter(
            f"{PREFIX}_frames", "Frames read from each stream's source, each once (what became of them: "
            f"{PREFIX}_stage_frames_total and {PREFIX}_frames_dropped_total).", ["stream"], registry=r)
        self.stage_frames = Counter(
            f"{PREFIX}_stage_frames", "Frames that passed each stage after capture (preprocess, inference, "
            "publish), per stream: a frame counts at every stage it passes, so do not sum over stage.",
            ["stream", "stage"], registry=r)
        self.stage_latency = BatchHistogram(
            f"{PREFIX}_stage_latency_seconds", "Time a frame spent in each stage (queue waits excluded).",
            ["stage"], LATENCY_BUCKETS, r)
        self.end_to_end_latency = BatchHistogram(
            f"{PREFIX}_end_to_end_latency_seconds", "From the start of a frame's read to its publication.",
            ["stream"], LATENCY_BUCKETS, r)
        self.batch_size = Histogram(
            f"{PREFIX}_inference_batch_frames", "Real frames per inference batch.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.queue_depth = Gauge(
            f"{PREFIX}_queue_depth", "Items waiting in each inter-stage queue.", ["queue"], registry=r)
        self.buffers_in_use = Gauge(
            f"{PREFIX}_input_buffers_in_use", "Batch input buffers being filled or run.", registry=r)
        self.dropped = Counter(
            f"{PREFIX}_frames_dropped", "Frames read but not classified, by cause (queue_full, stale, decode_error, "
            "interval, error: the frame its stream failed on).", ["stream", "cause"], registry=r)
        self.source_state = Gauge(
            f"{PREFIX}_source_state", "1 for each stream's current state, 0 for the others.", ["stream", "state"],
            registry=r)
        self.resolution_changes = Counter(
            f"{PREFIX}_resolution_changes", "Times a stream's frame size changed.", ["stream"], registry=r)
        self.frames_missing = Counter(
            f"{PREFIX}_frames_missing", "Frames a file's container declares that the file ended without "
            "(it was cut short or damaged at its end).", ["stream"], registry=r)
        self.streams_ended = Counter(
            f"{PREFIX}_streams_ended", "Streams that came to an end, by their final state: ended (a file read to "
            "its end, or a source stopped at shutdown) or failed (a live source that gave up reconnecting, or a "
            "stream cut by the daemon's failure).",
            ["stream", "state"], registry=r)
        self.model = Info(f"{PREFIX}_model", "The model and engine in use.", registry=r)
        self.build_seconds = Gauge(
            f"{PREFIX}_engine_build_seconds", "Seconds start-up spent on the engine, by step: build (ONNX Runtime: "
            "creating the session; MIGraphX: compiling, or loading the compiled program from its cache) and warmup "
            "(the first runs, where some ONNX Runtime providers compile).", ["step"], registry=r)
        self.program_cache = Counter(
            f"{PREFIX}_engine_program_cache", "MIGraphX compiled-program cache lookups at start-up, by outcome.",
            ["outcome"], registry=r)
        self.program_cache_bytes = Gauge(
            f"{PREFIX}_engine_program_cache_bytes", "Bytes the MIGraphX compiled-program cache's entries take after "
            "start-up's lookup, once the least recently used beyond engine.migraphx.cache_max_bytes are evicted "
            "(0 under ONNX Runtime).", registry=r)
        self.engine_nodes = Gauge(
            f"{PREFIX}_engine_nodes", "Nodes of the model's graph each ONNX Runtime provider ran, as ONNX Runtime's "
            "profile of the first run reports them (a GPU provider that fuses the nodes it takes counts each fused "
            "group as one; none under MIGraphX).", ["provider"], registry=r)
        self.device_memory = Gauge(
            f"{PREFIX}_device_memory_bytes", "The GPU's memory (MIGraphX engine only), read at each scrape: total, "
            "used by every process on it, and ours (the compiled program as loaded, and the engine's buffers). A "
            "program that did not fit went to host memory instead, many times slower: see "
            "engine.migraphx.allow_host_memory.", ["kind"], registry=r)

    def watch_device_memory(self, read: Callable[[], DeviceMemory | None]) -> None:
        """Report the GPU's memory as ``read()`` says at each scrape (NaN while it cannot say)."""
        for kind in DEVICE_MEMORY_KINDS:
            def value(kind: str = kind) -> float:
                memory = read()
                return math.nan if memory is None else float(getattr(memory, kind))

            self.device_memory.labels(kind=kind).set_function(value)

    def watch_queue(self, name: str, depth: Callable[[], int]) -> None:
        """Report ``depth()`` as the queue's depth at scrape time."""
        self.queue_depth.labels(queue=name).set_function(depth)

    def drop_counts(self, stream: str) -> DropCounts:
        """A registration's drop counter: counts each dropped frame of ``stream`` (with its cause) in the metric
        and for the registration's end status."""
        children = {cause: self.dropped.labels(stream=stream, cause=cause) for cause in DROP_CAUSES}
        return DropCounts(DROP_CAUSES, lambda cause, frames: children[cause].inc(frames))

    def counter_for(self, stream: str, stage: str) -> Counter:
        """The stage-frame counter of one stream and stage (look it up once, increment often)."""
        return self.stage_frames.labels(stream=stream, stage=stage)

    def count_frames(self, frames: Iterable[Frame], stage: str) -> None:
        """A batch's frames passed ``stage``: one increment per stream in it."""
        for stream, count in collections.Counter(frame.stream_id for frame in frames).items():
            self.stage_frames.labels(stream=stream, stage=stage).inc(count)

    def add_stream(self, stream: str) -> None:
        """A stream's series, at 0 from the moment it exists (so that a first increase shows as one)."""
        self.frames.labels(stream=stream)
        for stage in COUNTED_STAGES:
            self.stage_frames.labels(stream=stream, stage=stage)
        for cause in DROP_CAUSES:
            self.dropped.labels(stream=stream, cause=cause)
        for state in FINAL_STATES:
            self.streams_ended.labels(stream=stream, state=state)
        self.resolution_changes.labels(stream=stream)
        self.frames_missing.labels(stream=stream)
        self.end_to_end_latency.labels(stream=stream)

    def remove_stream(self, stream: str) -> None:
        """A stream removed from the configuration: its series go (Prometheus marks them stale)."""
        removals: list[tuple[Any, tuple[str, ...]]] = [
            (self.frames, (stream,)), (self.resolution_changes, (stream,)), (self.frames_missing, (stream,)),
            *((self.stage_frames, (stream, stage)) for stage in COUNTED_STAGES),
            *((self.dropped, (stream, cause)) for cause in DROP_CAUSES),
            *((self.streams_ended, (stream, state)) for state in FINAL_STATES),
            *((self.source_state, (stream, state)) for state in SOURCE_STATES),
        ]
        for metric, labels in removals:
            with contextlib.suppress(KeyError):  # a series never created
                metric.remove(*labels)
        self.end_to_end_latency.remove(stream)
