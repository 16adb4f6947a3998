"""Capture stage: reads one source, shrinks each frame to the model's geometry, and hands it to the frame mux.

Shrinking here, right after decoding, spreads the heaviest per-frame CPU work over one thread per stream
(OpenCV releases the GIL for decoding and resizing), and keeps what waits in the mux small.

Every frame read gets the next index of its stream, whether it is then classified or dropped, so the
gap between two published frame indexes is exactly the number of frames dropped in between. A live
source that fails, ends unexpectedly or stalls is reconnected with jittered exponential backoff; a file
that ends, ends its stream. A source that cannot be reached stays in ``reconnecting`` (or ``failed``
after ``reconnect.max_attempts``): the daemon never exits because one stream failed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from pipelines.frames import EndOfStream, Frame, FrameTimes
from pipelines.log_context import stream_context
from pipelines.preprocess.transform import FrameShrinker
from pipelines.runtime.frame_mux import FrameMux
from pipelines.runtime.metrics import PipelineMetrics
from pipelines.runtime.stage import Stage
from pipelines.runtime.stream_set import StreamSet
from pipelines.runtime.stream_state import StreamStates
from pipelines.sources.backoff import backoff_delay
from pipelines.sources.base import RawFrame, Source, SourceError
from pipelines.sources.config import FileSourceConfig, SourceBase, describe_source, is_live
from pipelines.sources.timeline import FramePlacer

log = logging.getLogger(__name__)
T = TypeVar("T")


class CaptureStage(Stage):
    """One registration of one stream: from its source to its end (the source's end, a stop, the stream's
    removal or restart by a reload)."""

    def __init__(self, source: Source, shrink: FrameShrinker, mux: FrameMux, states: StreamStates,
                 streams: StreamSet, file_read_ahead: int, abort: threading.Event, metrics: PipelineMetrics) -> None:
        """``file_read_ahead``: frames a file's reader may be ahead of the batcher (it then waits: lossless)."""
        super().__init__(f"capture-{source.stream_id}", abort)
        self.stream_id = source.stream_id
        self._source = source
        self._shrink = shrink
        self._frame_size: tuple[int, int] | None = None
        self._size_changes = 0
        self._resolution_changes = metrics.resolution_changes.labels(stream=source.stream_id)
        self._config = source.config
        self._live = is_live(self._config)
        self._paced = isinstance(self._config, FileSourceConfig) and self._config.pace
        self._mux = mux
        self._file_read_ahead = file_read_ahead
        self._drop = metrics.drop_counts(source.stream_id)
        self._buffer = mux.add_stream(source.stream_id, self._buffer_frames(self._config), self._live,
                                      self._config.max_frame_age_ms / 1000.0, self._drop)
        self._states = states
        self._streams = streams
        self._stop_reading = threading.Event()  # a stop of the pipeline, or this registration's removal
        self._stopped_because = ""  # why it was stopped from outside: said in its end (a removal, a restart)
        self._removed = False
        self._cut_by_failure = False  # stopped because the daemon failed: it ends failed, not complete
        self._captured = metrics.frames.labels(stream=source.stream_id)
        self._index = 0  # the next frame's index in this stream
        self._last_accepted = float("-inf")
        self._pace_origin: tuple[float, float] | None = None  # (perf_counter, pts) of the first paced frame
        self._gave_up = ""  # why the stream failed, if it did
        self._undecodable = 0  # a file's frames that could not be decoded (or were skipped with damaged data)
        self._placer = FramePlacer(source.timeline)  # renewed at each opening (a file's timeline is known then)
        self._missing = 0  # frames the file should hold (its timeline's length) but that were never read
        self._frames_missing = metrics.frames_missing.labels(stream=source.stream_id)
        self._context = stream_context(source.stream_id)
        self._lock = threading.Lock()  # this thread's frames and end, against an abandonment during a stop
        self._waiting_since: float | None = None  # in the source's open() or read() since (monotonic)
        self._ended = False  # its EndOfStream is in the mux: nothing more of this stream goes in

    def loop(self) -> None:
        stream_id = self._source.stream_id
        try:
            final_state = self._capture()
        except Exception as exc:  # one stream's failure is that stream's: the others go on
            final_state = "failed"
            self._gave_up = f"{describe_source(self._config)}: {type(exc).__name__}: {exc}"
            log.error("stream %s failed: %s", stream_id, self._gave_up, extra=self._context)
        finally:
            self._source.close()
        shortfall = self._shortfall()
        self._end(final_state, self._gave_up, shortfall, complete=final_state != "failed" and not shortfall)

    def _end(self, state: str, *reasons: str, complete: bool) -> bool:
        """Put the stream's end in the mux, once (this thread or an abandonment), saying why it was stopped
        (if it was) and ``reasons``; the output stage announces it after the stream's last label. False if it
        was already ended."""
        stream_id = self._source.stream_id
        with self._lock:  # (a stop's reason, set under it, is in the end or refused: never lost between)
            if self._ended:
                return False
            self._ended = True
            if self._cut_by_failure:
                state, complete = "failed", False
            why = "; ".join(filter(None, (self._stopped_because, *reasons)))
            previous = self._states.get(stream_id)
            self._states.set(stream_id, state, "; ".join(filter(None, (why, f"{self._index} frames read"))),
                             announce=False)
            self._mux.put(self._buffer, EndOfStream(stream_id, self._index, state, previous, why, complete,
                                                    self._removed, self._missing, self._drop), self.abort)
        self._streams.ended()
        return True

    def _buffer_frames(self, config: SourceBase) -> int:
        """Frames its mux buffer holds: a live source's ``buffer_frames``; a file's room to read ahead."""
        return config.buffer_frames if is_live(config) else self._file_read_ahead

    def stop(self, because: str = "", removed: bool = False, failed: bool = False) -> bool:
        """Stop reading (a stop of the pipeline, or, saying ``because``, this registration's removal or
        restart, or the daemon's failure: ``failed``, then the stream ends failed); every frame already read
        still goes on. False if its end was out already (a file read to its end): that end says nothing of
        this stop."""
        with self._lock:
            if not self._stop_reading.is_set():  # the first reason stands (a removal, then the daemon's stop)
                self._stopped_because, self._removed, self._cut_by_failure = because, removed, failed
                self._stop_reading.set()
            return not self._ended

    def cancel(self) -> None:
        """Withdraw this registration before its thread started (its stream was removed or restarted again
        while the previous registration was still ending): it read nothing and publishes nothing; its source is
        closed and its buffer goes."""
        if self.started:
            raise RuntimeError(f"registration of {self.stream_id!r} is running: stop it instead")
        self._source.close()
        self._mux.discard(self._buffer)

    @property
    def config(self) -> SourceBase:
        return self._config

    @property
    def started(self) -> bool:
        """Its thread was started (a restarted stream's new registration waits for the previous one's end)."""
        return self.ident is not None

    def update(self, config: SourceBase) -> None:
        """Settings that change without reopening the source: fps_cap, interval, reconnect, buffer_frames,
        max_frame_age_ms, roi (the source's identity, what it opens, is unchanged)."""
        self._config = config
        self._shrink.roi = config.roi
        self._mux.resize(self._buffer, self._buffer_frames(config), config.max_frame_age_ms / 1000.0)

    def abandon_if_waiting(self, longer_than_s: float) -> bool:
        """Once stopped: a source's open() or read() cannot be interrupted (a camera that does not answer
        holds it for open_timeout_s). If this stream's thread has been in one for ``longer_than_s``, end the
        stream now: every frame it read is already on its way, and what the thread reads later is discarded.
        True if the stream was ended here."""
        since = self._waiting_since
        if not self._stop_reading.is_set() or since is None or time.monotonic() - since < longer_than_s:
            return False
        ended = self._end("ended", "stopped while waiting for the source", complete=True)
        if ended:
            self.abandoned = True
            log.warning("stream %s: stopped while waiting for %s; its thread is left to time out",
                        self._source.stream_id, describe_source(self._config), extra=self._context)
        return ended

    def _waiting(self, call: Callable[[], T]) -> T:
        """``call()`` (the source's open or read), noted as a wait that a stop may abandon."""
        self._waiting_since = time.monotonic()
        try:
            return call()
        finally:
            self._waiting_since = None

    def _shortfall(self) -> str:
        """What of a file could not be classified, in words ('' when nothing)."""
        parts = []
        if self._undecodable:
            parts.append(f"{self._undecodable} frame(s) could not be decoded")
        if self._missing:
            timeline = self._source.timeline
            length = "its duration and frame rate make" if timeline.estimated else "its container declares"
            parts.append(f"the file ended {self._missing} frame(s) before the {timeline.frames} {length}")
        return "; ".join(parts)

    def _capture(self) -> str:
        """Read until the source ends, fails for good, or the pipeline stops; return the final state."""
        failures = 0
        opened = self._source.is_open
        if opened and not self._stop_reading.is_set():
            self._states.set(self._source.stream_id, "running")
        while not self._stop_reading.is_set():
            if not opened:
                try:
                    self._states.set(self._source.stream_id, "reconnecting" if failures else "connecting")
                    self._waiting(self._source.open)
                except SourceError as exc:
                    if not self._live:
                        raise
                    failures += 1
                    if self._give_up(failures, str(exc)):
                        return "failed"
                    continue
                opened, failures = True, 0
                self._pace_origin = None
                self._placer = FramePlacer(self._source.timeline)
                self._states.set(self._source.stream_id, "running")
            read_start = time.perf_counter()
            raw = self._waiting(self._source.read)
            if raw is None:
                if not self._live or self._paced:
                    self._count_missing()
                    log.info("stream %s: source ended after %d frames", self._source.stream_id, self._index,
                             extra=self._context)
                    return "ended"
                # A live source that stops delivering: a lost connection, a stall past the read timeout,
                # or a frame that would not decode. Count it as one lost frame and reconnect.
                self._index += 1
                self._drop("decode_error")
                self._source.close()
                opened = False
                failures += 1
                if self._give_up(failures, "the source stopped delivering frames"):
                    return "failed"
                continue
            self._hand_on(raw, read_start)
        log.info("stream %s: capture stopped after %d frames", self._source.stream_id, self._index,
                 extra=self._context)
        return "ended"

    def _count_missing(self) -> None:
        """A file that ends before the length it should have: a warning, counted. One frame short is not:
        a length estimated from the duration (Matroska, MPEG-TS), or declared by an AVI without an index, can
        be one off."""
        length = self._source.timeline.frames
        if length - self._index > 1:
            self._missing = length - self._index
            self._frames_missing.inc(self._missing)
            log.warning("stream %s: %s", self._source.stream_id, self._shortfall(), extra=self._context)

    def _lost_before(self, raw: RawFrame) -> int:
        """Frames of a file lost just before this one, each then an index and a ``decode_error`` drop: those
        its decoder could not decode, or more where the frame's timestamp puts it further on the file's
        timeline (a demuxer that resynchronised past damaged data skipped frames without a word)."""
        return self._placer.place(raw.pts, raw.undecodable_before, self._index) - self._index

    def _hand_on(self, raw: RawFrame, read_start: float) -> None:
        lost = self._lost_before(raw)
        if lost:
            self._undecodable += lost
            self._index += lost
            self._drop("decode_error", lost)
            log.warning("stream %s: %d frame(s) before frame %d could not be decoded", self._source.stream_id,
                        lost, self._index, extra=self._context)
        index = self._index
        self._index += 1
        self._captured.inc()
        read_end = time.perf_counter()
        if self._paced:
            # The frame exists from the moment a camera would deliver it (its due time), decoded: the wait
            # for that moment is not latency, and a reader that falls behind the clock is late, exactly as
            # frames queued in a camera's driver would be. (For cameras and network streams read() itself
            # waits for the device, so their capture time includes up to one frame interval of waiting.)
            decode_s = read_end - read_start
            read_end = self._pace(raw.pts)
            read_start = read_end - decode_s
        now = time.monotonic()
        cap = self._config.fps_cap
        if index % self._config.interval or (cap and now - self._last_accepted < 1.0 / cap):
            self._drop("interval")
            return
        self._last_accepted = now
        self._note_frame_size(index, raw.size_hw)
        shrink_start = time.perf_counter()
        try:
            pixels = self._shrink(raw.image)
        except Exception:  # the stream fails on this frame (an ROI that does not fit it): read, so accounted
            self._drop("error")
            raise
        times = FrameTimes(read_start, read_end, shrink_s=time.perf_counter() - shrink_start)
        frame = Frame(self._source.stream_id, index, raw.pts, time.time_ns(), times, pixels)
        with self._lock:
            if not self._ended:  # ended by a stop while this frame was being read: discarded
                self._mux.put(self._buffer, frame, self.abort)

    def _note_frame_size(self, index: int, size: tuple[int, int]) -> None:
        """Count every change of the stream's frame size; log the first one (the preprocessing adapts)."""
        previous, self._frame_size = self._frame_size, size
        if previous is None or previous == size:
            return
        self._resolution_changes.inc()
        self._size_changes += 1
        if self._size_changes == 1:
            log.warning("stream %s: frame size changed from %dx%d to %dx%d; preprocessing adapts "
                        "(further changes are only counted)", self._source.stream_id, previous[1], previous[0],
                        size[1], size[0], extra=stream_context(self._source.stream_id, frame_index=index))

    def _pace(self, pts: float) -> float:
        """Sleep until the frame's time has come, as a camera would deliver it; return that (perf_counter) time,
        or now if a stop cut the wait short (the frame is delivered early: its latency counts from now, never
        from a moment still to come)."""
        if self._pace_origin is None:
            self._pace_origin = (time.perf_counter(), pts)
        due = self._pace_origin[0] + (pts - self._pace_origin[1])
        self._stop_reading.wait(max(0.0, due - time.perf_counter()))
        return min(due, time.perf_counter())

    def _give_up(self, failures: int, reason: str) -> bool:
        """Wait before the next attempt; True if attempts are exhausted."""
        reconnect = self._config.reconnect
        if reconnect.max_attempts is not None and failures >= reconnect.max_attempts:
            self._gave_up = f"gave up after {failures} attempts: {reason}"
            log.error("stream %s: %s", self._source.stream_id, self._gave_up, extra=self._context)
            return True
        delay = backoff_delay(failures, reconnect.base_s, reconnect.cap_s)
        log.info("stream %s: %s; reconnect attempt %d in %.1fs", self._source.stream_id, reason, failures, delay,
                 extra=self._context)
        self._states.set(self._source.stream_id, "reconnecting", f"{reason}; retry {failures} in {delay:.1f}s")
        self._stop_reading.wait(delay)
        return False
