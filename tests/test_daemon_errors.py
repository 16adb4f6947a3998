"""Bad input gets one clear error line and a distinct non-zero exit code, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

from tests.conftest import REPO, free_port, solid_frames, write_video
from tests.double_fixtures import daemon_on_onnxruntime_migraphx
from tests.doubles.onnxruntime_migraphx import SUPPORTED_OPS_VARIABLE
from tests.onnx_models import colour_model, sidecar_twins

EXIT_CONFIG, EXIT_STARTUP = 2, 3


def run_daemon(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon", "--config", str(config)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def config_text(model: Path, video: Path, extra: str = "") -> str:
    return f"""
[model]
path = "{model}"

[[sources]]
id = "cam1"
path = "{video}"

[publish.zmq]
endpoint = "tcp://127.0.0.1:{free_port()}"

[metrics]
port = 0
{extra}
"""


@pytest.fixture
def video(tmp_path: Path) -> Path:
    return write_video(tmp_path / "ok.mp4", solid_frames([(255, 0, 0)] * 5))


def assert_clean_error(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("nfnet-daemon: error:")]
    assert len(error_lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_missing_config(tmp_path: Path) -> None:
    assert_clean_error(run_daemon(tmp_path / "absent.toml"), EXIT_CONFIG, "config file not found")


def test_unknown_config_key(tmp_path: Path, colour_model_path: Path, video: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(config_text(colour_model_path, video, "[pipeline]\ntop_kay = 3\n"))
    assert_clean_error(run_daemon(config), EXIT_CONFIG, "pipeline.top_kay: unknown key", str(config))


def test_missing_model(tmp_path: Path, video: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(config_text(tmp_path / "nope.onnx", video))
    assert_clean_error(run_daemon(config), EXIT_STARTUP, "model file not found", "nope.onnx")


def test_corrupt_model(tmp_path: Path, video: Path) -> None:
    model = tmp_path / "corrupt.onnx"
    model.write_bytes(b"this is not a protobuf \xff\xfe" * 20)
    config = tmp_path / "c.toml"
    config.write_text(config_text(model, video))
    assert_clean_error(run_daemon(config), EXIT_STARTUP, "not a readable ONNX model")


def test_model_without_metadata(tmp_path: Path, video: Path) -> None:
    model = colour_model(tmp_path / "bare.onnx", with_metadata=False)
    config = tmp_path / "c.toml"
    config.write_text(config_text(model, video))
    assert_clean_error(run_daemon(config), EXIT_STARTUP, "no 'nfnet_stream.*' metadata", "nfnet-export")


def test_model_whose_weights_file_is_missing(tmp_path: Path, video: Path) -> None:
    model, _ = sidecar_twins(tmp_path)
    (model.parent / "colour.onnx.data").unlink()
    config = tmp_path / "c.toml"
    config.write_text(config_text(model, video))
    assert_clean_error(run_daemon(config), EXIT_STARTUP, "external weight data not found", "colour.onnx.data")


def test_unreadable_video(tmp_path: Path, colour_model_path: Path) -> None:
    video = tmp_path / "broken.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x13" * 4000)
    config = tmp_path / "c.toml"
    config.write_text(config_text(colour_model_path, video))
    assert_clean_error(run_daemon(config), EXIT_STARTUP, "source 'cam1'", "broken.mp4")


def test_missing_video(tmp_path: Path, colour_model_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(config_text(colour_model_path, tmp_path / "absent.mp4"))
    assert_clean_error(run_daemon(config), EXIT_STARTUP, "video file not found", "absent.mp4")


def test_metrics_port_in_use(tmp_path: Path, colour_model_path: Path, video: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = tmp_path / "c.toml"
        config.write_text(config_text(colour_model_path, video).replace("port = 0", f"port = {port}"))
        assert_clean_error(run_daemon(config), EXIT_STARTUP, f"cannot serve metrics on 127.0.0.1:{port}")


def test_paced_file_that_does_not_exist_fails_at_start(tmp_path: Path, colour_model_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(config_text(colour_model_path, tmp_path / "absent.mp4").replace(
        'path = "' + str(tmp_path / "absent.mp4") + '"', 'path = "' + str(tmp_path / "absent.mp4") + '"\npace = true'))
    assert_clean_error(run_daemon(config), EXIT_STARTUP, "video file not found")


def test_gstreamer_source_without_gstreamer_support_says_so(tmp_path: Path, colour_model_path: Path,
                                                            video: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(config_text(colour_model_path, video) + \
        '\n[[sources]]\nid = "gst"\ntype = "gstreamer"\npipeline = "videotestsrc ! videoconvert ! appsink"\n')
    assert_clean_error(run_daemon(config), EXIT_STARTUP, "no GStreamer support")


def run_on_migraphx_ep(tmp_path: Path, model: Path, video: Path, version: str, provider_options: str = "",
                       env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The daemon on the onnxruntime-migraphx double of ONNX Runtime ``version``, MIGraphX EP first."""
    config = tmp_path / "c.toml"
    config.write_text(config_text(model, video, f"""
[engine]
type = "onnxruntime"
[engine.onnxruntime]
providers = ["MIGraphXExecutionProvider", "CPUExecutionProvider"]
{provider_options}"""))
    return subprocess.run(daemon_on_onnxruntime_migraphx(version, "--config", str(config)), cwd=REPO,
                          capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("version", [ort.__version__, "1.22.1"])  # raises / falls back to CPU with a print
def test_an_onnx_runtime_provider_that_does_not_start_stops_the_daemon_with_its_reason(
        tmp_path: Path, colour_model_path: Path, video: Path, version: str) -> None:
    result = run_on_migraphx_ep(tmp_path, colour_model_path, video, version, """
[engine.onnxruntime.provider_options.MIGraphXExecutionProvider]
migraphx_fp16_enabled = "True"
""")
    assert_clean_error(result, EXIT_STARTUP, "MIGraphXExecutionProvider", "migraphx_fp16_enabled")
    assert "Falling back" not in result.stdout


def test_an_onnx_runtime_gpu_provider_that_takes_no_node_stops_the_daemon(tmp_path: Path, colour_model_path: Path,
                                                                         video: Path) -> None:
    """It would start, and run every node on the CPU under the GPU provider's name."""
    result = run_on_migraphx_ep(tmp_path, colour_model_path, video, ort.__version__,
                                env={SUPPORTED_OPS_VARIABLE: ""})
    assert_clean_error(result, EXIT_STARTUP, "nfnet-daemon: error: ONNX Runtime's MIGraphXExecutionProvider took none "
                       "of the model's 3 nodes: all would run on CPUExecutionProvider (MIGraphXExecutionProvider took "
                       "0 of 3 nodes (3 on CPUExecutionProvider: Flatten x1, GlobalAveragePool x1, MatMul x1))\n")
