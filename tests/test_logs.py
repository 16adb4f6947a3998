"""Logs: human-readable lines by default, JSON lines on request with the stream in context, and nothing per
frame at the default level."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.conftest import SHAPES_MODEL, daemon_config, free_port
from tests.source_tables import dead_stream, file_source
from tests.subscriber import Subscriber

FRAMES = 60


def run_daemon(tmp_path: Path, daemon_process, env: dict[str, str]) -> str:
    """A file that ends, and a camera that is down and given up on: start-up, states, reconnects, ends."""
    sources = file_source("lobby", tmp_path / "lobby.mp4", FRAMES) + dead_stream("gate", max_attempts=2)
    zmq_port = free_port()
    subscriber = Subscriber(f"tcp://127.0.0.1:{zmq_port}")
    try:
        daemon = daemon_process(daemon_config(SHAPES_MODEL, sources, zmq_port, 0, exit_when_done=True,
                                              engine='type = "onnxruntime"'), env=env).start()
        subscriber.receive_labels(FRAMES, timeout_s=60)
        assert daemon.wait(60) == 4, daemon.stderr  # done, but the camera given up on was not read in full
    finally:
        subscriber.close()
    return daemon.stderr


def test_json_lines_carry_the_stream_and_nothing_is_logged_per_frame(tmp_path: Path, daemon_process) -> None:
    stderr = run_daemon(tmp_path, daemon_process, {"NFNET_LOGGING__FORMAT": "json"})
    entries = [json.loads(line) for line in stderr.splitlines()]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    about = {stream: [e for e in entries if e.get("stream_id") == stream] for stream in ("lobby", "gate")}
    assert any("running -> ended" in e["message"] for e in about["lobby"])
    assert any(e["level"] == "error" and "gave up after 2 attempts" in e["message"] for e in about["gate"])
    ended = next(e for e in about["lobby"] if "frames published" in e["message"])
    assert ended["seq"] == FRAMES - 1, "the end of a stream names its last seq"
    assert "seq" not in next(e for e in about["gate"] if "frames published" in e["message"]), "none published"
    # 60 frames, a handful of lines: start-up, states, reconnects, the end.
    assert len(entries) < 40, "\n".join(e["message"] for e in entries)


def test_text_lines_by_default(tmp_path: Path, daemon_process) -> None:
    stderr = run_daemon(tmp_path, daemon_process, {})
    pattern = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR)\s+[\w.]+: .+")
    ours = [line for line in stderr.splitlines() if pattern.match(line)]
    # The rest are FFmpeg's and OpenCV's own diagnostics (why the connection failed), kept in text mode.
    native = [line for line in stderr.splitlines() if not pattern.match(line)]
    assert all(line.startswith("[") for line in native), native
    assert any("stream lobby: running -> ended" in line for line in ours)
    assert len(ours) < 40
