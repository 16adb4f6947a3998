"""Wires sources → preprocess → engine → output with bounded queues, and owns the stage threads."""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

from pipelines.engines.base import Engine
from pipelines.model_info import ModelInfo
from pipelines.preprocess.buffers import BufferPool
from pipelines.preprocess.transform import FrameShrinker, Normaliser
from pipelines.publishers.base import Publisher
from pipelines.publishers.message import RunIdentity
from pipelines.runtime.capture import CaptureStage
from pipelines.runtime.config import PipelineConfig
from pipelines.runtime.engine_clock import EngineClock
from pipelines.runtime.frame_mux import FrameMux
from pipelines.runtime.inference import CollectStage, InFlight, SubmitStage
from pipelines.runtime.metrics import PipelineMetrics
from pipelines.runtime.output import OutputStage
from pipelines.runtime.preprocess import PreprocessStage
from pipelines.runtime.progress import Progress, ProgressTracker
from pipelines.runtime.stage import Stage
from pipelines.runtime.stream_state import StreamStates
from pipelines.sources import OpenCvSource, is_live

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageFailure:
    stage: str
    error: BaseException


class Pipeline:
    """The running pipeline. ``stop()`` drains gracefully; ``abort()`` ends every stage at once."""

    def __init__(self, sources: list[OpenCvSource], engine: Engine, info: ModelInfo, publishers: list[Publisher],
                 model_id: str, run: RunIdentity, config: PipelineConfig, metrics: PipelineMetrics) -> None:
        streams = [source.stream_id for source in sources]
        self._stop = threading.Event()
        self._abort = threading.Event()
        self.states = StreamStates(streams, metrics)
        # Files get capture_queue frames of room (and wait for more); live sources their buffer_frames
        # (and drop the oldest). Batches in flight are bounded by the buffer pool; the queues after
        # preprocessing only need room for them.
        self.mux = FrameMux()
        for source in sources:
            live = is_live(source.config)
            self.mux.add_stream(source.stream_id, source.config.buffer_frames if live else config.capture_queue,
                                live, source.config.max_frame_age_ms / 1000.0, metrics.dropper(source.stream_id))
        batches: queue.Queue = queue.Queue(maxsize=config.input_buffers)
        results: queue.Queue = queue.Queue(maxsize=config.input_buffers)
        self.pool = BufferPool(engine.input_buffers(config.input_buffers))
        clock = EngineClock(engine.max_in_flight)
        in_flight = InFlight(engine.max_in_flight)
        self._progress = ProgressTracker()
        self.output = OutputStage(results, publishers, info.labels, config.top_k, model_id, run,
                                  {source.stream_id: source.config for source in sources},
                                  self.states, self._abort, metrics)
        self.stages: list[Stage] = [
            *(CaptureStage(source, FrameShrinker(info), self.mux, self.states, self._stop, self._abort, metrics)
              for source in sources),
            PreprocessStage(self.mux, batches, Normaliser(info), self.pool, streams,
                            config.batch_timeout_ms / 1000.0, clock, any(is_live(s.config) for s in sources),
                            self._abort, metrics),
            SubmitStage(batches, in_flight, engine, self.pool, len(streams), clock, self._progress, self._abort),
            CollectStage(in_flight, results, engine, self.pool, streams, clock, self._progress, self._abort, metrics),
            self.output,
        ]
        metrics.watch_queue("capture", self.mux.depth)
        metrics.watch_queue("batches", batches.qsize)
        metrics.watch_queue("results", results.qsize)
        metrics.buffers_in_use.set_function(lambda: self.pool.in_use)

    def start(self) -> None:
        for stage in self.stages:
            stage.start()

    def stop(self) -> None:
        """Stop reading sources; frames already read are still classified and published."""
        self._stop.set()

    def abort(self) -> None:
        self._abort.set()

    def abandon_waiting_sources(self, longer_than_s: float) -> list[str]:
        """During a stop: end the streams whose thread has been stuck in a source's open() or read() for
        ``longer_than_s`` (see :meth:`CaptureStage.abandon_if_waiting`); their ids."""
        return [stage.stream_id for stage in self.stages
                if isinstance(stage, CaptureStage) and stage.abandon_if_waiting(longer_than_s)]

    @property
    def finished(self) -> bool:
        """Every stage has returned (all streams ended and drained, or aborted), or was abandoned."""
        return all(stage.settled for stage in self.stages)

    @property
    def stopping(self) -> bool:
        """``stop()`` or ``abort()`` was called: the pipeline is draining or ending."""
        return self._stop.is_set() or self._abort.is_set()

    def progress(self) -> Progress:
        """The engine's heartbeat (see :mod:`pipelines.runtime.progress`)."""
        return self._progress.snapshot()

    def failures(self) -> list[StageFailure]:
        return [StageFailure(stage.name, stage.error) for stage in self.stages if stage.error is not None]

    def join(self, timeout_s: float) -> list[str]:
        """Join the stages in pipeline order within ``timeout_s``; return the names still running."""
        deadline = time.monotonic() + timeout_s
        for stage in self.stages:
            if not stage.abandoned:
                stage.join(max(0.0, deadline - time.monotonic()))
        return [stage.name for stage in self.stages if not stage.settled]
