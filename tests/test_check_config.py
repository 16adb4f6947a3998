"""``nfnet-daemon --check-config``: a real process validates, opens the model and the files, probes the
engine, prints a summary and exits without starting anything."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SHAPES_MODEL, solid_frames, write_video
from tests.double_fixtures import daemon_on_onnxruntime_migraphx
from tests.doubles.onnxruntime_migraphx import SUPPORTED_OPS_VARIABLE


def check(config: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon", "--config", str(config), "--check-config"],
                          capture_output=True, text=True, timeout=60, cwd=REPO, env={**os.environ, **(env or {})})


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    write_video(tmp_path / "lobby.mp4", solid_frames([(255, 0, 0)] * 5))
    path = tmp_path / "daemon.toml"
    path.write_text(f"""
[model]
path = "{SHAPES_MODEL}"
[engine]
type = "onnxruntime"
[[sources]]
id = "lobby"
path = "lobby.mp4"
[[sources]]
id = "gate"
type = "stream"
url = "rtsp://viewer:s3cret@127.0.0.1:9/gate"
[metrics]
port = 1
""")
    return path


def test_a_good_config_is_summarised_without_starting_anything(config_file: Path) -> None:
    result = check(config_file)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{config_file}: valid"
    assert any(line.startswith("  model    shapes_nfnet:") and "8 classes" in line for line in lines)
    assert any(line.startswith("  engine   onnxruntime (configured), providers CPUExecutionProvider") for line in lines)
    assert f"  source   lobby: file {config_file.parent / 'lobby.mp4'} (opened, first frame decoded)" in lines
    # The camera is not contacted (nothing listens on port 9) and its password is not printed.
    assert "  source   gate: stream rtsp://viewer:***@127.0.0.1:9/gate (live: not contacted)" in lines
    assert "s3cret" not in result.stdout + result.stderr
    assert "  publish  zmq tcp://127.0.0.1:5555 (send_hwm 10000, CURVE off)" in lines
    # Port 1 would need root to bind: nothing was bound, nothing ran.
    assert "  http     http://127.0.0.1:1/metrics, /healthz, /readyz" in lines


def test_environment_overrides_are_what_is_checked(config_file: Path) -> None:
    result = check(config_file, env={"NFNET_LOGGING__FORMAT": "json", "NFNET_SOURCES__0__PACE": "true"})
    assert result.returncode == 0, result.stderr
    assert "  logging  info, json" in result.stdout.splitlines()
    assert "(paced)" in result.stdout


@pytest.mark.parametrize("variable, value, code, message", [
    ("NFNET_MODEL__PATH", "/nonexistent/model.onnx", 3, "model file not found: /nonexistent/model.onnx"),
    ("NFNET_ENGINE__ONNXRUNTIME__PROVIDERS", '["CUDAExecutionProvider"]', 3,
     "ONNX Runtime providers ['CUDAExecutionProvider'] are not available"),
    ("NFNET_SOURCES__0__PATH", "missing.mp4", 3, "video file not found"),
    ("NFNET_ENGINE__BATCH_SIZ", "4", 2, "engine.batch_siz (from NFNET_ENGINE__BATCH_SIZ): unknown key"),
])
def test_any_problem_exits_non_zero_with_one_clear_line(config_file: Path, variable: str, value: str, code: int,
                                                        message: str) -> None:
    result = check(config_file, env={variable: value})
    assert result.returncode == code, result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("nfnet-daemon: error:") and message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_file_that_is_not_a_video_is_caught(config_file: Path) -> None:
    (config_file.parent / "lobby.mp4").write_bytes(b"not a video at all")
    result = check(config_file)
    assert result.returncode == 3
    assert "lobby" in result.stderr and "Traceback" not in result.stderr


def test_provider_option_names_a_release_replaced_are_found_before_start_up(config_file: Path) -> None:
    config_file.write_text(config_file.read_text().replace('type = "onnxruntime"\n', """type = "onnxruntime"
[engine.onnxruntime]
providers = ["MIGraphXExecutionProvider", "CPUExecutionProvider"]
[engine.onnxruntime.provider_options.MIGraphXExecutionProvider]
migraphx_load_compiled_model = "True"
migraphx_load_model_path = "/var/cache/nfnet-stream/m.mxr"
"""))
    result = subprocess.run(daemon_on_onnxruntime_migraphx("1.32.0", "--config", str(config_file), "--check-config"),
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stderr == (
        "nfnet-daemon: error: engine.onnxruntime.provider_options.MIGraphXExecutionProvider: "
        "migraphx_load_compiled_model, migraphx_load_model_path replaced by migraphx_model_cache_dir in ONNX Runtime "
        "1.23 (installed: 1.32.0)\n")


MIGRAPHX_EP = """type = "onnxruntime"
[engine.onnxruntime]
providers = ["MIGraphXExecutionProvider", "CPUExecutionProvider"]
"""


def check_on_migraphx_ep(config_file: Path, supported_ops: str) -> subprocess.CompletedProcess[str]:
    """--check-config of ``config_file`` on ONNX Runtime's MIGraphX provider (the double), which takes the nodes of
    ``supported_ops`` (comma-separated op types)."""
    config_file.write_text(config_file.read_text().replace('type = "onnxruntime"\n', MIGRAPHX_EP))
    return subprocess.run(daemon_on_onnxruntime_migraphx("1.32.0", "--config", str(config_file), "--check-config"),
                          capture_output=True, text=True, timeout=60, cwd=REPO,
                          env={**os.environ, SUPPORTED_OPS_VARIABLE: supported_ops})


def test_the_check_says_how_much_of_the_graph_the_gpu_provider_took(config_file: Path) -> None:
    result = check_on_migraphx_ep(config_file, "Conv")
    assert result.returncode == 0, result.stderr
    (run,) = [line for line in result.stdout.splitlines() if line.startswith("  run      ")]
    assert re.fullmatch(r"  run      one batch of \d+ run \(ONNX Runtime\): 8 finite scores a frame; "
                        r"MIGraphXExecutionProvider took (\d+) of (\d+) nodes \((\d+) on CPUExecutionProvider: "
                        r"(\w+ x\d+, )*\w+ x\d+\)", run), run
    assert "Conv x" not in run  # every Conv ran on the GPU provider


def test_the_check_refuses_a_gpu_provider_that_takes_no_node(config_file: Path) -> None:
    result = check_on_migraphx_ep(config_file, "")
    assert result.returncode == 3, result.stdout + result.stderr
    assert result.stdout == ""
    assert re.fullmatch(r"nfnet-daemon: error: ONNX Runtime's MIGraphXExecutionProvider took none of the model's "
                        r"(\d+) nodes: all would run on CPUExecutionProvider \(MIGraphXExecutionProvider took 0 of "
                        r"\1 nodes \(\1 on CPUExecutionProvider: [^\n]*\)\)\n", result.stderr), result.stderr


def test_the_check_of_the_cpu_route_counts_every_node_on_the_cpu(config_file: Path) -> None:
    result = check(config_file)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^  run      one batch of \d+ run \(ONNX Runtime\): 8 finite scores a frame; "
                     r"CPUExecutionProvider took (\d+) of \1 nodes$", result.stdout, re.MULTILINE), result.stdout
