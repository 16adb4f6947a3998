"""Streams changed on SIGHUP while the others run on: added, removed, restarted (what it opens changed) or
updated in place, with real servers (RTSP, MJPEG over HTTP), real files and a real daemon; and regions
of interest."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import SHAPES_MODEL, daemon_config, free_port, solid_frames, write_video
from tests.live_servers import MjpegServer, RtspServer, rtsp_unavailable, shapes_camera
from tests.source_tables import source_table
from tests.subscriber import Subscriber, get, poll, scrape

RELOAD_CYCLES = 13  # four reloads each: add, update in place, restart, remove (52 in all)
STEADY_LABELS = {"dock": "red circle", "gate": "blue square", "lobby": "yellow circle"}
FAST_RECONNECT = {"base_s": 0.2, "cap_s": 1.0, "stall_timeout_s": 2.0}


def config(sources: str, zmq_port: int, metrics_port: int, model: Path = SHAPES_MODEL, batch_size: int = 4) -> str:
    return daemon_config(model, sources, zmq_port, metrics_port, exit_when_done=False, batch_size=batch_size,
                         engine='type = "onnxruntime"', top_k=1)


class Reloader:
    """Rewrites a running daemon's configuration and sends SIGHUP; waits for the reload to be taken."""

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        self.reloads = 0

    def __call__(self, text: str) -> None:
        self.daemon.config.write_text(text)
        self.daemon.signal(signal.SIGHUP)
        self.reloads += 1
        wait_for(lambda: self.daemon.stderr.count("SIGHUP: configuration") >= self.reloads, self.daemon)


def wait_for(done: Callable[[], bool], daemon: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert daemon.process.poll() is None, daemon.stderr
        assert time.monotonic() < deadline, f"timed out:\n{daemon.stderr[-3000:]}"
        time.sleep(0.05)


def stream_messages(subscriber: Subscriber, stream: str) -> list[dict[str, Any]]:
    """The stream's labels and status messages, in the order they were published."""
    return [m for topic, m in subscriber.messages if topic in (f"label/{stream}/", f"status/{stream}/")]


def labels_of(subscriber: Subscriber, stream: str) -> list[dict[str, Any]]:
    return [m for m in stream_messages(subscriber, stream) if m["type"] == "label"]


def series_of(metrics: dict, stream: str) -> list[str]:
    return [name for name, labels in metrics if ("stream", stream) in labels]


def test_one_stream_added_updated_restarted_and_removed_fifty_times_while_three_others_run(
        tmp_path: Path, daemon_process) -> None:
    reason = rtsp_unavailable()
    if reason:
        pytest.skip(reason)
    rtsp = RtspServer(shapes_camera("red circle"), tmp_path / "rtsp").start()
    gate_camera = MjpegServer(shapes_camera("blue square", seed=1)).start()
    yard_camera = MjpegServer(shapes_camera("green circle", seed=2)).start()
    lobby = write_video(tmp_path / "lobby.mp4", (shapes_camera("yellow circle", seed=3)(n) for n in range(3000)))
    steady = (source_table("dock", type="stream", url=rtsp.url, reconnect=FAST_RECONNECT)
              + source_table("gate", type="stream", url=gate_camera.url, reconnect=FAST_RECONNECT)
              + source_table("lobby", path=lobby, pace=True))
    # The changing stream: a second MJPEG camera; then classifying a region at most 10 frames a second (in
    # place); then the RTSP camera instead (a restart); then gone.
    yard = source_table("yard", type="stream", url=yard_camera.url, reconnect=FAST_RECONNECT)
    yard_updated = source_table("yard", type="stream", url=yard_camera.url, reconnect=FAST_RECONNECT, fps_cap=10.0,
                                roi={"x": 10, "y": 0, "width": 140, "height": 120})
    yard_moved = source_table("yard", type="stream", url=rtsp.url, reconnect=FAST_RECONNECT, fps_cap=10.0)
    zmq_port, metrics_port = free_port(), free_port()
    subscriber = Subscriber(f"tcp://127.0.0.1:{zmq_port}")
    daemon = daemon_process(config(steady, zmq_port, metrics_port)).start()
    reload = Reloader(daemon)
    try:
        # Settled first: an RTSP source delivers the frames its opening buffered in one burst, which its
        # buffer_frames may not hold (dropped as queue_full, as a live source's frames are).
        subscriber.receive_until(lambda m: all(len(labels_of(subscriber, s)) >= 25 for s in STEADY_LABELS), 60)
        settled = {s: len(labels_of(subscriber, s)) for s in STEADY_LABELS}
        drops_before = scrape(metrics_port)

        def yard_count(predicate: Callable[[dict[str, Any]], bool]) -> int:
            return sum(predicate(m) for m in stream_messages(subscriber, "yard"))

        def receive_yard(predicate: Callable[[dict[str, Any]], bool], count: int) -> None:
            subscriber.receive_until(lambda m: yard_count(predicate) >= count, 60)

        def is_label(m: dict[str, Any]) -> bool:
            return m["type"] == "label"

        def is_rtsp_label(m: dict[str, Any]) -> bool:
            return is_label(m) and m["top_k"][0]["label"] == "red circle"

        def is_removal(m: dict[str, Any]) -> bool:
            return m["type"] == "status" and "removed" in m.get("detail", "")

        for cycle in range(RELOAD_CYCLES):
            labels_before = yard_count(is_label)
            reload(config(steady + yard, zmq_port, metrics_port))
            receive_yard(is_label, labels_before + 5)
            if cycle == 0:  # /readyz and the metrics follow
                assert get(metrics_port, "/readyz")[1]["streams"]["yard"]["state"] == "running"
                assert "nfnet_stream_frames_total" in series_of(scrape(metrics_port), "yard")

            reload(config(steady + yard_updated, zmq_port, metrics_port))
            assert "sources[yard] updated: fps_cap: None -> 10.0; roi.height: None -> 120.0" in daemon.stderr
            receive_yard(is_label, yard_count(is_label) + 3)

            reload(config(steady + yard_moved, zmq_port, metrics_port))
            receive_yard(is_rtsp_label, 3 * (cycle + 1))

            reload(config(steady, zmq_port, metrics_port))
            receive_yard(is_removal, cycle + 1)
            # Once its end is published, the stream leaves /readyz and the metrics.
            poll(metrics_port, "/readyz", lambda status, body: "yard" not in body["streams"], 10)
            if cycle == 0:
                wait_for(lambda: not series_of(scrape(metrics_port), "yard"), daemon, 10)
        metrics = scrape(metrics_port)
        readiness = get(metrics_port, "/readyz")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0, daemon.stderr
        subscriber.receive_until(lambda m: False, timeout_s=10, quiet_s=1.0)
    finally:
        subscriber.close()
        for server in (rtsp, gate_camera, yard_camera):
            server.stop()
    assert reload.reloads == 4 * RELOAD_CYCLES >= 50

    # The three others: every frame, once, in order, right; untouched by the reloads (no reconnect, no drop).
    for stream, label in STEADY_LABELS.items():
        labels = labels_of(subscriber, stream)
        assert [m["seq"] for m in labels] == list(range(len(labels))), f"{stream}: seq contiguous"
        during = labels[settled[stream]:]
        assert len(during) > 250, f"{stream}: ran all along"
        assert sum(m["dropped"] for m in during) == 0, f"{stream}: nothing dropped during the reloads"
        first = during[0]["frame_index"]
        assert [m["frame_index"] for m in during] == list(range(first, first + len(during))), f"{stream}: every frame"
        assert {m["top_k"][0]["label"] for m in labels} == {label}
        states = [m["state"] for m in stream_messages(subscriber, stream) if m["type"] == "status"]
        assert states == ["connecting", "running", "ended"], f"{stream}: {states}"
        for cause in ("queue_full", "stale", "decode_error", "interval"):
            key = ("nfnet_stream_frames_dropped_total", (("cause", cause), ("stream", stream)))
            assert metrics[key] == drops_before[key], f"{stream}: {cause} drops during the reloads"
    assert readiness[0] == 200 and set(readiness[1]["streams"]) == set(STEADY_LABELS)
    assert not series_of(metrics, "yard"), "a removed stream's series are gone"

    # The changing one: seq contiguous across its registrations; each registration's labels all come
    # before its end, which says why it ended and that every frame classified was published.
    yard_messages = stream_messages(subscriber, "yard")
    yard_labels = [m for m in yard_messages if m["type"] == "label"]
    assert [m["seq"] for m in yard_labels] == list(range(len(yard_labels)))
    ends = [m for m in yard_messages if m["type"] == "status" and m["state"] == "ended"]
    assert len(ends) == 2 * RELOAD_CYCLES
    assert [("removed" in m["detail"], "restarted" in m["detail"]) for m in ends] == \
        [(False, True), (True, False)] * RELOAD_CYCLES
    registration: list[dict[str, Any]] = []
    for message in yard_messages:
        if message["type"] == "label":
            registration.append(message)
            continue
        if message["state"] != "ended":
            continue
        published, read = map(int, re.search(r"(\d+) of (\d+) frames published", message["detail"]).groups())
        assert published == len(registration) > 0, message
        assert registration[0]["frame_index"] == registration[0]["dropped"], "counted from its first frame"
        assert sum(m["dropped"] for m in registration) + len(registration) == registration[-1]["frame_index"] + 1
        assert read >= registration[-1]["frame_index"] + 1
        registration = []
    assert registration == [], "no label after the last end"
    assert {m["top_k"][0]["label"] for m in yard_labels} == {"green circle", "red circle"}


def test_a_removed_file_publishes_what_it_read_and_an_added_one_runs_to_its_end(tmp_path: Path,
                                                                                  daemon_process) -> None:
    long_video = write_video(tmp_path / "long.mp4", (shapes_camera("blue circle")(n) for n in range(4000)))
    short_video = write_video(tmp_path / "short.mp4", (shapes_camera("green square")(n) for n in range(60)))
    zmq_port, metrics_port = free_port(), free_port()
    subscriber = Subscriber(f"tcp://127.0.0.1:{zmq_port}")
    daemon = daemon_process(config(source_table("long", path=long_video), zmq_port, metrics_port)).start()
    reload = Reloader(daemon)
    try:
        subscriber.receive_labels(50, timeout_s=60)
        reload(config(source_table("short", path=short_video), zmq_port, metrics_port))
        subscriber.receive_until(lambda m: sum(s["state"] == "ended" for s in subscriber.statuses) == 2, 60)
        daemon.wait_for_log("all streams ended")
        # A file that cannot be read changes nothing: the reload is refused whole.
        reload(config(source_table("short", path=short_video) + source_table("gone", path=tmp_path / "gone.mp4"),
                      zmq_port, metrics_port))
        assert "SIGHUP: configuration not reloaded, keeping the running one: source 'gone': video" in daemon.stderr
        assert "gone" not in get(metrics_port, "/readyz")[1]["streams"]
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0, daemon.stderr
    finally:
        subscriber.close()
    long_labels = labels_of(subscriber, "long")
    end = next(m for m in stream_messages(subscriber, "long") if m["type"] == "status" and m["state"] == "ended")
    assert stream_messages(subscriber, "long")[-1] is end, "its end comes after its last label"
    assert end["detail"].startswith("removed from the configuration; ")
    assert f"{len(long_labels)} of {len(long_labels)} frames published" in end["detail"], "every frame read"
    assert 50 <= len(long_labels) < 4000
    assert [m["frame_index"] for m in long_labels] == list(range(len(long_labels)))
    short_labels = labels_of(subscriber, "short")
    assert [m["frame_index"] for m in short_labels] == list(range(60))
    assert {m["top_k"][0]["label"] for m in short_labels} == {"green square"}


def halves(left_rgb: tuple[int, int, int], right_rgb: tuple[int, int, int], frames: int) -> list[np.ndarray]:
    """Frames whose left half is one colour and right half another (120 x 160)."""
    left, right = (next(solid_frames([colour], size_hw=(120, 80), seed=n)) for n, colour in
                   enumerate((left_rgb, right_rgb)))
    return [np.concatenate([left, right], axis=1)] * frames


def test_a_region_of_interest_chooses_what_is_classified_and_changes_live(tmp_path: Path, colour_model_path: Path,
                                                                          daemon_process) -> None:
    red, blue = (230, 20, 20), (20, 20, 230)
    camera = MjpegServer(lambda n: halves(red, blue, 1)[0]).start()
    right = {"x": 0.5, "width": 0.5, "height": 1.0, "units": "fraction"}
    left = {"x": 0, "y": 0, "width": 80, "height": 120}
    zmq_port, metrics_port = free_port(), free_port()
    subscriber = Subscriber(f"tcp://127.0.0.1:{zmq_port}")
    text = config(source_table("belt", type="stream", url=camera.url, roi=right), zmq_port, metrics_port,
                  colour_model_path, batch_size=1)
    daemon = daemon_process(text).start()
    reload = Reloader(daemon)

    def belt_labels() -> list[str]:
        return [m["top_k"][0]["label"] for m in stream_messages(subscriber, "belt") if m["type"] == "label"]

    try:
        subscriber.receive_labels(10, timeout_s=60)
        assert set(belt_labels()) == {"blue"}
        reload(config(source_table("belt", type="stream", url=camera.url, roi=left), zmq_port, metrics_port,
                      colour_model_path, batch_size=1))
        subscriber.receive_until(lambda m: belt_labels()[-10:] == ["red"] * 10, 30)
        states = [m["state"] for m in stream_messages(subscriber, "belt") if m["type"] == "status"]
        assert states == ["connecting", "running"], "an ROI changes in place: no reconnect"

        # An ROI the frame cannot hold fails that stream, saying why; fixing it brings the stream back.
        too_wide = {"x": 100, "y": 0, "width": 100, "height": 120}
        reload(config(source_table("belt", type="stream", url=camera.url, roi=too_wide), zmq_port, metrics_port,
                      colour_model_path, batch_size=1))
        subscriber.receive_until(lambda m: any(s["state"] == "failed" for s in subscriber.statuses), 30)
        failed = next(s for s in subscriber.statuses if s["state"] == "failed")
        assert "the region of interest x=100..200, y=0..120 does not fit a 160x120 frame" in failed["detail"]
        status, body = get(metrics_port, "/readyz")
        assert status == 503 and body["streams"]["belt"]["state"] == "failed"
        assert daemon.process is not None and daemon.process.poll() is None, "the daemon runs on"
        reload(text)
        subscriber.receive_until(lambda m: belt_labels()[-5:] == ["blue"] * 5, 30)
        poll(metrics_port, "/readyz", lambda status, body: status == 200, 10)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0, daemon.stderr
    finally:
        subscriber.close()
        camera.stop()
    labels = labels_of(subscriber, "belt")
    assert [m["seq"] for m in labels] == list(range(len(labels)))
