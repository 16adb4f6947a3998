"""Nothing lost, part 2 (issue 19): every frame read is published or dropped with a cause, a stream's end
says what became of its frames and its last seq (and nfnet-subscribe checks it), replays never hold up labels
and forget removed streams, a subscriber that leaves leaves nothing behind, a stream's statuses follow its life
through reload storms, and a reload that opens large files does not stall the daemon. Real daemons, real files,
real sockets; every message a test subscriber receives is checked against the JSON Schema."""

from __future__ import annotations

import itertools
import json
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import zmq

import pipelines.publishers.zmq as zmq_publisher
from pipelines.publishers.config import ZmqPublisherConfig
from pipelines.publishers.message import RunIdentity, build_status_message, encode, status_topic
from pipelines.publishers.zmq import REPLAYS_PER_SERVE, ZmqPublisher
from tests.conftest import REPO, SHAPES_MODEL, daemon_config, free_port
from tests.double_fixtures import DOUBLES_ENV, migraphx_double_engine
from tests.source_tables import file_source, source_table
from tests.subscriber import Subscriber, check_message, scrape
from tests.test_stream_changes import Reloader, stream_messages, wait_for

FINAL = ("ended", "failed")


def config(sources: str, zmq_port: int, metrics_port: int, exit_when_done: bool = False,
           zmq_extra: str = "") -> str:
    text = daemon_config(SHAPES_MODEL, sources, zmq_port, metrics_port, exit_when_done,
                         engine='type = "onnxruntime"', top_k=1)
    return text.replace("[publish.zmq]\n", f"[publish.zmq]\n{zmq_extra}")


def ffmpeg_video(path: Path, frames: int, size: str = "160x120", rate: int = 25) -> Path:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
                    "-i", f"testsrc2=size={size}:rate={rate}", "-frames:v", str(frames), "-c:v", "libx264",
                    "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


def test_the_frame_a_stream_fails_on_is_dropped_with_a_cause(tmp_path: Path, daemon_process) -> None:
    """An ROI wider than the frame fails the stream on its first frame: read 1 = published 0 + dropped 1."""
    zmq_port, metrics_port = free_port(), free_port()
    video = ffmpeg_video(tmp_path / "cam.mp4", 10)
    sources = source_table("cam", path=video, roi={"x": 0, "y": 0, "width": 200, "height": 100})
    with closing(Subscriber(f"tcp://127.0.0.1:{zmq_port}")) as subscriber:
        daemon = daemon_process(config(sources, zmq_port, metrics_port)).start()
        subscriber.receive_until(lambda m: any(s["state"] in FINAL for s in subscriber.statuses), 60)
        metrics = scrape(metrics_port)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.stderr
    (end,) = [s for s in subscriber.statuses if s["state"] in FINAL]
    assert end["state"] == "failed" and "does not fit" in end["detail"], end
    assert (end["frames"], end["published"], end["dropped"]["error"]) == (1, 0, 1), end
    stream = (("stream", "cam"),)
    assert metrics[("nfnet_stream_frames_total", stream)] == 1
    assert metrics[("nfnet_stream_frames_dropped_total", (("cause", "error"), *stream))] == 1, \
        "before: read 1, published 0, dropped 0"


def test_a_paced_file_stopped_mid_file_never_publishes_a_negative_latency(tmp_path: Path, daemon_process) -> None:
    """At 5 frames/s the reader waits up to 200 ms for the next frame's time; a stop cuts that wait short, and
    that frame was stamped with its due time, still to come: its latency was negative."""
    zmq_port, metrics_port = free_port(), free_port()
    video = ffmpeg_video(tmp_path / "cam.mp4", 100, rate=5)
    with closing(Subscriber(f"tcp://127.0.0.1:{zmq_port}")) as subscriber:
        daemon = daemon_process(config(source_table("cam", path=video, pace=True), zmq_port, metrics_port)).start()
        subscriber.receive_labels(3, timeout_s=60)
        daemon.signal(signal.SIGTERM)
        subscriber.receive_until(lambda m: any(s["state"] in FINAL for s in subscriber.statuses), 30)
        assert daemon.wait(30) == 0, daemon.stderr
    latencies = [m["latency_ms"]["total"] for _, m in subscriber.labels]
    assert min(latencies) >= 0, latencies  # (and every message passed the schema, which says so too)


class LossyLink(threading.Thread):
    """A link between the daemon and one subscriber that loses the label messages whose seq is in ``lose``
    (as a restarting proxy or a full queue would); everything else goes through."""

    def __init__(self, upstream: str, lose: range) -> None:
        super().__init__(daemon=True)
        self._context = zmq.Context()
        self._down = self._context.socket(zmq.XPUB)
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self._down.bind(self.endpoint)
        self._upstream = upstream
        self._lose = lose
        self._closing = threading.Event()

    def run(self) -> None:
        up = self._context.socket(zmq.SUB)
        while not self._down.poll(100):  # the subscriber first: it must see every message the link passes
            if self._closing.is_set():
                return
        self._down.recv()
        up.setsockopt(zmq.SUBSCRIBE, b"")
        up.connect(self._upstream)
        while not self._closing.is_set():
            if up.poll(100):
                topic, payload = up.recv_multipart()
                message = check_message(json.loads(payload))
                if not (message["type"] == "label" and message["seq"] in self._lose):
                    self._down.send_multipart((topic, payload))
        up.close(linger=0)

    def close(self) -> None:
        self._closing.set()
        self.join(10)
        self._down.close(linger=0)
        self._context.term()


def subscribe_cli(endpoint: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tools.subscribe", "--endpoint", endpoint, "--until-ended", *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_labels_lost_before_a_streams_end_are_seen_by_nfnet_subscribe(tmp_path: Path, daemon_process) -> None:
    """The ended status carries the stream's last seq: nfnet-subscribe reports the 5 labels a link lost just
    before it (no seq gap shows them), exits 4, and marks a late joiner's replayed end as a replay."""
    zmq_port, metrics_port = free_port(), free_port()
    daemon_endpoint = f"tcp://127.0.0.1:{zmq_port}"
    link = LossyLink(daemon_endpoint, range(25, 30))
    link.start()
    try:
        watcher = subscribe_cli(link.endpoint)
        daemon = daemon_process(config(file_source("cam", tmp_path / "cam.mp4", 30), zmq_port, metrics_port)).start()
        out, err = watcher.communicate(timeout=60)
    finally:
        link.close()
    assert watcher.returncode == 4, err
    assert "cam: 5 label(s) MISSING at the end: the last received was seq 24, the stream's last is 29" in err
    assert "GAP" not in err and out.count("cam #") == 25
    late = subscribe_cli(daemon_endpoint)
    out, err = late.communicate(timeout=30)
    assert late.returncode == 0, err
    assert re.search(r"^cam \[ended\] \(replay: its state when this subscriber joined\) ", out, re.MULTILINE), out
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0, daemon.stderr


def test_the_end_status_accounts_for_every_frame_read(tmp_path: Path, daemon_process) -> None:
    """A file classified every third frame: read = published + dropped (interval), with the last seq."""
    zmq_port, metrics_port = free_port(), free_port()
    video = ffmpeg_video(tmp_path / "cam.mp4", 30)
    with closing(Subscriber(f"tcp://127.0.0.1:{zmq_port}")) as subscriber:
        daemon = daemon_process(config(source_table("cam", path=video, interval=3), zmq_port, metrics_port,
                                       exit_when_done=True)).start()
        subscriber.receive_until(lambda m: any(s["state"] in FINAL for s in subscriber.statuses), 60)
        assert daemon.wait(30) == 0, daemon.stderr
    (end,) = [s for s in subscriber.statuses if s["state"] in FINAL]
    assert end["frames"] == 30 and end["published"] == 10 and end["dropped"]["interval"] == 20, end
    assert end["last_seq"] == 9 and end["missing"] == 0 and end["suppressed"] == 0


def serve_until(publisher: ZmqPublisher, done: Any, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "timed out"
        publisher.serve()
        time.sleep(0.005)


def drain(socket: zmq.Socket) -> list[dict[str, Any]]:
    got = []
    while socket.poll(50):
        got.append(json.loads(socket.recv_multipart()[1]))
    return got


def test_replays_are_sent_a_few_at_a_time_once_per_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    """300 streams' statuses, 20 subscribers joining with the empty prefix: before, each subscription made the
    output thread send all 300 at once (6,000 sends in one go, while labels waited). Now no call sends more
    than REPLAYS_PER_SERVE, and one replay answers every subscription that came in before it started."""
    monkeypatch.setattr(zmq_publisher, "SUBSCRIPTION_READ_S", 0.0)
    publisher = ZmqPublisher(ZmqPublisherConfig(endpoint=f"tcp://127.0.0.1:{free_port()}"))
    context = zmq.Context()
    subscribers = []
    try:
        run = RunIdentity.new("box")
        for index in range(300):
            message = build_status_message(f"cam{index}", "running", "connecting", "", time.time_ns(), run)
            publisher.publish(status_topic(f"cam{index}"), encode(message), message)
        for _ in range(20):
            socket = context.socket(zmq.SUB)
            socket.setsockopt(zmq.RCVHWM, 0)
            socket.setsockopt(zmq.SUBSCRIBE, b"")
            socket.connect(publisher.endpoint)
            subscribers.append(socket)
        deadline = time.monotonic() + 10
        while publisher.subscription_count < 20:  # read the subscriptions only (nothing to replay yet)
            assert time.monotonic() < deadline
            publisher.wait_for_subscribers(20, 0.1)
        publisher._pending_replays[b""] = None  # as serve() would have queued them: one replay for all 20
        received = {id(socket): [] for socket in subscribers}
        for _ in range(100):
            publisher.serve()
            for socket in subscribers:
                batch = drain(socket)  # what that one call sent, all arrived
                assert len(batch) <= REPLAYS_PER_SERVE
                received[id(socket)] += batch
            if all(len(got) >= 300 for got in received.values()):
                break
        for got in received.values():
            assert all(message["replay"] for message in got)
            assert sorted(message["stream_id"] for message in got) == sorted(f"cam{i}" for i in range(300))
    finally:
        for socket in subscribers:
            socket.close(linger=0)
        context.term()
        publisher.close()


def test_a_subscriber_that_subscribed_to_many_prefixes_and_left_leaves_nothing_behind() -> None:
    """50,000 distinct prefixes, then a disconnect: before, the counter kept every prefix at 0 (+11.5 MB)."""
    publisher = ZmqPublisher(ZmqPublisherConfig(endpoint=f"tcp://127.0.0.1:{free_port()}"))
    context = zmq.Context()
    socket = context.socket(zmq.SUB)
    try:
        socket.setsockopt(zmq.SNDHWM, 0)  # (else libzmq sends a SUB's first 1,000 subscriptions only)
        for index in range(50_000):
            socket.setsockopt(zmq.SUBSCRIBE, f"label/cam{index}/".encode())
        socket.connect(publisher.endpoint)
        serve_until(publisher, lambda: publisher.subscription_count == 50_000, 60)
        socket.close(linger=0)
        serve_until(publisher, lambda: publisher.subscription_count == 0, 60)
        assert publisher.subscribed_prefixes == 0 and not publisher._pending_replays
    finally:
        socket.close(linger=0)
        context.term()
        publisher.close()


def test_a_removed_streams_last_status_is_forgotten_after_replay_removed_s(tmp_path: Path, daemon_process) -> None:
    """30 streams added and removed by reloads: a subscriber joining later is sent the streams that exist (and
    the removed ones only for replay_removed_s after their end); before, all 31, for ever."""
    zmq_port, metrics_port = free_port(), free_port()
    steady = file_source("steady", tmp_path / "steady.mp4", 5)
    video = tmp_path / "short.mp4"
    file_source("x", video, 3)
    many = "".join(source_table(f"s{index}", path=video) for index in range(30))
    settings = "replay_removed_s = 1.0\n"
    with closing(Subscriber(f"tcp://127.0.0.1:{zmq_port}")) as subscriber:
        daemon = daemon_process(config(steady, zmq_port, metrics_port, zmq_extra=settings)).start()
        reload = Reloader(daemon)
        subscriber.receive_labels(5, timeout_s=60)
        reload(config(steady + many, zmq_port, metrics_port, zmq_extra=settings))
        subscriber.receive_until(lambda m: sum(s["state"] == "ended" for s in subscriber.statuses) == 31, 60)
        reload(config(steady, zmq_port, metrics_port, zmq_extra=settings))
        time.sleep(1.5)  # replay_removed_s, and then some
        with closing(Subscriber(f"tcp://127.0.0.1:{zmq_port}", topics=("status/",))) as late:
            late.receive_until(lambda m: False, timeout_s=10, quiet_s=1.5)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.stderr
    assert [(s["stream_id"], s["state"], s["replay"]) for s in late.statuses] == [("steady", "ended", True)]


def assert_statuses_follow_the_streams_life(messages: list[dict[str, Any]]) -> int:
    """After an end, the stream's next message starts a new registration (never a label, never a second end);
    seq contiguous over the run. Returns the number of ends."""
    ends = 0
    for before, after in itertools.pairwise(messages):
        if before["type"] == "status" and before["state"] in FINAL:
            assert after["type"] == "status" and after["state"] in ("connecting", "running"), (before, after)
            removed = "removed from the configuration" in before["detail"]  # then added again: a new stream
            assert after["previous_state"] in ((None, *FINAL) if removed else FINAL), (before, after)
    for message in messages:
        ends += message["type"] == "status" and message["state"] in FINAL
    seqs = [m["seq"] for m in messages if m["type"] == "label"]
    assert seqs == list(range(len(seqs)))
    return ends


def test_a_streams_statuses_follow_its_life_through_a_reload_storm(tmp_path: Path, daemon_process) -> None:
    """One stream restarted, removed and added again by a SIGHUP every 150 ms or so: a registration removed
    before it started published 'running' between the previous one's labels, then two 'ended' in a row."""
    zmq_port, metrics_port = free_port(), free_port()
    video = ffmpeg_video(tmp_path / "cam.mp4", 3000)
    steady = file_source("steady", tmp_path / "steady.mp4", 5)
    # On the MIGraphX double slowed to 50 ms a GPU operation, a registration's drain outlasts a reload or two
    engine = migraphx_double_engine(tmp_path / "cache")
    variants = [daemon_config(SHAPES_MODEL, steady + source_table("cam", path=video, decoder=decoder), zmq_port,
                              metrics_port, False, engine=engine, top_k=1)
                for decoder in ("pyav", "opencv")]
    variants.append(daemon_config(SHAPES_MODEL, steady, zmq_port, metrics_port, False, engine=engine, top_k=1))
    with closing(Subscriber(f"tcp://127.0.0.1:{zmq_port}")) as subscriber:
        daemon = daemon_process(variants[0], env={**DOUBLES_ENV, "HIP_DOUBLE_OP_DELAY_S": "0.05"}).start()
        subscriber.receive_labels(10, timeout_s=60)
        for index in range(1, 60):  # ending with the stream removed
            daemon.config.write_text(variants[index % 3])
            daemon.signal(signal.SIGHUP)
            until = time.monotonic() + 0.15
            subscriber.receive_until(lambda m, until=until: time.monotonic() > until, timeout_s=5)
        subscriber.receive_until(lambda m: False, timeout_s=30, quiet_s=2.0)
        daemon.signal(signal.SIGTERM)
        subscriber.receive_until(lambda m: False, timeout_s=30, quiet_s=1.0)
        assert daemon.wait(60) == 0, daemon.stderr
    assert daemon.stderr.count("SIGHUP: configuration reloaded") >= 15
    cam = [m for m in stream_messages(subscriber, "cam") if not m.get("replay")]
    assert assert_statuses_follow_the_streams_life(cam) >= 10


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def test_a_reload_opening_big_files_leaves_the_main_loop_free_and_holds_one_at_a_time(
        tmp_path: Path, daemon_process) -> None:
    """A reload adding 20 4K files: before, the main loop opened them all (each decoder kept open, with its
    threads' frames) before it looked at signals again. Now they are probed one at a time and closed, on a
    thread of its own: a SIGTERM after the first probe is taken at once (the rest are not opened), and the
    daemon's peak memory does not grow by twenty decoders."""
    zmq_port, metrics_port = free_port(), free_port()
    big = ffmpeg_video(tmp_path / "big.mp4", 3, size="3840x2160")
    steady = source_table("steady", path=ffmpeg_video(tmp_path / "steady.mp4", 3000), pace=True)
    many = "".join(source_table(f"big{index}", path=big) for index in range(20))
    with closing(Subscriber(f"tcp://127.0.0.1:{zmq_port}")) as subscriber:
        daemon = daemon_process(config(steady, zmq_port, metrics_port)).start()
        subscriber.receive_labels(5, timeout_s=60)
        assert daemon.process is not None
        before = peak_rss_mb(daemon.process.pid)
        daemon.config.write_text(config(steady + many, zmq_port, metrics_port))
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: "stream big0: file" in daemon.stderr, daemon)
        daemon.signal(signal.SIGTERM)
        subscriber.receive_until(lambda m: any(s["state"] in FINAL for s in subscriber.statuses), 30)
        grown = peak_rss_mb(daemon.process.pid) - before
        assert daemon.wait(60) == 0, daemon.stderr
    probed = daemon.stderr.count("can be read")
    assert probed < 20, "the SIGTERM waited for every file to be opened"
    assert "configuration not reloaded" in daemon.stderr and "configuration reloaded" not in daemon.stderr
    assert grown < 200, f"peak memory grew by {grown:.0f} MB while {probed} 4K file(s) were probed"
