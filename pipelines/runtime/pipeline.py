"""Wires sources → preprocess → engine → output with bounded queues, and owns the stage threads."""

from __future__ import annotations

import collections
import logging
import queue
import sys
import threading
import time
from dataclasses import dataclass

import cv2

from pipelines.engines.base import Engine
from pipelines.log_context import stream_context
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
from pipelines.runtime.stream_set import StreamSet
from pipelines.runtime.stream_state import StreamStates
from pipelines.sources import Source, is_live
from pipelines.sources.config import SourceBase

log = logging.getLogger(__name__)

SWITCH_INTERVAL_S = 0.0005


@dataclass(frozen=True)
class StageFailure:
    stage: str
    error: BaseException


class Pipeline:
    """The running pipeline. ``stop()`` drains gracefully; ``abort()`` ends every stage at once.

    Streams can be added, removed and restarted while it runs (a reload), from one thread (the daemon's
    main loop), which also calls :meth:`tick`. A stream's registration is one capture stage, from its
    source to its end; a restarted stream's new registration starts once the old one's end is published,
    so that its source is closed first and its frames come after all of the old ones.
    """

    def __init__(self, sources: list[Source], engine: Engine, info: ModelInfo, publishers: list[Publisher],
                 model_id: str, run: RunIdentity, config: PipelineConfig, metrics: PipelineMetrics) -> None:
        self._info = info
        self._config = config
        self._metrics = metrics
        # Frames are shrunk in their streams' capture threads, already in parallel: OpenCV's own pool on top
        # of that would only add threads that spin between the small jobs (at 4 x 720p, 5 % of the CPU
        # for nothing); each OpenCV call runs in the thread that makes it.
        cv2.setNumThreads(1)
        # Every stage drops the GIL around its native calls (decoding, each resize, a lookup, a send) and must
        # then wait to retake it from whichever thread runs Python: up to the switch interval (5 ms by
        # default), with the serial stages (batcher, output) waiting most. 0.5 ms keeps those waits short:
        # at 4 x 720p on 2 cores the daemon ran 8-10 % faster (median of 4 interleaved runs).
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        self._stop = threading.Event()
        self._abort = threading.Event()
        self._streams = StreamSet(close_when_all_ended=config.exit_when_sources_end)
        self.states = StreamStates([], metrics)
        # Files get capture_queue frames of room (and wait for more); live sources their buffer_frames
        # (and drop the oldest). Batches in flight are bounded by the buffer pool; the queues after
        # preprocessing only need room for them.
        self.mux = FrameMux()
        batches: queue.Queue = queue.Queue(maxsize=config.input_buffers)
        results: queue.Queue = queue.Queue(maxsize=config.input_buffers)
        self.pool = BufferPool(engine.input_buffers(config.input_buffers))
        clock = EngineClock(engine.max_in_flight)
        in_flight = InFlight(engine.max_in_flight)
        self._progress = ProgressTracker()
        self.output = OutputStage(results, publishers, info.labels, config.top_k, model_id, run,
                                  self._streams, self.states, self._abort, metrics)
        self._preprocess = PreprocessStage(self.mux, batches, Normaliser(info), self.pool, self._streams,
                                           config.batch_timeout_ms / 1000.0, clock, self._abort, metrics)
        self._stages: list[Stage] = [
            self._preprocess,
            SubmitStage(batches, in_flight, engine, self.pool, self._streams, clock, self._progress, self._abort),
            CollectStage(in_flight, results, engine, self.pool, self._streams, clock, self._progress, self._abort,
                         metrics),
            self.output,
        ]
        self._captures: dict[str, CaptureStage] = {}  # each configured stream's current registration
        self._retiring: list[CaptureStage] = []  # registrations stopped by a removal or a restart, still ending
        self._registered: collections.Counter[str] = collections.Counter()  # registrations per stream
        self._removed: set[str] = set()  # removed streams whose state and series go once their end is published
        self._running = False
        for source in sources:
            self.add_stream(source)
        metrics.watch_queue("capture", self.mux.depth)
        metrics.watch_queue("batches", batches.qsize)
        metrics.watch_queue("results", results.qsize)
        metrics.buffers_in_use.set_function(lambda: self.pool.in_use)

    @property
    def stages(self) -> list[Stage]:
        return [*self._captures.values(), *self._retiring, *self._stages]

    @property
    def streams(self) -> list[str]:
        """The configured streams (removed ones that are still ending excluded)."""
        return list(self._captures)

    def start(self) -> None:
        self._running = True
        for stage in self._stages:
            stage.start()
        self._start_ready()

    def add_stream(self, source: Source) -> bool:
        """Classify one more stream (an id not configured now; one removed may still be ending: its new
        registration then waits). False, with ``source`` closed, once the pipeline takes no more (a stop)."""
        stream = source.stream_id
        if stream in self._captures:
            raise ValueError(f"stream {stream!r} is already configured")
        if not self._streams.register():
            source.close()
            log.warning("stream %s not added: the pipeline is ending", stream, extra=stream_context(stream))
            return False
        self._removed.discard(stream)  # removed and added again: its state and series go on
        self._metrics.add_stream(stream)
        self.states.add(stream)
        self.output.configure(sources=[source.config])
        self._registered[stream] += 1
        self._captures[stream] = CaptureStage(source, FrameShrinker(self._info, source.config.roi), self.mux,
                                              self.states, self._streams, self._config.capture_queue,
                                              self._abort, self._metrics)
        self._preprocess.just_in_time = self._any_live()
        self._start_ready()
        return True

    def remove_stream(self, stream: str) -> None:
        """Stop reading ``stream``; every frame it read is still published, then its end (saying it was
        removed), after which its state and metric series go (at a :meth:`tick`)."""
        self._retire(self._captures.pop(stream), "removed from the configuration", removed=True)
        self._removed.add(stream)
        self._preprocess.just_in_time = self._any_live()

    def restart_stream(self, source: Source) -> bool:
        """The stream's settings changed: end its registration (as a removal would, but its state and series
        stay) and start one reading ``source`` once that end is published."""
        current = self._captures.pop(source.stream_id)
        added = self.add_stream(source)  # first: withdrawing ``current`` must not close the set meanwhile
        self._retire(current, "restarted: its settings changed", removed=False)
        return added

    def update_stream(self, config: SourceBase) -> None:
        """Settings that apply without reopening the stream's source (see :meth:`CaptureStage.update`) and
        its publish settings; the stream goes on, nothing is lost."""
        self._captures[config.id].update(config)
        self.output.configure(sources=[config])

    def configure_output(self, k: int) -> None:
        """A new ``top_k``, from the next batch on."""
        self.output.configure(k=k)

    def tick(self, stuck_after_s: float) -> None:
        """Called often from the thread that adds and removes streams: start the registrations whose
        stream's previous one has ended; once a removed stream's end is published, forget its state and
        series; end a stopped registration whose thread has been stuck in its source for ``stuck_after_s``."""
        for stage in self._retiring:
            stage.abandon_if_waiting(stuck_after_s)
        self._retiring = [stage for stage in self._retiring if not stage.settled or stage.error is not None]
        for stream in [s for s in self._removed if self.output.ends_published[s] == self._registered[s]]:
            self._metrics.remove_stream(stream)
            self.states.remove(stream)
            self._removed.discard(stream)
        self._start_ready()

    def stop(self, failure: str = "") -> None:
        """Stop reading sources; frames already read are still classified and published. ``failure``: the
        daemon stops because of this error: each stream stopped ends as failed, saying so."""
        self._stop.set()
        self._streams.close()
        for stream, stage in list(self._captures.items()):
            if self._running and not stage.started:  # a restart's registration, still waiting: it read nothing
                self._withdraw(self._captures.pop(stream), "")
            else:
                stage.stop(f"the daemon failed: {failure}" if failure else "", failed=bool(failure))

    def abort(self) -> None:
        self._abort.set()

    def announce_unended(self, why: str) -> list[str]:
        """After an abort, once the output stage has stopped: each stream whose end was never published is
        announced failed, saying ``why`` (no subscriber waits for an end that cannot come); those streams."""
        if self.output.is_alive():
            return []
        streams = [stream for stream, count in self._registered.items() if self.output.ends_published[stream] < count]
        for stream in streams:
            self.output.announce_failed(stream, why)
        return streams

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
    def idle(self) -> bool:
        """Every stream registered so far has ended and its end is published (with
        ``exit_when_sources_end = false``, the pipeline then waits for a stream to be added)."""
        return self.output.ends_total == sum(self._registered.values())

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
            if stage.ident is not None and not stage.abandoned:
                stage.join(max(0.0, deadline - time.monotonic()))
        return [stage.name for stage in self.stages if not stage.settled]

    def _retire(self, stage: CaptureStage, because: str, removed: bool) -> None:
        """End a registration: stop a running one (it publishes what it read, then its end); withdraw one
        still waiting for its predecessor's end, which then says why (a stream's statuses follow its life:
        never 'running' after its end, never two ends in a row)."""
        if self._running and not stage.started:
            self._withdraw(stage, because if removed else "")
            return
        self._retiring.append(stage)
        if not stage.stop(because, removed) and removed:  # it had ended by itself: its end says nothing of this
            self._amend_or_announce_removal(stage.stream_id, because)

    def _amend_or_announce_removal(self, stream: str, because: str) -> None:
        """The stream's latest end (still to publish) says ``because`` too; once published, the publishers are
        told the stream was removed all the same."""
        if not self.output.amend_end(stream, self._registered[stream], because):
            self.output.configure(removed=[stream])

    def _withdraw(self, stage: CaptureStage, because: str) -> None:
        """Withdraw a registration that never started; ``because``: news for its predecessor's end."""
        stream = stage.stream_id
        stage.cancel()
        self._streams.withdraw()
        self._registered[stream] -= 1
        if because:
            self._amend_or_announce_removal(stream, because)

    def _start_ready(self) -> None:
        """Start each registration whose stream's previous registrations have all ended and been published."""
        if not self._running:
            return
        for stream, stage in self._captures.items():
            if not stage.started and self.output.ends_published[stream] == self._registered[stream] - 1:
                stage.start()

    def _any_live(self) -> bool:
        return any(is_live(stage.config) for stage in self._captures.values())
