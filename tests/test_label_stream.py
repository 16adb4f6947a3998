"""What a subscriber gets, on real daemons and real sockets: topics that never match another stream, the
present for a subscriber that joins late, a run id that tells a restart from a bug, IPv6, and a fleet's
streams merged by nfnet-subscribe and by a ZeroMQ forwarder."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Any

import jsonschema

from tests.conftest import REPO, SHAPES_MODEL, DaemonProcess, daemon_config, free_port
from tests.source_tables import file_source
from tests.subscriber import Subscriber
from tools.forward import Forwarder

SCHEMA = json.loads((REPO / "pipelines" / "publishers" / "label_message.schema.json").read_text())
RUN_ID = re.compile(r"^[0-9a-f]{16}$")


def start(daemon_process, tmp_path: Path, streams: dict[str, int], instance: str = "test-box",
          host: str = "127.0.0.1", exit_when_done: bool = False, subscriptions: int = 1,
          name: str | None = None) -> tuple[DaemonProcess, str]:
    """A daemon over ``streams`` (id: frames of a short file each) in a folder of its own (``name``, else the
    instance); returns it and its ZeroMQ endpoint."""
    name = name or instance
    (tmp_path / name).mkdir()
    port = free_port()
    sources = "".join(file_source(stream, tmp_path / name / f"{stream}.mp4", frames)
                      for stream, frames in streams.items())
    config = daemon_config(SHAPES_MODEL, sources, port, free_port(), exit_when_done, instance=instance, host=host,
                           subscriptions=subscriptions)
    return daemon_process(config, name=name).start(), f"tcp://{host}:{port}"


def labels_of(messages: list[tuple[str, dict[str, Any]]], stream: str) -> list[dict[str, Any]]:
    return [message for topic, message in messages if topic == f"label/{stream}/"]


def test_one_streams_prefix_never_matches_another_and_late_joiners_get_the_present(tmp_path: Path,
                                                                                   daemon_process) -> None:
    # Three subscriptions awaited: everything (""), and cam1's labels and states.
    daemon, endpoint = start(daemon_process, tmp_path, {"cam1": 6, "cam10": 9}, subscriptions=3)
    with ExitStack() as cleanup:
        everything = cleanup.enter_context(closing(Subscriber(endpoint)))
        cam1 = cleanup.enter_context(closing(Subscriber(endpoint, topics=("label/cam1/", "status/cam1/"))))
        everything.receive_until(lambda m: sum(s["state"] == "ended" for s in everything.statuses) == 2, 60)
        daemon.wait_for_log("all streams ended")
        cam1.receive_until(lambda m: any(s["state"] == "ended" for s in cam1.statuses), 30)
        cam1.receive_until(lambda m: False, timeout_s=5, quiet_s=1.0)
        # Joins after every state change: still learns each stream's state, marked as a replay.
        late = cleanup.enter_context(closing(Subscriber(endpoint, topics=("status/",))))
        late.receive_until(lambda m: len(m) == 2, 30)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0, daemon.stderr

    assert {message["stream_id"] for _, message in cam1.messages} == {"cam1"}, "cam1/ must not match cam10"
    assert [m["seq"] for m in labels_of(cam1.messages, "cam1")] == list(range(6))
    assert [(s["state"], s["replay"]) for s in cam1.statuses] == [("running", False), ("ended", False)]
    assert [m["seq"] for m in labels_of(everything.messages, "cam10")] == list(range(9))
    assert sorted((s["stream_id"], s["state"], s["replay"]) for s in late.statuses) == \
        [("cam1", "ended", True), ("cam10", "ended", True)]
    assert {topic for topic, _ in late.messages} == {"status/cam1/", "status/cam10/"}
    run_ids = {message["run_id"] for _, message in [*everything.messages, *late.messages]}
    assert len(run_ids) == 1 and RUN_ID.match(run_ids.pop())
    for _, message in [*everything.messages, *late.messages]:
        jsonschema.validate(message, SCHEMA)
        assert message["schema_version"] == 4 and message["instance"] == "test-box"
    assert "run " in daemon.stderr


def test_a_restart_has_a_new_run_id(tmp_path: Path, daemon_process) -> None:
    runs = []
    for attempt in ("first", "second"):
        daemon, endpoint = start(daemon_process, tmp_path, {"cam": 3}, exit_when_done=True, name=attempt)
        with closing(Subscriber(endpoint)) as subscriber:
            subscriber.receive_labels(3, timeout_s=60)
        assert daemon.wait(30) == 0, daemon.stderr
        assert [m["seq"] for _, m in subscriber.labels] == [0, 1, 2]
        runs.append({m["run_id"] for _, m in subscriber.messages})
    assert len(runs[0]) == len(runs[1]) == 1 and runs[0] != runs[1], "seq starts at 0 again under a new run_id"


def test_an_ipv6_endpoint(tmp_path: Path, daemon_process) -> None:
    daemon, endpoint = start(daemon_process, tmp_path, {"cam": 3}, host="[::1]", exit_when_done=True)
    assert endpoint.startswith("tcp://[::1]:")
    with closing(Subscriber(endpoint)) as subscriber:
        subscriber.receive_labels(3, timeout_s=60)
    assert daemon.wait(30) == 0, daemon.stderr


def fleet(daemon_process, tmp_path: Path) -> list[tuple[DaemonProcess, str]]:
    """Two daemons whose stream ids are unique across the fleet (named after their box)."""
    return [start(daemon_process, tmp_path, {f"{box}-door": 5}, instance=box) for box in ("box1", "box2")]


def test_a_forwarder_merges_a_fleet_on_one_endpoint(tmp_path: Path, daemon_process) -> None:
    daemons = fleet(daemon_process, tmp_path)
    forwarder = Forwarder([endpoint for _, endpoint in daemons], f"tcp://127.0.0.1:{free_port()}")
    try:
        with ExitStack() as cleanup:
            merged = cleanup.enter_context(closing(Subscriber(forwarder.endpoint)))
            merged.receive_until(lambda m: sum(s["state"] == "ended" for s in merged.statuses) == 2, 60)
            late = cleanup.enter_context(closing(Subscriber(forwarder.endpoint, topics=("status/box2-door/",))))
            late.receive_until(lambda m: len(m) == 1, 30)
    finally:
        forwarder.stop()
    for (daemon, _), box in zip(daemons, ("box1", "box2"), strict=True):
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.stderr
        labels = labels_of(merged.messages, f"{box}-door")
        assert [m["seq"] for m in labels] == list(range(5)) and {m["instance"] for m in labels} == {box}
    assert [(s["stream_id"], s["state"], s["replay"], s["instance"]) for s in late.statuses] == \
        [("box2-door", "ended", True, "box2")], "the late joiner's replay comes from the daemon that owns the stream"


def subscribe(*args: str) -> tuple[int, str, str]:
    """Run ``nfnet-subscribe --json ARGS`` to its end (killed after 60 s); its exit code, stdout and stderr."""
    client = subprocess.Popen([sys.executable, "-m", "tools.subscribe", "--json", *args], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = client.communicate(timeout=60)
    finally:
        client.kill()
    return client.returncode, out, err


def test_nfnet_subscribe_takes_a_fleets_endpoints(tmp_path: Path, daemon_process) -> None:
    daemons = fleet(daemon_process, tmp_path)
    code, out, err = subscribe("--count", "10", *(arg for _, endpoint in daemons for arg in ("--endpoint", endpoint)))
    assert code == 0, err
    messages = [json.loads(line) for line in out.splitlines()]
    for box in ("box1", "box2"):
        assert [m["seq"] for m in messages if m["type"] == "label" and m["instance"] == box] == list(range(5))
    assert "GAP" not in err and "RESTARTED" not in err


def test_nfnet_subscribe_refuses_one_stream_id_from_two_daemons(tmp_path: Path, daemon_process) -> None:
    daemons = [start(daemon_process, tmp_path, {"door": 5}, instance=box) for box in ("box1", "box2")]
    code, _, err = subscribe("--count", "10", *(arg for _, endpoint in daemons for arg in ("--endpoint", endpoint)))
    assert code == 1
    assert "stream 'door' comes from two daemons" in err and "unique across the fleet" in err
