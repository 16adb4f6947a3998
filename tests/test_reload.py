"""SIGHUP: live settings change in a running daemon, the rest is reported as needing a restart, and an
invalid file changes nothing."""

from __future__ import annotations

import signal
from pathlib import Path

from daemon.config import DaemonConfig
from daemon.reload import plan_reload
from tests.conftest import SHAPES_MODEL, daemon_config, free_port
from tests.live_servers import MjpegServer, shapes_camera
from tests.subscriber import Subscriber


def config(**changes: object) -> DaemonConfig:
    data: dict = {"model": {"path": "m.onnx"}, "pipeline": {"top_k": 5},
                  "sources": [{"id": "a", "path": "a.mp4"}, {"id": "b", "path": "b.mp4"}]}
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split("__")
        for part in parents:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        node[last] = value
    return DaemonConfig.model_validate(data)


def test_live_settings_are_applied_and_the_rest_waits_for_a_restart() -> None:
    current = config()
    new = config(pipeline__top_k=2, sources__1__smoothing=0.5, sources__0__min_score=0.3, logging__format="json",
                 engine__batch_size=8, sources__0__buffer_frames=4)
    plan = plan_reload(current, new)
    assert plan.applied == ["logging.format: 'text' -> 'json'", "pipeline.top_k: 5 -> 2",
                            "sources[a] updated: buffer_frames: 2 -> 4; min_score: 0.0 -> 0.3",
                            "sources[b] updated: smoothing: 0.0 -> 0.5"]
    assert plan.needs_restart == ["engine.batch_size: None -> 8"]
    assert [s.id for s in plan.sources.updated] == ["a", "b"] and not plan.sources.to_open
    assert plan.effective.pipeline.top_k == 2 and plan.effective.sources[1].smoothing == 0.5
    assert plan.effective.engine.batch_size is None and plan.effective.sources[0].buffer_frames == 4
    assert plan_reload(plan.effective, new).applied == [], "applying twice changes nothing more"


def test_sources_are_matched_by_id_added_removed_restarted_or_updated_in_place() -> None:
    current = DaemonConfig.model_validate({"model": {"path": "m.onnx"}, "sources": [
        {"id": "a", "path": "a.mp4"}, {"id": "b", "path": "b.mp4"}, {"id": "c", "type": "stream",
                                                                       "url": "rtsp://cam/1"}]})
    new = DaemonConfig.model_validate({"model": {"path": "m.onnx"}, "sources": [
        {"id": "d", "path": "d.mp4"},
        {"id": "c", "type": "stream", "url": "rtsp://cam/1", "fps_cap": 5,
         "roi": {"x": 0.5, "width": 0.5, "height": 1, "units": "fraction"}},
        {"id": "a", "path": "a2.mp4"}]})
    plan = plan_reload(current, new)
    assert [s.id for s in plan.sources.added] == ["d"] and plan.sources.removed == ["b"]
    assert [s.id for s in plan.sources.restarted] == ["a"] and [s.id for s in plan.sources.updated] == ["c"]
    assert [s.id for s in plan.sources.to_open] == ["d", "a"]
    assert plan.applied[:2] == ["sources[d]: added", "sources[b]: removed"]
    assert plan.applied[2].startswith("sources[c] updated: fps_cap: None -> 5.0; roi.height: None -> 1.0;")
    assert plan.applied[3].startswith("sources[a] restarted: path: ") and plan.needs_restart == []
    assert plan.effective.sources == new.sources
    reordered = new.model_copy(update={"sources": list(reversed(new.sources))})
    assert plan_reload(plan.effective, reordered).applied == [], "the order of the sources is no change"


def test_what_is_opened_restarts_a_stream_and_a_failed_stream_restarts_on_any_change() -> None:
    def camera(**fields: object) -> DaemonConfig:
        return DaemonConfig.model_validate({"model": {"path": "m.onnx"}, "sources": [
            {"id": "c", "type": "stream", "url": "rtsp://cam/1", **fields}]})

    current = camera()
    for change in ({"open_timeout_s": 3.0}, {"reconnect": {"stall_timeout_s": 2.0}}, {"url": "rtsp://cam/2"}):
        assert [s.id for s in plan_reload(current, camera(**change)).sources.restarted] == ["c"], change
    for change in ({"reconnect": {"max_attempts": 3}}, {"interval": 2}, {"max_frame_age_ms": 100.0}):
        assert [s.id for s in plan_reload(current, camera(**change)).sources.updated] == ["c"], change
        assert [s.id for s in plan_reload(current, camera(**change), failed=["c"]).sources.restarted] == ["c"]


def test_sighup_reloads_a_running_daemon(tmp_path: Path, daemon_process) -> None:
    server = MjpegServer(shapes_camera("red circle"), fps=25.0).start()
    zmq_port, metrics_port = free_port(), free_port()
    sources = f'\n[[sources]]\nid = "yard"\ntype = "stream"\nurl = "{server.url}"\n# live settings\n'
    text = daemon_config(SHAPES_MODEL, sources, zmq_port, metrics_port, exit_when_done=False, batch_size=1,
                         engine='type = "onnxruntime"', top_k=1)
    subscriber = Subscriber(f"tcp://127.0.0.1:{zmq_port}")
    daemon = daemon_process(text).start()
    try:
        assert all(len(m["top_k"]) == 1 for _, m in subscriber.receive_labels(5, timeout_s=60))

        # top_k and the minimum score live; the batch size needs a restart.
        daemon.config.write_text(text.replace("top_k = 1", "top_k = 3").replace("batch_size = 1", "batch_size = 2")
                                 .replace("# live settings", "min_score = 0.2"))
        daemon.signal(signal.SIGHUP)
        daemon.wait_for_log("SIGHUP: these changes need a restart and were not applied: engine.batch_size: 1 -> 2")
        assert "applied: pipeline.top_k: 1 -> 3; sources[yard] updated: min_score: 0.0 -> 0.2" in daemon.stderr
        published = len(subscriber.labels)
        subscriber.receive_labels(published + 10, timeout_s=60)
        assert len(subscriber.labels[-1][1]["top_k"]) == 3

        # Unchanged frames after it: a broken file changes nothing, and the daemon keeps running.
        daemon.config.write_text(text.replace("top_k = 1", "top_k = many"))
        daemon.signal(signal.SIGHUP)
        daemon.wait_for_log("SIGHUP: configuration not reloaded, keeping the running one")
        published = len(subscriber.labels)
        labels = subscriber.receive_labels(published + 10, timeout_s=60)
        assert len(labels[-1][1]["top_k"]) == 3
        seqs = [m["seq"] for _, m in labels]
        assert seqs == list(range(len(seqs))), "a reload loses no message"
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.stderr
    finally:
        subscriber.close()
        server.stop()
