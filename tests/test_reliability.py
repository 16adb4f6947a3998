"""Nothing lost, nothing hidden: damaged and truncated files, models that do not fit or do not run, stops
during start-up and against stuck sources, a stream that breaks, files that are not files, and HTTP abuse.
Real daemon processes on real files the tests make (ffmpeg's H.264, as a camera's recording would be)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import ExitStack, closing
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipelines.engines import EngineConfig
from pipelines.engines.onnxruntime import OnnxRuntimeEngine
from pipelines.model_info import read_model_info
from pipelines.publishers.config import ZmqPublisherConfig
from pipelines.publishers.message import RunIdentity
from pipelines.publishers.zmq import ZmqPublisher
from pipelines.runtime import Pipeline, PipelineMetrics
from pipelines.runtime.config import PipelineConfig
from pipelines.sources.config import FileSourceConfig
from pipelines.sources.opencv import OpenCvSource
from tests.conftest import REPO, SHAPES_MODEL, DaemonProcess, daemon_config, free_port, solid_frames, write_video
from tests.double_fixtures import DOUBLES_ENV, migraphx_double_engine
from tests.onnx_models import colour_model, colour_model_info
from tests.source_tables import dead_stream, file_source
from tests.subscriber import Subscriber, poll, scrape

FRAMES = 240


def h264(path: Path, frames: int = FRAMES, faststart: bool = False) -> Path:
    """ffmpeg's test pattern, 25 frames/s, H.264 in MP4 (the index first with ``faststart``)."""
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
                    "-i", "testsrc2=size=320x240:rate=25", "-frames:v", str(frames), "-c:v", "libx264",
                    "-preset", "veryfast", "-g", "25", "-pix_fmt", "yuv420p",
                    *(["-movflags", "+faststart"] if faststart else []), str(path)], check=True)
    return path


def damaged(path: Path) -> Path:
    """An H.264 video with 4 KB of random bytes at five places in the middle of its data."""
    return damage(h264(path))


def damage(path: Path) -> Path:
    """4 KB of random bytes at five places in the middle of the video's data, in place."""
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    for offset in np.linspace(len(data) * 0.15, len(data) * 0.75, 5).astype(int):
        data[offset:offset + 4096] = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def file_config(tmp_path: Path, video: Path, extra: str = "", exit_when_done: bool = True,
                decoder: str = "opencv") -> tuple[str, int, int]:
    zmq_port, metrics_port = free_port(), free_port()
    text = daemon_config(SHAPES_MODEL, {"cam": video}, zmq_port, metrics_port, exit_when_done)
    text = text.replace(f'path = "{video}"\n', f'path = "{video}"\ndecoder = "{decoder}"\n')
    return text.replace("[pipeline]\n", f"[pipeline]\n{extra}"), zmq_port, metrics_port


def run_to_the_end(daemon_process, config: str, zmq_port: int) -> tuple[DaemonProcess, Subscriber]:
    subscriber = Subscriber(f"tcp://127.0.0.1:{zmq_port}")
    daemon = daemon_process(config).start()
    try:
        subscriber.receive_until(lambda m: any(s["state"] in ("ended", "failed") for s in subscriber.statuses), 120)
    finally:
        subscriber.close()
    return daemon, subscriber


def run_to_the_end_and_scrape(daemon_process, config: str, zmq_port: int,
                              metrics_port: int) -> tuple[DaemonProcess, Subscriber, dict]:
    """A daemon that stays up after its streams end: run it to the end, scrape its metrics, stop it (exit 0)."""
    daemon, subscriber = run_to_the_end(daemon_process, config, zmq_port)
    daemon.wait_for_log("all streams ended")
    metrics = scrape(metrics_port)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0, daemon.stderr
    return daemon, subscriber, metrics


def assert_every_frame_accounted(subscriber: Subscriber) -> int:
    """seq contiguous, and the frame_index gaps are exactly the frames said dropped; the frames accounted."""
    labels = [m for _, m in subscriber.labels]
    assert [m["seq"] for m in labels] == list(range(len(labels)))
    previous = -1
    for message in labels:
        assert message["frame_index"] - previous - 1 == message["dropped"] + message["suppressed"], message
        previous = message["frame_index"]
    return labels[-1]["frame_index"] + 1 if labels else 0


@pytest.mark.parametrize(("fail_on_incomplete", "decoder"), [(True, "opencv"), (False, "opencv"), (True, "pyav")])
def test_a_damaged_file_is_read_to_its_end_with_every_frame_accounted(tmp_path: Path, daemon_process,
                                                                      fail_on_incomplete: bool, decoder: str) -> None:
    video = damaged(tmp_path / "damaged.mp4")
    config, zmq_port, _ = file_config(tmp_path, video, f"fail_on_incomplete = {str(fail_on_incomplete).lower()}\n",
                                      decoder=decoder)
    daemon, subscriber = run_to_the_end(daemon_process, config, zmq_port)
    assert daemon.wait(60) == (4 if fail_on_incomplete else 0), daemon.stderr
    end = subscriber.statuses[-1]
    published = len(subscriber.labels)
    undecodable = int(re.search(r"(\d+) frame\(s\) could not be decoded", end["detail"]).group(1))
    assert end["state"] == "ended" and undecodable > 0, end
    assert published + undecodable == FRAMES, "read to the end: every frame published or counted"
    assert published > FRAMES * 0.9, "before: the first failed read ended the file (52 of 240)"
    assert assert_every_frame_accounted(subscriber) <= FRAMES
    assert "not every source was read in full" in daemon.stderr and "Traceback" not in daemon.stderr


@pytest.mark.parametrize("decoder", ["opencv", "pyav"])
def test_a_file_cut_short_says_how_much_is_missing(tmp_path: Path, daemon_process, decoder: str) -> None:
    video = tmp_path / "cut.mp4"
    whole = h264(tmp_path / "whole.mp4", faststart=True).read_bytes()  # index first: the half still opens
    video.write_bytes(whole[: len(whole) // 2])
    config, zmq_port, metrics_port = file_config(tmp_path, video, exit_when_done=False, decoder=decoder)
    _, subscriber, metrics = run_to_the_end_and_scrape(daemon_process, config, zmq_port, metrics_port)
    read = assert_every_frame_accounted(subscriber)
    missing = FRAMES - read
    assert 60 < missing < 180, missing
    assert f"the file ended {missing} frame(s) before the {FRAMES} its container declares" in \
        subscriber.statuses[-1]["detail"]
    assert metrics[("nfnet_stream_frames_missing_total", (("stream", "cam"),))] == missing


def patched_metadata(model: Path, out: Path, key: str, value: str) -> Path:
    graph = onnx.load(str(model))
    for entry in graph.metadata_props:
        if entry.key == f"nfnet_stream.{key}":
            entry.value = value
    onnx.save(graph, str(out))
    return out


def reshape_to_a_constant(path: Path) -> Path:
    """Loads, and fails when run on a batch of 4: a Reshape to a constant [1, 3] (as a bad export has)."""
    info = colour_model_info()
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Reshape", ["pooled", "shape"], ["flat"]),
         helper.make_node("MatMul", ["flat", "weights"], ["logits"])],
        "broken", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(np.array([1, 3], dtype=np.int64), "shape"),
                     numpy_helper.from_array(np.eye(3, dtype=np.float32), "weights")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, info.to_metadata_props())
    onnx.save(model, str(path))
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("case", ["nan-mean", "more-labels-than-outputs", "fails-when-run"])
def test_a_model_that_does_not_fit_or_run_is_a_start_up_error_and_check_config_says_so(tmp_path: Path,
                                                                                      case: str) -> None:
    colour = colour_model(tmp_path / "colour.onnx")
    model, expected = {
        "nan-mean": (patched_metadata(colour, tmp_path / "nan.onnx", "mean", "[NaN, 0.456, 0.406]"),
                     "mean and std must be finite numbers"),
        "more-labels-than-outputs": (patched_metadata(colour, tmp_path / "labels.onnx", "labels",
                                                      json.dumps(["red", "green", "blue", "white"])),
                                     "the model outputs 3 scores a frame, but its metadata lists 4 labels"),
        "fails-when-run": (reshape_to_a_constant(tmp_path / "broken.onnx"), "the model fails when run"),
    }[case]
    video = h264(tmp_path / "cam.mp4", frames=10)
    config = tmp_path / "daemon.toml"
    config.write_text(daemon_config(model, {"cam": video}, free_port(), free_port(), True,
                                    engine='type = "onnxruntime"').replace("wait_for_subscribers = 1", ""))
    for args in (["--config", str(config)], ["--config", str(config), "--check-config"]):
        result = run_cli(*args)
        assert result.returncode == 3, result.stdout + result.stderr
        (error,) = [line for line in result.stderr.splitlines() if line.startswith("nfnet-daemon: error:")]
        assert expected in error and "Traceback" not in result.stderr


def test_sigterm_during_a_long_warm_up_stops_without_starting(tmp_path: Path, daemon_process) -> None:
    """Each warm-up batch takes 1.5 s on the slowed MIGraphX double, 20 of them: 30 s."""
    zmq_port, port = free_port(), free_port()
    engine = migraphx_double_engine(tmp_path / "cache").replace('type = "migraphx"',
                                                                'type = "migraphx"\nwarmup_runs = 20')
    config = daemon_config(SHAPES_MODEL, file_source("cam", tmp_path / "cam.mp4", 8), zmq_port, port, True,
                           engine=engine)
    with closing(Subscriber(f"tcp://127.0.0.1:{zmq_port}")) as subscriber:
        daemon = daemon_process(config, env={**DOUBLES_ENV, "HIP_DOUBLE_OP_DELAY_S": "0.5"}).start()
        poll(port, "/readyz", lambda status, body: body.get("startup", {}).get("step") == "warming up", 60)
        time.sleep(2.0)
        sent = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.stderr
        assert time.monotonic() - sent < 5.0, "a stop is taken between warm-up runs"
        subscriber.receive_until(lambda m: False, timeout_s=5, quiet_s=0.5)
    assert "stopped during start-up" in daemon.stderr and "ready:" not in daemon.stderr
    assert subscriber.messages == [], "nothing started, nothing published"


def test_a_stop_with_an_inference_stuck_on_a_hung_gpu_leaves_the_engine_to_the_exit(tmp_path: Path,
                                                                                     daemon_process) -> None:
    """Each copy and kernel takes 10 minutes on the slowed MIGraphX double, as on a hung GPU: the collect stage
    waits in hipEventSynchronize for a batch that does not come back. The drain is cut short (exit 1);
    the engine must not be freed under that stage. Before, shutdown closed it all the same: engine.close()
    waited for the hung GPU (the daemon did not exit), and had the GPU come back, it would have destroyed the
    events the stage waits on and freed the pinned memory the stage reads next."""
    zmq_port, port = free_port(), free_port()
    engine = migraphx_double_engine(tmp_path / "cache").replace('type = "migraphx"',
                                                                'type = "migraphx"\nwarmup_runs = 0')
    config = daemon_config(SHAPES_MODEL, file_source("cam", tmp_path / "cam.mp4", 8), zmq_port, port, True,
                           engine=engine).replace("[pipeline]\n", "[pipeline]\ndrain_timeout_s = 0.5\n")
    with closing(Subscriber(f"tcp://127.0.0.1:{zmq_port}")):
        daemon = daemon_process(config, env={**DOUBLES_ENV, "HIP_DOUBLE_OP_DELAY_S": "600"}).start()
        daemon.wait_for_log("ready:")
        time.sleep(1.0)  # the first batch is submitted (the drain would submit it too)
        sent = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(45) == 1, daemon.stderr  # before: still in engine.close() (waiting for the GPU)
    assert time.monotonic() - sent < 30, "the drain (0.5 s), then the stages' stop and abort (5 s each)"
    (warning,) = [line for line in daemon.stderr.splitlines() if "stages still running after the stop" in line]
    assert "inference-collect" in warning and "its memory is left to the process's exit" in warning
    assert "drain took longer than pipeline.drain_timeout_s" in daemon.stderr
    assert "Traceback" not in daemon.stderr


def test_a_stop_does_not_wait_for_a_source_that_never_answers(tmp_path: Path, daemon_process) -> None:
    """A camera that accepts the connection and then says nothing holds OpenCV's open() for open_timeout_s."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # never accepts: the kernel completes the handshake, nothing ever answers
    with closing(silent):
        stuck = f'''
[[sources]]
id = "gate"
type = "stream"
url = "http://127.0.0.1:{silent.getsockname()[1]}/video.mjpg"
open_timeout_s = 60
'''
        zmq_port, port = free_port(), free_port()
        config = daemon_config(SHAPES_MODEL, file_source("cam", tmp_path / "cam.mp4", 8) + stuck, zmq_port, port,
                               False)
        with closing(Subscriber(f"tcp://127.0.0.1:{zmq_port}")) as subscriber:
            daemon = daemon_process(config).start()
            subscriber.receive_labels(8, timeout_s=60)
            poll(port, "/readyz", lambda status, body: body["streams"].get("gate", {}).get("state") == "connecting",
                 30)
            sent = time.monotonic()
            daemon.signal(signal.SIGTERM)
            assert daemon.wait(30) == 0, daemon.stderr
    assert time.monotonic() - sent < 5.0, "before: about 40 s, then exit 1"
    assert "stream gate: stopped while waiting for" in daemon.stderr
    assert "nfnet-daemon: error" not in daemon.stderr


def test_a_second_sigterm_after_the_drain_is_no_failure(tmp_path: Path, daemon_process) -> None:
    zmq_port, port = free_port(), free_port()
    config = daemon_config(SHAPES_MODEL, file_source("cam", tmp_path / "cam.mp4", 8), zmq_port, port, False)
    with closing(Subscriber(f"tcp://127.0.0.1:{zmq_port}")) as subscriber:
        daemon = daemon_process(config).start()
        subscriber.receive_labels(8, timeout_s=60)
        daemon.wait_for_log("staying up until stopped")
        daemon.signal(signal.SIGTERM)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.stderr


def test_a_stream_that_gives_up_says_why_in_its_last_status(tmp_path: Path, daemon_process) -> None:
    zmq_port, port = free_port(), free_port()
    config = daemon_config(SHAPES_MODEL, file_source("cam", tmp_path / "cam.mp4", 4) + dead_stream("gate", 1),
                           zmq_port, port, True)
    with closing(Subscriber(f"tcp://127.0.0.1:{zmq_port}")) as subscriber:
        daemon = daemon_process(config).start()
        subscriber.receive_until(lambda m: any(s["state"] == "failed" for s in subscriber.statuses), 60)
        assert daemon.wait(30) == 4, daemon.stderr
    failed = next(s for s in subscriber.statuses if s["state"] == "failed")
    assert failed["detail"].startswith("gave up after 1 attempts: source 'gate': cannot open stream"), failed


class BreaksAfter(OpenCvSource):
    """Fault injection: a real file source whose reads raise after ``frames`` frames, to show that a failure
    inside one stream's capture thread fails that stream only."""

    def __init__(self, config: FileSourceConfig, frames: int) -> None:
        super().__init__(config)
        self._left = frames

    def read(self):
        if self._left == 0:
            raise OSError(5, "Input/output error")
        self._left -= 1
        return super().read()


def test_a_failure_inside_one_streams_capture_fails_that_stream_only(tmp_path: Path) -> None:
    info = read_model_info(SHAPES_MODEL)
    video = h264(tmp_path / "cam.mp4", frames=40)
    sources = [OpenCvSource(FileSourceConfig(id="good", path=video)),
               BreaksAfter(FileSourceConfig(id="bad", path=video), frames=5)]
    for source in sources:
        source.open()
    engine = OnnxRuntimeEngine(SHAPES_MODEL, info, EngineConfig(type="onnxruntime", batch_size=4))
    publisher = ZmqPublisher(ZmqPublisherConfig(endpoint=f"tcp://127.0.0.1:{free_port()}"))
    metrics = PipelineMetrics()
    with ExitStack() as cleanup:
        cleanup.callback(engine.close)
        cleanup.callback(publisher.close)
        subscriber = cleanup.enter_context(closing(Subscriber(publisher.endpoint)))
        assert publisher.wait_for_subscribers(1, timeout_s=10) == 1
        pipeline = Pipeline(sources, engine, info, [publisher], "shapes:test", RunIdentity.new("box"),
                            PipelineConfig(), metrics)
        pipeline.start()
        deadline = time.monotonic() + 60
        while not pipeline.finished and time.monotonic() < deadline:
            time.sleep(0.05)
        subscriber.receive_until(lambda m: len([s for s in subscriber.statuses if s["state"] in
                                                ("ended", "failed")]) == 2, 30)
    assert pipeline.finished and pipeline.failures() == [] and pipeline.output.completed
    ends = {s["stream_id"]: s for s in subscriber.statuses if s["state"] in ("ended", "failed")}
    assert ends["good"]["state"] == "ended" and pipeline.output.published["good"] == 40
    assert ends["bad"]["state"] == "failed" and "OSError: [Errno 5] Input/output error" in ends["bad"]["detail"]
    assert pipeline.output.published["bad"] == 5 and "bad" in pipeline.output.incomplete


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_a_video_path_that_is_no_file_says_so(tmp_path: Path, kind: str) -> None:
    video = tmp_path / "video.mp4"
    if kind == "directory":
        video.mkdir()
    else:
        os.mkfifo(video)
    config = tmp_path / "daemon.toml"
    config.write_text(daemon_config(SHAPES_MODEL, {"cam": video}, free_port(), free_port(), True))
    result = run_cli("--config", str(config))
    assert result.returncode == 3, result.stderr
    expected = "is a directory, not a file" if kind == "directory" else "is not a regular file"
    assert f"nfnet-daemon: error: source 'cam': video {video} {expected}" in result.stderr


def test_an_empty_model_file_says_so(tmp_path: Path) -> None:
    model = tmp_path / "empty.onnx"
    model.touch()
    config = tmp_path / "daemon.toml"
    config.write_text(daemon_config(model, {"cam": h264(tmp_path / "cam.mp4", 5)}, free_port(), free_port(), True))
    result = run_cli("--config", str(config))
    assert result.returncode == 3
    assert f"nfnet-daemon: error: model {model} is empty (0 bytes): not an ONNX model" in result.stderr


def test_idle_http_connections_cannot_exhaust_the_daemons_threads(tmp_path: Path, daemon_process) -> None:
    zmq_port, port = free_port(), free_port()
    config = daemon_config(SHAPES_MODEL, file_source("cam", tmp_path / "cam.mp4", 4), zmq_port, port, False)
    with closing(Subscriber(f"tcp://127.0.0.1:{zmq_port}")):
        daemon = daemon_process(config).start()
        daemon.wait_for_log("staying up until stopped")
        assert daemon.process is not None
        tasks = Path(f"/proc/{daemon.process.pid}/task")
        before = len(list(tasks.iterdir()))
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(200)]
        try:
            time.sleep(1.0)
            during = len(list(tasks.iterdir()))
        finally:
            for connection in idle:
                connection.close()
        assert during - before <= 32 + 2, f"{during - before} threads for 200 idle connections (before: 1 each)"
        answered = threading.Event()
        poll(port, "/healthz", lambda status, body: answered.set() or status == 200, timeout_s=15)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.stderr


def nan_for_bright_frames(path: Path) -> Path:
    """Finite on zeros (start-up's check passes), NaN on a bright red frame: sqrt(0.5 - mean colour)."""
    info = colour_model_info()
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
         helper.make_node("Sub", ["half", "flat"], ["margin"]),
         helper.make_node("Sqrt", ["margin"], ["logits"])],
        "nan", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, info.to_metadata_props())
    onnx.save(model, str(path))
    return path


def test_nan_scores_never_reach_a_subscriber_and_the_failure_is_one_line(tmp_path: Path, daemon_process) -> None:
    zmq_port = free_port()
    video = write_video(tmp_path / "red.mp4", solid_frames([(230, 20, 20)] * 8))
    config = daemon_config(nan_for_bright_frames(tmp_path / "nan.onnx"), {"cam": video}, zmq_port, free_port(), True,
                           engine='type = "onnxruntime"')
    with closing(Subscriber(f"tcp://127.0.0.1:{zmq_port}")) as subscriber:
        daemon = daemon_process(config).start()
        assert daemon.wait(60) == 1, daemon.stderr
        subscriber.receive_until(lambda m: False, timeout_s=5, quiet_s=1.0)
    assert subscriber.labels == [], "not one message with NaN in it"
    (error,) = [line for line in daemon.stderr.splitlines() if line.startswith("nfnet-daemon: error:")]
    assert "stage output failed: ValueError: Out of range float values are not JSON compliant" in error
    assert "Traceback" not in daemon.stderr
    (end,) = subscriber.statuses[-1:]  # before: none; the subscriber saw the stream 'running' for ever
    assert end["state"] == "failed" and end["detail"].startswith("the daemon failed: stage output failed:"), end


def test_nfnet_subscribe_reports_a_restart_not_a_gap(tmp_path: Path, daemon_process) -> None:
    zmq_port = free_port()
    client = subprocess.Popen([sys.executable, "-m", "tools.subscribe", "--endpoint", f"tcp://127.0.0.1:{zmq_port}",
                               "--count", "6"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for attempt in ("first", "second"):
            config = daemon_config(SHAPES_MODEL, file_source("cam", tmp_path / f"{attempt}.mp4", 3), zmq_port,
                                   free_port(), True)
            assert daemon_process(config, name=attempt).start().wait(60) == 0
        _, err = client.communicate(timeout=60)
    finally:
        client.kill()
    assert client.returncode == 0, err
    assert "cam: test-box RESTARTED" in err and "GAP" not in err
