"""Configuration: strict validation with messages that name the file and the key."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import jsonschema
import pytest

from daemon.config import ConfigError, load_config
from tests.conftest import REPO
from tools.config_schema import SCHEMA_PATH, config_schema

MINIMAL = """
[model]
path = "models/m.onnx"

[[sources]]
id = "cam1"
path = "videos/a.mp4"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "daemon.toml"
    path.write_text(text)
    return path


def test_minimal_config_gets_defaults_and_paths_relative_to_the_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config.model.path == tmp_path / "models" / "m.onnx"
    assert config.sources[0].path == tmp_path / "videos" / "a.mp4"
    assert config.metrics.host == "127.0.0.1"
    assert config.publish.zmq.enabled and config.publish.zmq.endpoint.startswith("tcp://127.0.0.1:")
    assert config.pipeline.input_buffers == 2


def test_absolute_paths_stay(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL.replace('"models/m.onnx"', '"/srv/m.onnx"')))
    assert config.model.path == Path("/srv/m.onnx")


@pytest.mark.parametrize(("text", "expected"), [
    (MINIMAL + "\n[pipeline]\nqueue_sise = 3\n", "pipeline.queue_sise: unknown key"),
    (MINIMAL.replace('id = "cam1"', 'id = "cam1"\nfps = 3'), "sources[0].fps: unknown key"),
    (MINIMAL + "\n[engine]\nbatch_size = \"four\"\n", "engine.batch_size: Input should be a valid integer"),
    (MINIMAL + "\n[metrics]\nport = 70000\n", "metrics.port: Input should be less than or equal to 65535"),
    ("[[sources]]\nid = \"a\"\npath = \"x\"\n", "model: required key is missing"),
    (MINIMAL.replace('id = "cam1"', 'id = "cam 1"'), "sources[0].id: String should match pattern"),
    (MINIMAL + '\n[[sources]]\nid = "cam1"\npath = "b.mp4"\n', "source ids must be unique; repeated: cam1"),
    (MINIMAL + "\n[engine]\ntype = \"tensorrt\"\n", "engine.type: Input should be 'auto', 'migraphx' or 'onnxruntime'"),
    # Wrong types are not guessed at (TOML has real ones).
    (MINIMAL + "\n[engine]\nbatch_size = \"4\"\n", "engine.batch_size: Input should be a valid integer"),
    (MINIMAL + "\n[pipeline]\ntop_k = true\n", "pipeline.top_k: Input should be a valid integer"),
    (MINIMAL + "\n[metrics]\nenabled = \"false\"\n", "metrics.enabled: Input should be a valid boolean"),
    # Values with no sane use are bounded, and the error says the bound.
    (MINIMAL.replace('id = "cam1"', 'id = "cam1"\n[sources.reconnect]\nbase_s = inf'),
     "sources[0].reconnect.base_s: Input should be a finite number"),
    (MINIMAL.replace('id = "cam1"', 'id = "cam1"\n[sources.reconnect]\nstall_timeout_s = 1e10'),
     "sources[0].reconnect.stall_timeout_s: Input should be less than or equal to 3600"),
    (MINIMAL.replace('path = "videos/a.mp4"', 'type = "stream"\nurl = "rtsp://cam/1"\nopen_timeout_s = 1e10'),
     "sources[0].open_timeout_s: Input should be less than or equal to 3600"),
    (MINIMAL + "\n[publish.zmq]\nsend_hwm = 9999999999\n",
     "publish.zmq.send_hwm: Input should be less than or equal to 10000000"),
    (MINIMAL + "\n[engine.onnxruntime]\nintra_op_threads = 100000\n",
     "engine.onnxruntime.intra_op_threads: Input should be less than or equal to 1024"),
    (MINIMAL + "\n[publish.zmq]\nendpoint = \"tcp://127.0.0.1:99999\"\n",
     "publish.zmq.endpoint: Value error, port 99999 is not in 1-65535 (or * for any free port)"),
    (MINIMAL + "\n[publish.zmq]\nendpoint = \"udp://1.2.3.4:5\"\n",
     "publish.zmq.endpoint: Value error, expected tcp://HOST:PORT, ipc://PATH or inproc://NAME"),
    # A region of interest: whole pixels, or fractions within the frame.
    (MINIMAL.replace('id = "cam1"', 'id = "cam1"\nroi = { x = 0.5, width = 100, height = 100 }'),
     "sources[0].roi: Value error, an ROI in pixels needs whole numbers"),
    (MINIMAL.replace('id = "cam1"', 'id = "cam1"\nroi = { x = 0.5, width = 0.6, height = 1, units = "fraction" }'),
     "sources[0].roi: Value error, an ROI in fractions must lie within the frame"),
    (MINIMAL.replace('id = "cam1"', 'id = "cam1"\nroi = { width = 0, height = 10 }'),
     "sources[0].roi.width: Input should be greater than 0"),
])
def test_invalid_configs_say_what_and_where(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value)
    assert expected in str(caught.value)


def test_every_problem_on_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "\n[pipeline]\ntop_k = 0\ninput_buffers = 99\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "\n" not in message, "the CLI prints one error line"
    assert f"{path}:10: pipeline.top_k" in message and f"{path}:11: pipeline.input_buffers" in message


def test_a_config_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "daemon.toml"
    path.write_bytes(MINIMAL.encode() + b'\n[publish]\ninstance = "caf\xe9"\n')
    with pytest.raises(ConfigError, match=rf"^{path}:10: not UTF-8 \(byte 0xe9\); TOML files are UTF-8$"):
        load_config(path)


def test_invalid_toml_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not valid TOML: .*line 2"):
        load_config(write(tmp_path, "[model]\npath = \n"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_bundled_configs_are_valid() -> None:
    configs = sorted(Path(__file__).resolve().parent.parent.joinpath("configs").glob("*.toml"))
    assert {path.name for path in configs} >= {"demo.toml", "edge-rocm.toml"}
    for path in configs:
        config = load_config(path)
        if path.name == "demo.toml":  # the others name a box's own files
            assert config.model.path.is_file(), f"{path}: model {config.model.path} does not exist"
            assert all(source.path.is_file() for source in config.sources)


def test_environment_overrides_secrets_and_paths(tmp_path: Path) -> None:
    text = MINIMAL + '\n[[sources]]\nid = "gate"\ntype = "stream"\nurl = "rtsp://camera/stream"\n'
    config = load_config(write(tmp_path, text), environ={
        "NFNET_MODEL__PATH": "/srv/models/f0.onnx",
        "NFNET_SOURCES__1__URL": "rtsp://user:secret@camera/stream",
        "NFNET_SOURCES__1__RECONNECT__MAX_ATTEMPTS": "7",
        "NFNET_LOGGING__FORMAT": "json",
        "NFNET_PIPELINE__TOP_K": "3",
        "NFNET_UNRELATED": "not a config key: ignored",
        "OTHER__THING": "ignored",
    })
    assert config.model.path == Path("/srv/models/f0.onnx")
    assert config.sources[1].url == "rtsp://user:secret@camera/stream"
    assert config.sources[1].reconnect.max_attempts == 7
    assert config.logging.format == "json"
    assert config.pipeline.top_k == 3


@pytest.mark.parametrize("variable, value, expected", [
    ("NFNET_PIPELINE__TOP_KK", "3", "pipeline.top_kk (from NFNET_PIPELINE__TOP_KK): unknown key"),
    ("NFNET_PIPELINE__TOP_K", "many", "pipeline.top_k (from NFNET_PIPELINE__TOP_K): Input should be a valid integer"),
    ("NFNET_SOURCES__5__URL", "rtsp://x", "NFNET_SOURCES__5__URL: there is no item 5 at sources"),
    ("NFNET_MODEL__PATH__X", "1", "NFNET_MODEL__PATH__X: model.path is not a table"),
])
def test_bad_environment_overrides_name_the_variable(tmp_path: Path, variable: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, MINIMAL), environ={variable: value})
    assert expected in str(caught.value)


def test_the_json_schema_in_the_repository_is_current() -> None:
    assert SCHEMA_PATH.read_text() == config_schema(), "regenerate it: nfnet-config-schema --write"


def test_the_json_schema_accepts_the_bundled_configs_and_rejects_unknown_keys() -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    for path in sorted((REPO / "configs").glob("*.toml")):
        jsonschema.validate(tomllib.loads(path.read_text()), schema)
    with pytest.raises(jsonschema.ValidationError, match="Additional properties"):
        jsonschema.validate({"model": {"path": "m.onnx"}, "sources": [{"id": "a", "path": "a.mp4"}], "modle": {}},
                            schema)


def test_the_environment_file_example_names_real_keys(tmp_path: Path) -> None:
    """Every NFNET_* line of systemd/nfnet-daemon.env.example, uncommented, is a valid override."""
    example = (REPO / "systemd" / "nfnet-daemon.env.example").read_text().splitlines()
    environ = dict(line.lstrip("#").split("=", 1) for line in example if line.lstrip("#").startswith("NFNET_"))
    assert "NFNET_MODEL__PATH" in environ
    text = MINIMAL + '\n[[sources]]\nid = "gate"\ntype = "stream"\nurl = "rtsp://camera/stream"\n'
    config = load_config(write(tmp_path, text), environ=environ)
    assert config.model.path == Path(environ["NFNET_MODEL__PATH"])


def test_errors_name_the_line_that_sets_the_key(tmp_path: Path) -> None:
    text = MINIMAL + """
[[sources]]
id = "gate"
type = "stream"
url = "rtsp://camera/stream"
[sources.reconnect]
base_sx = 1

[[sources]]
path = "c.mp4"

[pipeline]
top_k = "five"
"""
    path = write(tmp_path, text)
    lines = text.splitlines()
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert f"{path}:{lines.index('base_sx = 1') + 1}: sources[1].reconnect.base_sx: unknown key" in message
    top_k_line = lines.index('top_k = "five"') + 1
    assert f"{path}:{top_k_line}: pipeline.top_k: Input should be a valid integer" in message
    # A missing key: the line of the table that lacks it (the third [[sources]]).
    third = [n for n, line in enumerate(lines, start=1) if line == "[[sources]]"][2]
    assert f"{path}:{third}: sources[2].id: required key is missing" in message
