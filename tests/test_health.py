"""/healthz and /readyz of a real daemon process: not ready while the model loads, until the pipeline
runs, and while it drains at a stop; ready with file streams running or ended beside a live stream that
is reconnecting; not ready, naming the stream, when a live stream has given up; 404 and 405 for what is
not served."""

from __future__ import annotations

import http.client
import signal
from pathlib import Path
from typing import Any

from tests.conftest import SHAPES_MODEL, daemon_config, free_port
from tests.double_fixtures import DOUBLES_ENV, migraphx_double_engine
from tests.source_tables import dead_stream, file_source
from tests.subscriber import Subscriber, get, poll, scrape


def test_readyz_through_loading_waiting_running_ended_and_stopping(tmp_path: Path, daemon_process) -> None:
    sources = file_source("short", tmp_path / "short.mp4", 4) + file_source("long", tmp_path / "long.mp4", 24) + \
        dead_stream("gate")
    zmq_port, port = free_port(), free_port()
    # The MIGraphX double with slow kernels: loading the model (compile, two warm-up runs) takes about a
    # second, and so does draining the frames in flight at a stop.
    daemon = daemon_process(
        daemon_config(SHAPES_MODEL, sources, zmq_port, port, exit_when_done=False,
                      engine=migraphx_double_engine(tmp_path / "cache")),
        env={**DOUBLES_ENV, "HIP_DOUBLE_OP_DELAY_S": "0.15"}).start()
    status, body = poll(port, "/readyz", lambda status, body: True, timeout_s=60)[-1]
    assert (status, {key: body[key] for key in ("ready", "model", "pipeline", "streams")}) == \
        (503, {"ready": False, "model": "loading", "pipeline": "starting", "streams": {}})
    assert set(body["startup"]) == {"step", "seconds"}, "what start-up is doing, and for how long"
    assert get(port, "/healthz") == (200, {"status": "ok"})  # alive while loading

    # Loaded, and waiting for the one subscriber the config asks for: still not ready.
    waiting = poll(port, "/readyz", lambda status, body: body["model"] == "ready", timeout_s=60)
    assert {status for status, _ in waiting} == {503}
    assert waiting[-1][1]["pipeline"] == "starting"
    assert set(waiting[-1][1]["streams"]) == {"short", "long", "gate"}

    subscriber = Subscriber(f"tcp://127.0.0.1:{zmq_port}")
    try:
        status, body = poll(port, "/readyz", lambda status, body: status == 200, timeout_s=60)[-1]
        assert body["ready"] is True and body["pipeline"] == "running"
        assert body["streams"]["gate"]["state"] in ("connecting", "reconnecting")

        # A file read to its end is not a failure; a live stream that keeps reconnecting is not one either.
        status, body = poll(port, "/readyz", lambda status, body: body["streams"]["short"]["state"] == "ended"
                            and body["streams"]["gate"]["state"] == "reconnecting", timeout_s=30)[-1]
        assert status == 200 and body["ready"] is True
        assert body["streams"]["short"] == {"state": "ended", "ok": True, "detail": "4 frames read",
                                            "seconds_in_state": body["streams"]["short"]["seconds_in_state"]}
        assert body["streams"]["long"]["state"] == "running"
        assert body["streams"]["gate"]["ok"] is True
        assert "cannot open stream http://127.0.0.1" in body["streams"]["gate"]["detail"]

        assert get(port, "/nope")[0] == 404
        assert get(port, "/readyz", method="POST")[0] == 405

        # Draining after SIGTERM: alive, not ready, until the endpoint closes at exit.
        daemon.signal(signal.SIGTERM)
        draining = answers_until_closed(port)
        assert daemon.wait(30) == 0, daemon.stderr
    finally:
        subscriber.close()
    # Running until the main loop takes the signal (within a tick), then stopping until the exit.
    phases = [(status, body["pipeline"]) for status, body in draining]
    stopping = phases.index((503, "stopping"))  # the drain takes a few slow batches: it is seen
    assert set(phases[:stopping]) <= {(200, "running")} and set(phases[stopping:]) == {(503, "stopping")}


def answers_until_closed(port: int) -> list[tuple[int, Any]]:
    """Every /readyz answer until the endpoint stops answering."""
    answers = []
    while True:
        try:
            answers.append(get(port, "/readyz"))
        except (OSError, http.client.HTTPException):  # refused, reset, or cut off as the daemon exits
            return answers


def test_readyz_fails_naming_the_stream_that_gave_up(tmp_path: Path, daemon_process) -> None:
    sources = file_source("lobby", tmp_path / "lobby.mp4", 8) + dead_stream("gate", max_attempts=1)
    zmq_port, port = free_port(), free_port()
    subscriber = Subscriber(f"tcp://127.0.0.1:{zmq_port}")
    daemon = daemon_process(daemon_config(SHAPES_MODEL, sources, zmq_port, port, exit_when_done=False,
                                          engine='type = "onnxruntime"')).start()
    try:
        status, body = poll(port, "/readyz", lambda status, body: body["pipeline"] == "running"
                            and body["streams"]["gate"]["state"] == "failed", timeout_s=60)[-1]
        metrics = scrape(port)
        assert daemon.process is not None and daemon.process.poll() is None, "a failed stream must not stop it"
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.stderr
    finally:
        subscriber.close()
    assert status == 503
    assert body["ready"] is False and body["model"] == "ready" and body["pipeline"] == "running"
    gate = body["streams"]["gate"]
    assert gate["ok"] is False
    assert gate["detail"].startswith("gave up after 1 attempts: source 'gate': cannot open stream http://127.0.0.1")
    assert body["streams"]["lobby"]["ok"] is True
    assert metrics[("nfnet_stream_source_state", (("state", "failed"), ("stream", "gate")))] == 1
