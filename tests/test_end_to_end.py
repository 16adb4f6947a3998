"""End to end with the bundled trained NFNet: a video of known truth made here, the daemon as a real
process, labels read over a real ZeroMQ socket, metrics scraped over HTTP, SIGTERM for a clean exit."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from pipelines.model_info import model_id, read_model_info
from tests.conftest import REPO, SHAPES_MODEL, daemon_config, free_port
from tests.double_fixtures import DOUBLES_ENV, migraphx_double_engine
from tests.subscriber import Subscriber, scrape
from tools.make_demo_video import make_video
from tools.synthetic_shapes import LABELS

SCHEMA_PATH = REPO / "pipelines" / "publishers" / "label_message.schema.json"


@pytest.mark.parametrize("engine", ["onnxruntime", "migraphx-double"])
def test_trained_model_labels_every_frame_right(tmp_path: Path, daemon_process, engine: str) -> None:
    info = read_model_info(SHAPES_MODEL)
    assert info.labels == LABELS
    expected_model_id = model_id(SHAPES_MODEL, info)
    # 320x240 frames, a different seed and size from anything the model was trained on.
    truth = make_video(tmp_path / "shapes.mp4", frames=400, frames_per_class=7, size_hw=(240, 320),
                       fps=30.0, seed=424242)
    zmq_port, metrics_port = free_port(), free_port()
    subscriber = Subscriber(f"tcp://127.0.0.1:{zmq_port}")
    double = engine == "migraphx-double"
    daemon = daemon_process(
        daemon_config(SHAPES_MODEL, {"shapes": tmp_path / "shapes.mp4"}, zmq_port, metrics_port,
                      exit_when_done=False,
                      engine=migraphx_double_engine(tmp_path / "cache") if double else 'type = "onnxruntime"'),
        env=DOUBLES_ENV if double else None).start()
    try:
        subscriber.receive_labels(len(truth), timeout_s=120)
        messages = [m for _, m in subscriber.labels]
        daemon.wait_for_log("all streams ended", timeout_s=30)
        metrics = scrape(metrics_port)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0, daemon.stderr
        # Nothing more may arrive: every frame exactly once.
        subscriber.receive_until(lambda m: False, timeout_s=10, quiet_s=0.5)
    finally:
        subscriber.close()
    assert len(subscriber.labels) == len(truth)
    assert [(s["state"], s.get("frames")) for s in subscriber.statuses] == [("running", None), ("ended", len(truth))]

    assert [m["seq"] for m in messages] == list(range(len(truth)))
    assert [m["frame_index"] for m in messages] == list(range(len(truth)))
    predicted = [m["top_k"][0]["label"] for m in messages]
    right = sum(p == t for p, t in zip(predicted, truth, strict=True))
    assert right / len(truth) >= 0.99, f"{right}/{len(truth)} right"

    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    for message in messages:
        jsonschema.validate(message, schema)
        assert message["model_id"] == expected_model_id

    assert metrics[("nfnet_stream_frames_total", (("stream", "shapes"),))] == len(truth)
    for stage in ("preprocess", "inference", "publish"):
        assert metrics[("nfnet_stream_stage_frames_total", (("stage", stage), ("stream", "shapes")))] == len(truth)
    assert metrics[("nfnet_stream_end_to_end_latency_seconds_count", (("stream", "shapes"),))] == len(truth)
    batches = metrics[("nfnet_stream_inference_batch_frames_sum", ())]
    assert batches == len(truth), "every frame went through exactly one inference batch"
    assert metrics[("nfnet_stream_streams_ended_total", (("state", "ended"), ("stream", "shapes")))] == 1
    assert metrics[("nfnet_stream_streams_ended_total", (("state", "failed"), ("stream", "shapes")))] == 0
    assert metrics[("nfnet_stream_engine_build_seconds", (("step", "build"),))] > 0
    model_info_labels = dict(next(key for key in metrics if key[0] == "nfnet_stream_model_info")[1])
    assert model_info_labels["engine"] == ("migraphx" if double else "onnxruntime")
    cache_bytes = metrics[("nfnet_stream_engine_program_cache_bytes", ())]
    if double:
        assert metrics[("nfnet_stream_engine_program_cache_total", (("outcome", "miss"),))] == 1
        programs = [path for path in (tmp_path / "cache").iterdir() if path.is_file()]  # (tuning/: MIGraphX's own)
        assert cache_bytes == sum(path.stat().st_size for path in programs) > 0
    else:
        assert cache_bytes == 0
    assert "Traceback" not in daemon.stderr


@pytest.mark.parametrize("decoder", ["opencv", "pyav"])
def test_readme_demo_command_labels_the_bundled_video(tmp_path: Path, decoder: str) -> None:
    """The README's demo, on free ports: exit 0, one printed line per frame, ≥ 99% right; also with the
    video decoded by PyAV (planes shrunk before their conversion)."""
    demo = (REPO / "configs" / "demo.toml").read_text()
    demo = demo.replace("tcp://127.0.0.1:5555", f"tcp://127.0.0.1:{free_port()}")
    demo = demo.replace("port = 9612", f"port = {free_port()}").replace('"../', f'"{REPO}/')
    demo = demo.replace('demo_shapes.mp4"\n', f'demo_shapes.mp4"\ndecoder = "{decoder}"\n', 1)
    config = tmp_path / "demo.toml"
    config.write_text(demo)
    result = subprocess.run([sys.executable, "-m", "daemon", "--config", str(config)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    truth = (REPO / "tests" / "assets" / "demo_shapes.mp4.labels.txt").read_text().split("\n")[:-1]
    status = [line for line in result.stdout.splitlines() if " [" in line]
    assert status == ["demo [running]", f"demo [ended] {len(truth)} of {len(truth)} frames published"]
    lines = [line for line in result.stdout.splitlines() if " #" in line]
    assert len(lines) == len(truth)
    right = sum(f"  {label} " in line for line, label in zip(lines, truth, strict=True))
    assert right / len(truth) >= 0.99, f"{right}/{len(truth)} right:\n" + "\n".join(lines[:20])


@pytest.mark.parametrize("doubles", [True, False], ids=["gpu-visible", "no-migraphx"])
def test_auto_engine_choice_and_compiled_program_cache(tmp_path: Path, daemon_process, doubles: bool) -> None:
    """auto takes MIGraphX where it imports and sees a GPU (here: the doubles), else ONNX Runtime, and
    says why; on MIGraphX a restart loads the compiled program instead of compiling again."""
    make_video(tmp_path / "short.mp4", frames=12, frames_per_class=3, size_hw=(120, 160), fps=25.0, seed=5)
    zmq_port = free_port()
    config = daemon_config(SHAPES_MODEL, {"short": tmp_path / "short.mp4"}, zmq_port, 0, exit_when_done=True,
                           engine=migraphx_double_engine(tmp_path / "cache", engine_type="auto"))
    for run, expected_cache in enumerate(("miss", "hit") if doubles else ("",)):
        subscriber = Subscriber(f"tcp://127.0.0.1:{zmq_port}")
        try:
            daemon = daemon_process(config, env=DOUBLES_ENV if doubles else None).start()
            assert daemon.wait(timeout_s=120) == 0, daemon.stderr
            subscriber.receive_labels(12, timeout_s=10)
            assert len(subscriber.labels) == 12
        finally:
            subscriber.close()
        if doubles:
            assert "engine auto: MIGraphX" in daemon.stderr
            assert f"compiled program: cache {expected_cache}" in daemon.stderr, (run, daemon.stderr)
        else:
            assert "engine auto: ONNX Runtime, because MIGraphX is not importable" in daemon.stderr
