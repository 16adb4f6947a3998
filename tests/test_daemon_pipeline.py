"""The daemon as a real process on real video files: every frame once, in order, labelled right;
metrics that agree with what subscribers received; SIGTERM drains what is in flight."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from tests.conftest import REPO, daemon_config, free_port, solid_frames, write_video
from tests.subscriber import Subscriber, scrape

COLOURS = {"red": (230, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 230)}
SCHEMA = json.loads((REPO / "pipelines" / "publishers" / "label_message.schema.json").read_text())


def colour_cycle(frames: int, run: int = 5) -> list[str]:
    names = list(COLOURS)
    return [names[(i // run) % len(names)] for i in range(frames)]


def test_every_frame_once_in_order_with_metrics_that_agree(tmp_path: Path, colour_model_path: Path,
                                                           daemon_process) -> None:
    # Four streams at once, batched together: each must get exactly its own frames, in order.
    truth = {"cam1": colour_cycle(120), "cam2": colour_cycle(77, run=3), "cam3": colour_cycle(64, run=7),
             "cam4": colour_cycle(90, run=1)}
    videos = {sid: write_video(tmp_path / f"{sid}.mp4", solid_frames([COLOURS[c] for c in names], seed=i))
              for i, (sid, names) in enumerate(truth.items())}
    zmq_port, metrics_port = free_port(), free_port()
    subscriber = Subscriber(f"tcp://127.0.0.1:{zmq_port}")
    daemon = daemon_process(daemon_config(colour_model_path, videos, zmq_port, metrics_port,
                                          exit_when_done=False)).start()
    try:
        total = sum(len(v) for v in truth.values())
        subscriber.receive_labels(total, timeout_s=60)
        messages = subscriber.labels
        daemon.wait_for_log("all streams ended", timeout_s=30)
        metrics = scrape(metrics_port)
    finally:
        subscriber.close()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0, daemon.stderr

    for stream_id, names in truth.items():
        received = [m for topic, m in messages if topic == f"label/{stream_id}/"]
        assert [m["seq"] for m in received] == list(range(len(names))), "seq must be contiguous from 0"
        assert [m["frame_index"] for m in received] == list(range(len(names))), "every frame, once, in order"
        assert [m["top_k"][0]["label"] for m in received] == names
        pts = [m["pts"] for m in received]
        assert pts == sorted(pts) and pts[-1] == pytest.approx((len(names) - 1) / 25.0, abs=1e-3)
        for message in received:
            jsonschema.validate(message, SCHEMA)
            assert message["stream_id"] == stream_id
            assert len(message["top_k"]) == 3
            latency = message["latency_ms"]
            assert latency["total"] >= latency["inference"] > 0
            assert message["publish_time_ns"] >= message["capture_time_ns"]
        assert metrics[("nfnet_stream_frames_total", (("stream", stream_id),))] == len(names)
        for stage in ("preprocess", "inference", "publish"):
            counted = metrics[("nfnet_stream_stage_frames_total", (("stage", stage), ("stream", stream_id)))]
            assert counted == len(names), f"{stage} counted {counted} frames of {stream_id}"
        e2e_count = metrics[("nfnet_stream_end_to_end_latency_seconds_count", (("stream", stream_id),))]
        assert e2e_count == len(names)
    assert metrics[("nfnet_stream_queue_depth", (("queue", "capture"),))] == 0
    assert metrics[("nfnet_stream_input_buffers_in_use", ())] == 0
    info = [key for key in metrics if key[0] == "nfnet_stream_model_info"]
    assert info and dict(info[0][1])["engine"] == "onnxruntime"
    assert dict(info[0][1])["model_id"].startswith("colour_mean:")


def test_sigterm_drains_every_frame_already_read(tmp_path: Path, colour_model_path: Path,
                                                 daemon_process) -> None:
    names = colour_cycle(3000)
    video = write_video(tmp_path / "long.mp4", solid_frames([COLOURS[c] for c in names], size_hw=(96, 128)))
    zmq_port = free_port()
    subscriber = Subscriber(f"tcp://127.0.0.1:{zmq_port}")
    daemon = daemon_process(daemon_config(colour_model_path, {"cam1": video}, zmq_port, 0,
                                          exit_when_done=True)).start()
    try:
        subscriber.receive_labels(100, timeout_s=60)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout_s=30) == 0, daemon.stderr
        subscriber.receive_until(lambda m: False, timeout_s=30, quiet_s=1.0)
        messages = subscriber.labels
    finally:
        subscriber.close()
    seqs = [m["seq"] for _, m in messages]
    assert seqs == list(range(len(seqs))), "no gap and no duplicate after the drain"
    assert 100 <= len(seqs) < len(names), "the stop must have come mid-stream"
    assert [m["top_k"][0]["label"] for _, m in messages] == names[:len(seqs)]
    ended = re.search(r"stream cam1: ended; (\d+) of its (\d+) frames published", daemon.stderr)
    assert subscriber.statuses[-1]["state"] == "ended" and subscriber.statuses[-1]["frames"] == len(seqs)
    assert ended, daemon.stderr
    assert int(ended.group(1)) == int(ended.group(2)) == len(seqs), "every frame read was published"


def test_subscriber_tool_prints_every_label(tmp_path: Path, colour_model_path: Path, daemon_process) -> None:
    names = colour_cycle(30)
    video = write_video(tmp_path / "v.mp4", solid_frames([COLOURS[c] for c in names]))
    zmq_port = free_port()
    tool = subprocess.Popen([sys.executable, "-m", "tools.subscribe", "--endpoint",
                             f"tcp://127.0.0.1:{zmq_port}", "--json", "--count", str(len(names))],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The daemon holds its source until the tool is subscribed (wait_for_subscribers = 1).
        daemon = daemon_process(daemon_config(colour_model_path, {"cam1": video}, zmq_port, 0,
                                              exit_when_done=True)).start()
        out, err = tool.communicate(timeout=60)
    finally:
        tool.kill()
    assert tool.returncode == 0, err
    assert daemon.wait() == 0
    printed = [message for message in map(json.loads, out.splitlines()) if message["type"] == "label"]
    assert [m["seq"] for m in printed] == list(range(len(names)))
    assert [m["top_k"][0]["label"] for m in printed] == names
    assert "GAP" not in err


def test_interval_classifies_every_nth_frame_and_accounts_for_the_rest(tmp_path: Path, colour_model_path: Path,
                                                                       daemon_process) -> None:
    names = colour_cycle(61, run=1)
    video = write_video(tmp_path / "v.mp4", solid_frames([COLOURS[c] for c in names]))
    zmq_port, metrics_port = free_port(), free_port()
    config = daemon_config(colour_model_path, {"cam1": video}, zmq_port, metrics_port, exit_when_done=False)
    config = config.replace(f'path = "{video}"', f'path = "{video}"\ninterval = 3')
    subscriber = Subscriber(f"tcp://127.0.0.1:{zmq_port}")
    daemon = daemon_process(config).start()
    try:
        labels = [m for _, m in subscriber.receive_labels(21, timeout_s=60)]
        daemon.wait_for_log("all streams ended")
        metrics = scrape(metrics_port)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    finally:
        subscriber.close()
    assert [m["frame_index"] for m in labels] == list(range(0, 61, 3))
    assert [m["seq"] for m in labels] == list(range(21))
    assert [m["dropped"] for m in labels] == [0] + [2] * 20
    assert [m["top_k"][0]["label"] for m in labels] == names[::3]
    assert metrics[("nfnet_stream_frames_dropped_total", (("cause", "interval"), ("stream", "cam1")))] == 40


def test_on_change_publishes_once_per_label_run(tmp_path: Path, colour_model_path: Path, daemon_process) -> None:
    names = colour_cycle(60, run=10)
    video = write_video(tmp_path / "v.mp4", solid_frames([COLOURS[c] for c in names]))
    zmq_port = free_port()
    config = daemon_config(colour_model_path, {"cam1": video}, zmq_port, 0, exit_when_done=True)
    config = config.replace(f'path = "{video}"', f'path = "{video}"\npublish = "on_change"\nheartbeat_s = 3600')
    subscriber = Subscriber(f"tcp://127.0.0.1:{zmq_port}")
    daemon = daemon_process(config).start()
    try:
        assert daemon.wait(60) == 0, daemon.stderr
        subscriber.receive_until(lambda m: False, timeout_s=10, quiet_s=0.5)
    finally:
        subscriber.close()
    labels = [m for _, m in subscriber.labels]
    assert [m["frame_index"] for m in labels] == list(range(0, 60, 10))
    assert [m["top_k"][0]["label"] for m in labels] == names[::10]
    assert [m["seq"] for m in labels] == list(range(6))
    assert [(m["dropped"], m["suppressed"]) for m in labels] == [(0, 0)] + [(0, 9)] * 5
