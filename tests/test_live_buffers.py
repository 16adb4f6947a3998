"""Backoff delays and the per-stream frame buffers: lossless files, drop-oldest and stale live frames,
round-robin across streams."""

from __future__ import annotations

import queue
import random
import threading
import time

import numpy as np
import pytest

from pipelines.frames import Batch, EndOfStream, Frame, FrameTimes
from pipelines.model_info import ModelInfo, WeightSource
from pipelines.preprocess import BufferPool, Normaliser
from pipelines.runtime.engine_clock import EngineClock
from pipelines.runtime.frame_mux import FrameMux
from pipelines.runtime.metrics import PipelineMetrics
from pipelines.runtime.preprocess import PreprocessStage
from pipelines.runtime.stream_set import StreamSet
from pipelines.sources.backoff import backoff_delay


def frame(stream: str, index: int, age_s: float = 0.0) -> Frame:
    now = time.perf_counter() - age_s
    return Frame(stream, index, index / 25, 0, FrameTimes(now, now), np.zeros((2, 2, 3), np.uint8))


def test_backoff_grows_exponentially_to_the_cap_with_jitter() -> None:
    rng = random.Random(1)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (6, 16.0), (7, 30.0), (100, 30.0)]:
        delays = [backoff_delay(attempt, 0.5, 30.0, rng) for _ in range(200)]
        assert ceiling / 2 <= min(delays) and max(delays) <= ceiling
        assert max(delays) - min(delays) > ceiling / 4, "jittered, not lockstep"
    with pytest.raises(ValueError):
        backoff_delay(0, 0.5, 30.0)


def test_live_stream_drops_the_oldest_when_full_and_counts_it() -> None:
    drops: list[str] = []
    mux, abort = FrameMux(), threading.Event()
    cam = mux.add_stream("cam", capacity=2, live=True, max_age_s=10.0, drop=drops.append)
    for index in range(5):
        assert mux.put(cam, frame("cam", index), abort)
    assert drops == ["queue_full"] * 3
    assert [mux.get(abort, 0).index for _ in range(2)] == [3, 4]  # the newest survive
    assert mux.get(abort, 0.01) is None


def test_stale_live_frames_are_dropped_when_their_turn_comes() -> None:
    drops: list[str] = []
    mux, abort = FrameMux(), threading.Event()
    cam = mux.add_stream("cam", capacity=4, live=True, max_age_s=0.2, drop=drops.append)
    mux.put(cam, frame("cam", 0, age_s=1.0), abort)
    mux.put(cam, frame("cam", 1), abort)
    assert mux.get(abort, 0).index == 1
    assert drops == ["stale"]


def test_file_stream_waits_for_room_and_loses_nothing() -> None:
    drops: list[str] = []
    mux, abort = FrameMux(), threading.Event()
    file = mux.add_stream("file", capacity=2, live=False, max_age_s=0.001, drop=drops.append)
    producer = threading.Thread(target=lambda: [mux.put(file, frame("file", i, age_s=5.0), abort)
                                                for i in range(50)])
    producer.start()
    time.sleep(0.05)
    assert mux.depth() == 2, "the producer must be waiting for room"
    received = [mux.get(abort, 1.0).index for _ in range(50)]
    producer.join()
    assert received == list(range(50)) and drops == [], "old frames of a file are never stale"


def test_end_of_stream_is_never_evicted_and_comes_last() -> None:
    mux, abort = FrameMux(), threading.Event()
    cam = mux.add_stream("cam", capacity=1, live=True, max_age_s=10.0, drop=lambda cause: None)
    mux.put(cam, frame("cam", 0), abort)
    mux.put(cam, EndOfStream("cam", 1), abort)
    mux.put(cam, frame("cam", 2), abort)  # evicts frame 0, not the marker
    assert isinstance(mux.get(abort, 0), EndOfStream)


def test_streams_are_served_round_robin() -> None:
    mux, abort = FrameMux(), threading.Event()
    a, b, c = (mux.add_stream(stream, capacity=10, live=False, max_age_s=1.0, drop=lambda cause: None)
               for stream in ("a", "b", "c"))
    for index in range(3):
        mux.put(a, frame("a", index), abort)
    mux.put(b, frame("b", 0), abort)
    mux.put(c, frame("c", 0), abort)
    order = [mux.get(abort, 0).stream_id for _ in range(5)]
    assert order == ["a", "b", "c", "a", "a"]


def test_abort_releases_a_waiting_file_producer() -> None:
    mux, abort = FrameMux(), threading.Event()
    file = mux.add_stream("file", capacity=1, live=False, max_age_s=1.0, drop=lambda cause: None)
    mux.put(file, frame("file", 0), abort)
    threading.Timer(0.05, abort.set).start()
    assert mux.put(file, frame("file", 1), abort) is False


def test_a_stream_registered_again_waits_for_its_predecessors_end() -> None:
    """A restarted stream (new settings) gets a new buffer; its frames never overtake the old one's."""
    mux, abort = FrameMux(), threading.Event()
    old = mux.add_stream("cam", capacity=10, live=False, max_age_s=1.0, drop=lambda cause: None)
    mux.put(old, frame("cam", 7), abort)
    new = mux.add_stream("cam", capacity=10, live=False, max_age_s=1.0, drop=lambda cause: None)
    mux.put(new, frame("cam", 0), abort)
    mux.put(old, EndOfStream("cam", 8), abort)
    taken = [mux.get(abort, 0) for _ in range(3)]
    assert [getattr(item, "index", "end") for item in taken] == [7, "end", 0]
    assert mux.get(abort, 0.01) is None and mux.depth() == 0


def test_the_batcher_holds_no_buffer_once_a_streams_end_is_handed_on() -> None:
    """A stream's end takes a buffer to wait for (something waits in the mux) but must not keep it: when the
    end reaches the next stage, every buffer is back (a scrape then reads 0 buffers in use)."""
    mux, streams, abort, out = FrameMux(), StreamSet(close_when_all_ended=False), threading.Event(), queue.Queue()
    info = ModelInfo("m", (3, 2, 2), (0.5,) * 3, (0.5,) * 3, "bilinear", 1.0, "center", ("a",),
                     WeightSource("random", "0"), None)
    pool = BufferPool([np.zeros((2, 3, 2, 2), np.float32) for _ in range(2)])
    stage = PreprocessStage(mux, out, Normaliser(info), pool, streams, 0.01, EngineClock(2), abort, PipelineMetrics())
    buffer = mux.add_stream("cam", 2, False, 1.0, lambda cause: None)
    streams.register()
    stage.start()
    try:
        pixels = np.zeros((3, 2, 2), np.uint8)
        mux.put(buffer, Frame("cam", 0, 0.0, 0, FrameTimes(0.0, 0.0), pixels), abort)
        mux.put(buffer, EndOfStream("cam", frames=1), abort)
        assert isinstance(out.get(timeout=5), Batch)
        assert isinstance(out.get(timeout=5), EndOfStream)
        assert pool.in_use == 1, "the batch's buffer is the next stage's until it releases it"
        mux.put(mux.add_stream("other", 2, False, 1.0, lambda cause: None), EndOfStream("other"), abort)
        streams.register()
        assert isinstance(out.get(timeout=5), EndOfStream)
        assert pool.in_use == 1, "an end alone leaves no buffer taken"
    finally:
        streams.close()
        abort.set()
        stage.join(timeout=5)
