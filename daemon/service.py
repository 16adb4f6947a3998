"""The daemon's lifecycle: startup → main loop → shutdown.

Signal handlers only record the signal; the main loop acts on it. The first SIGINT/SIGTERM stops the
sources and lets every frame already read be classified and published (the drain); a second one, or a
drain longer than ``pipeline.drain_timeout_s``, aborts. SIGHUP reloads the configuration file: what can
change live is applied, the rest is reported as needing a restart (``daemon/reload.py``), and an invalid
file changes nothing. It also re-reads CURVE's authorised subscriber keys.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

from daemon.config import DaemonConfig
from daemon.health import assess
from daemon.http import MetricsServer
from daemon.logs import configure_logging
from daemon.reload import plan_reload
from daemon.reload_job import ReloadJob
from daemon.startup_progress import StartupProgress
from daemon.systemd_notify import SystemdNotifier
from daemon.systemd_reporter import SystemdReporter
from pipelines.engines import BuildCancelled, BuildHooks, Engine, create_engine
from pipelines.log_context import stream_context
from pipelines.model_info import ModelInfo, model_id, read_model_info
from pipelines.publishers import Publisher, PublisherError, create_publishers
from pipelines.publishers.message import RunIdentity
from pipelines.publishers.zmq import ZmqPublisher
from pipelines.runtime import Pipeline, PipelineMetrics
from pipelines.sources import Source, SourceConfig, SourceError, create_sources, is_live
from pipelines.sources.config import describe_source

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_INCOMPLETE = 4  # the sources ended, but not every one was read in full
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
HANDLED_SIGNALS = (*STOP_SIGNALS, signal.SIGHUP)
TICK_S = 0.1
# During a stop, a stream whose thread has waited this long in a source's open() or read() is ended without it.
STUCK_SOURCE_S = 1.0
# At shutdown, how long the stages may take to stop, then to end once aborted.
STAGE_STOP_S = 5.0


class DaemonFailure(RuntimeError):
    """The daemon could not do its job once running (a stage failed, a drain was cut short); one line."""
# systemd status lines (each asking for more time to start) during a long start-up step (a compile): well
# within the extension each asks for (systemd_reporter.START_EXTENSION_S).
STARTUP_STATUS_EVERY_S = 5.0


def open_sources(configs: list[SourceConfig], cfg: DaemonConfig) -> list[Source]:
    """The sources of ``configs`` (all or some of ``cfg``'s), checked, files opened: a file that cannot be read
    is a configuration error, raised here (:class:`SourceError`; the others are closed). Live sources are
    opened by their capture stage, which keeps retrying: a camera that is down must not stop the daemon
    (nor the other streams)."""
    sources = create_sources(configs, cfg.pipeline.decode_threads, among=cfg.sources)
    try:
        for source in sources:
            source.check()
            if not is_live(source.config):
                source.open()
                log.info("stream %s: opened %s", source.stream_id, describe_source(source.config),
                         extra=stream_context(source.stream_id))
    except Exception:
        for source in sources:
            source.close()
        raise
    return sources


class Daemon:
    def __init__(self, config: DaemonConfig, reload: Callable[[], DaemonConfig] | None = None) -> None:
        """``reload`` reads the configuration again (SIGHUP); without it SIGHUP only re-reads CURVE keys."""
        self.config = config
        self._reload_config = reload
        self.metrics = PipelineMetrics()
        self.info: ModelInfo | None = None
        self.engine: Engine | None = None
        self.sources: list[Source] = []
        self.publishers: list[Publisher] = []
        self.http: MetricsServer | None = None
        self.pipeline: Pipeline | None = None
        self.ready = threading.Event()
        self.run_identity = RunIdentity.new(config.publish.instance)
        self.startup_progress = StartupProgress()
        self._next_startup_status = 0.0
        self.systemd = SystemdReporter(SystemdNotifier(os.environ))
        self._signals: list[int] = []  # appended by signal handlers, consumed by the main loop
        self._abandoned: set[str] = set()  # streams ended during a stop while their thread was stuck
        self._old_handlers: dict[int, object] = {}
        self._reload_job: ReloadJob | None = None  # a SIGHUP's configuration being prepared
        self._reload_again = False  # another SIGHUP came meanwhile

    def run(self) -> int:
        """Start, run until the sources end or a signal arrives, shut down; return the exit code."""
        self._install_signal_handlers()
        failure = ""
        try:
            try:
                self.startup()
            except BuildCancelled as exc:
                log.info("stopped during start-up (%s), before any frame was read", exc)
                return EXIT_OK
            return self.main_loop()
        except Exception as exc:
            failure = str(exc) if isinstance(exc, DaemonFailure) else f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self.shutdown(failure)
            self._restore_signal_handlers()

    def startup(self) -> None:
        """Everything before the first frame; raises :class:`BuildCancelled` if a stop is requested meanwhile
        (between steps, or during a compile, which is then stopped)."""
        cfg = self.config
        if cfg.metrics.enabled:  # first: /healthz answers, and /readyz says "loading", while the model loads
            self.http = MetricsServer(cfg.metrics.host, cfg.metrics.port, self.metrics.registry,
                                      lambda: assess(self.ready, self.pipeline, self.startup_progress.snapshot()))
        # Before the engine, which may compile for minutes: a busy port or a bad key file fails at once.
        self.publishers = create_publishers(cfg.publish)
        for publisher in self.publishers:
            if isinstance(publisher, ZmqPublisher):
                log.info("publishing labels on %s", publisher.endpoint)
        log.info("run %s of instance %s", self.run_identity.run_id, self.run_identity.instance)
        self._startup_step("reading the model")
        self.info = read_model_info(cfg.model.path)
        identity = model_id(cfg.model.path, self.info)
        log.info("model %s (%s, input %s, %d classes, weights %s)", identity, cfg.model.path,
                 "x".join(map(str, self.info.input_size)), self.info.num_classes, self.info.weights.describe())

        self._startup_step("building the engine")
        started = time.perf_counter()
        hooks = BuildHooks(step=self._startup_step, stop_requested=self._stop_requested_during_startup)
        self.engine = create_engine(cfg.engine, cfg.model.path, self.info, hooks)
        built = time.perf_counter()
        self._startup_step("warming up")
        for run in range(cfg.engine.warmup_runs):  # a stop is taken between runs (one can take seconds on a CPU)
            self._raise_if_stop_requested()
            if run == 0:  # the first run also checks the output: a model that fails fails here, not at a frame
                self.engine.check_output(self.info.num_classes)
            else:
                self.engine.warmup(1)
        warmed = time.perf_counter()
        self._raise_if_stop_requested()
        facts = self.engine.describe()
        log.info("engine %s ready in %.2fs (%s)", self.engine.name, warmed - started,
                 ", ".join(f"{k}={v}" for k, v in facts.items()))
        self.metrics.model.info({"model_id": identity, "model_path": str(cfg.model.path),
                                 "weights": self.info.weights.describe(), **self.run_identity.fields(), **facts})
        self.metrics.build_seconds.labels(step="build").set(built - started)
        self.metrics.build_seconds.labels(step="warmup").set(warmed - built)
        placement = self.engine.placement
        if placement is not None:
            log.info("onnxruntime: %s", placement.describe())
            for provider, nodes in placement.counts().items():
                self.metrics.engine_nodes.labels(provider=provider).set(nodes)
        report = self.engine.build_report
        if report is not None:
            self.metrics.program_cache.labels(outcome=report.cache).inc()
            self.metrics.program_cache_bytes.set(report.cache_bytes)
            log.info("compiled program: cache %s, compile %.1fs", report.cache, report.compile_seconds)
        if self.engine.device_memory() is not None:
            self.metrics.watch_device_memory(self.engine.device_memory)

        self._raise_if_stop_requested()
        self._startup_step("opening the sources")
        self.sources = open_sources(cfg.sources, cfg)

        self.pipeline = Pipeline(self.sources, self.engine, self.info, self.publishers, identity,
                                 self.run_identity, cfg.pipeline, self.metrics)
        self._wait_for_subscribers()
        self._raise_if_stop_requested()
        self.pipeline.start()
        self.ready.set()
        log.info("ready: %d stream(s)", len(self.sources))
        self.systemd.ready(self.pipeline)

    def main_loop(self) -> int:
        assert self.pipeline is not None
        pipeline, cfg = self.pipeline, self.config.pipeline
        drain_deadline: float | None = None
        idle_announced = False
        while True:
            pipeline.tick(STUCK_SOURCE_S)
            self._apply_reload()
            for signum in self._take_signals():
                if signum == signal.SIGHUP:
                    self._reload()
                elif drain_deadline is None:
                    log.info("%s: stopping sources, publishing frames in flight", signal.Signals(signum).name)
                    pipeline.stop()
                    self.systemd.stopping("draining: publishing frames in flight")
                    drain_deadline = time.monotonic() + cfg.drain_timeout_s
                elif not pipeline.output.completed and not pipeline.idle:  # (idle: nothing left to publish)
                    log.warning("%s again: aborting the drain", signal.Signals(signum).name)
                    pipeline.abort()
            failures = pipeline.failures()
            if failures:
                pipeline.abort()
                raise DaemonFailure("; ".join(f"stage {failure.stage} failed: {type(failure.error).__name__}: "
                                              f"{failure.error}" for failure in failures))
            if drain_deadline is not None:
                self._abandoned.update(pipeline.abandon_waiting_sources(STUCK_SOURCE_S))
            if pipeline.finished:
                if not pipeline.output.completed:
                    raise DaemonFailure(f"aborted with frames unpublished ({self._published_summary()})")
                if drain_deadline is not None:
                    log.info("all streams done: %s", self._published_summary())
                    return EXIT_OK
                log.info("all streams done: %s", self._published_summary())
                return self._finished_code()
            if pipeline.idle and drain_deadline is None and not cfg.exit_when_sources_end:
                if not idle_announced:
                    log.info("all streams ended (%s); staying up until stopped", self._published_summary())
                    idle_announced = True
            else:
                idle_announced = False
            if drain_deadline is not None and time.monotonic() > drain_deadline:
                pipeline.abort()
                raise DaemonFailure(f"the drain took longer than pipeline.drain_timeout_s = {cfg.drain_timeout_s}s; "
                                    f"aborted with frames unpublished ({self._published_summary()})")
            self.systemd.tick(draining=drain_deadline is not None)
            time.sleep(TICK_S)

    def shutdown(self, failure: str = "") -> None:
        """Stop everything; ``failure``: the daemon stops because of this error (then every stream it stops
        ends as failed, saying why, never with a status that looks complete)."""
        self.systemd.stopping("shutting down")
        if self._reload_job is not None:
            self._reload_job.cancel()
            self._reload_job.join(timeout=5.0)
            log.warning("SIGHUP: configuration not reloaded: the daemon stopped while it was being prepared")
        still_running = self._stop_pipeline(failure)
        for source in self.sources:
            if source.stream_id not in self._abandoned:  # a thread may still be inside it
                source.close()
        for publisher in self.publishers:
            publisher.close()
        self._close_engine(still_running)
        if self.http is not None:
            self.http.close()
        self.systemd.close()

    def _stop_pipeline(self, failure: str) -> list[str]:
        """Stop the stages (abort those that do not stop within ``STAGE_STOP_S``); the stages still running."""
        if self.pipeline is None:
            return []
        self.pipeline.stop(failure)
        still_running = self.pipeline.join(timeout_s=STAGE_STOP_S)
        if still_running:
            self.pipeline.abort()
            still_running = self.pipeline.join(timeout_s=STAGE_STOP_S)
        if failure:
            self.pipeline.announce_unended(f"the daemon failed: {failure}; the frames of this stream it had "
                                           "read and not published are lost")
        return still_running

    def _close_engine(self, still_running: list[str]) -> None:
        """Free the engine once no stage uses it. A stage still running (stuck in a call to a hung GPU) may be
        inside the engine: waiting on its events, reading or filling its pinned buffers. Freeing them under it
        crashes the process (a segfault on a ROCm box), or blocks for ever in a wait for the hung GPU; so the
        engine is left to the process's exit."""
        if self.engine is None:
            return
        if still_running:
            log.warning("stages still running after the stop: %s; the engine is not closed: its memory is left "
                        "to the process's exit", ", ".join(still_running))
            return
        self.engine.close()

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """What a signal does: record it for the main loop (no locks: safe in a handler, any thread)."""
        self._signals.append(signum)

    def _take_signals(self) -> list[int]:
        """The signals recorded since the last call, in order; a burst of SIGHUPs is one reload (the last):
        a reload reads everything anew, and a flood of them must not hold up the main loop."""
        taken = [self._signals.pop(0) for _ in range(len(self._signals))]
        return [signum for index, signum in enumerate(taken)
                if signum != signal.SIGHUP or signal.SIGHUP not in taken[index + 1:]]

    def _wait_for_subscribers(self) -> None:
        wanted = self.config.publish.zmq.wait_for_subscribers
        zmq_publishers = [p for p in self.publishers if isinstance(p, ZmqPublisher)]
        if not wanted or not zmq_publishers:
            return
        log.info("waiting up to %.0fs for %d subscriber(s)", self.config.publish.zmq.wait_timeout_s, wanted)
        self._startup_step(f"waiting for {wanted} subscriber(s)")
        got = zmq_publishers[0].wait_for_subscribers(wanted, self.config.publish.zmq.wait_timeout_s,
                                                     cancelled=self._stop_requested_during_startup)
        if got < wanted and not self._stop_requested():
            log.warning("only %d of %d subscriber(s) arrived; starting anyway", got, wanted)

    def _stop_requested(self) -> bool:
        return any(signum in STOP_SIGNALS for signum in self._signals)

    def _startup_step(self, text: str) -> None:
        """A new start-up step: for /readyz, and as systemd's status line (asking for more time to start)."""
        self.startup_progress.step(text)
        self.systemd.starting(text)
        self._next_startup_status = time.monotonic() + STARTUP_STATUS_EVERY_S

    def _stop_requested_during_startup(self) -> bool:
        """Polled while a long step (a compile, a wait for subscribers) runs: refresh systemd's status with the
        elapsed time, and its start timeout with it."""
        if time.monotonic() >= self._next_startup_status:
            self.systemd.starting(self.startup_progress.status_line())
            self._next_startup_status = time.monotonic() + STARTUP_STATUS_EVERY_S
        return self._stop_requested()

    def _raise_if_stop_requested(self) -> None:
        if self._stop_requested():
            first = next(signum for signum in self._signals if signum in STOP_SIGNALS)
            raise BuildCancelled(f"{signal.Signals(first).name} received")

    def _reload(self) -> None:
        """SIGHUP: re-read CURVE's keys now; prepare the new configuration on a thread of its own (see
        :mod:`daemon.reload_job`), which :meth:`_apply_reload` applies once ready. A SIGHUP while one is being
        prepared is taken after it (the file as it is then: the latest wins)."""
        assert self.pipeline is not None
        for publisher in self.publishers:
            if isinstance(publisher, ZmqPublisher):
                try:
                    publisher.reload_authorized_keys()
                except PublisherError as exc:
                    log.error("SIGHUP: CURVE keys not reloaded, keeping those in force: %s", exc)
        if self._reload_config is None:
            return
        if self.pipeline.stopping:
            log.warning("SIGHUP: the daemon is stopping; configuration not reloaded")
            return
        if self._reload_job is not None:
            self._reload_again = True
            return
        self._reload_job = ReloadJob(self._reload_config, self.config, self._failed_streams())
        self._reload_job.start()

    def _apply_reload(self) -> None:
        """Apply a prepared reload, if one is ready: what can change live, at once; the rest is reported as
        needing a restart; on any error nothing changes."""
        job = self._reload_job
        if job is None or job.is_alive():
            return
        self._reload_job = None
        if self.pipeline is None or self.pipeline.stopping:
            log.warning("SIGHUP: the daemon is stopping; configuration not reloaded")
            return
        if job.new is None:
            log.error("SIGHUP: configuration not reloaded, keeping the running one: %s", job.error)
        else:
            self._apply_config(job.new)
        if self._reload_again:
            self._reload_again = False
            self._reload()

    def _apply_config(self, new: DaemonConfig) -> None:
        assert self.pipeline is not None
        plan = plan_reload(self.config, new, self._failed_streams())
        # The files were probed while the reload was prepared; each stream's capture thread opens its own.
        sources = create_sources(plan.sources.to_open, new.pipeline.decode_threads, among=new.sources)
        try:
            for source in sources:
                source.check()
        except SourceError as exc:
            log.error("SIGHUP: configuration not reloaded, keeping the running one: %s", exc)
            return
        self.config = plan.effective
        configure_logging(self.config.logging.level, self.config.logging.format)
        self.pipeline.configure_output(self.config.pipeline.top_k)
        for stream in plan.sources.removed:
            self.pipeline.remove_stream(stream)
        for source_config in plan.sources.updated:
            self.pipeline.update_stream(source_config)
        restarted = {config.id for config in plan.sources.restarted}
        for source in sources:
            if source.stream_id in restarted:
                self.pipeline.restart_stream(source)
            else:
                self.pipeline.add_stream(source)
        log.info("SIGHUP: configuration reloaded; %s", "applied: " + "; ".join(plan.applied) if plan.applied
                 else "no live setting changed")
        if plan.needs_restart:
            log.warning("SIGHUP: these changes need a restart and were not applied: %s", "; ".join(plan.needs_restart))

    def _failed_streams(self) -> list[str]:
        assert self.pipeline is not None
        return [stream for stream, change in self.pipeline.states.latest().items()
                if change is not None and change.state == "failed"]

    def _finished_code(self) -> int:
        """0, or ``EXIT_INCOMPLETE`` when a stream was not read in full (``pipeline.fail_on_incomplete``)."""
        assert self.pipeline is not None
        incomplete = self.pipeline.output.incomplete
        if not incomplete:
            return EXIT_OK
        summary = "; ".join(f"{stream}: {why}" for stream, why in incomplete.items())
        if not self.config.pipeline.fail_on_incomplete:
            log.warning("not every source was read in full (%s)", summary)
            return EXIT_OK
        log.error("not every source was read in full (%s); exit %d (pipeline.fail_on_incomplete)", summary,
                  EXIT_INCOMPLETE)
        return EXIT_INCOMPLETE

    def _published_summary(self) -> str:
        assert self.pipeline is not None
        return ", ".join(f"{stream}={count} published"
                         for stream, count in self.pipeline.output.published_counts().items())

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # embedded in a test thread: the embedder calls request_stop()
        for signum in HANDLED_SIGNALS:
            self._old_handlers[signum] = signal.signal(signum, self._on_signal)

    def _restore_signal_handlers(self) -> None:
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        self._old_handlers.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.request_stop(signum)
