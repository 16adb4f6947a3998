"""The ONNX Runtime engine on real (small, hand-built) models: batching, padding, errors; the GPU route (provider
start-up, option names per release, compiling providers, I/O binding, where the nodes ran, HIP's blocking waits) on
the onnxruntime-migraphx double."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipelines.engines import Engine, EngineConfig, EngineError, create_engine
from pipelines.engines.config import OnnxRuntimeOptions
from pipelines.engines.onnxruntime import best_providers, installed_option_names, output_device
from tests.conftest import REPO, daemon_config, free_port, solid_frames, write_video
from tests.double_fixtures import daemon_on_onnxruntime_migraphx
from tests.doubles.device import DEVICE
from tests.doubles.onnxruntime_migraphx import SUPPORTED_OPS_VARIABLE, onnxruntime_migraphx
from tests.onnx_models import colour_model, colour_model_info
from tests.subscriber import get


def expected_logits(inputs: np.ndarray) -> np.ndarray:
    weights = (np.eye(3, dtype=np.float32) * 3.0 - 1.0).T
    return inputs.mean(axis=(2, 3)) @ weights


def random_batch(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 3, 32, 32)).astype(np.float32)


def test_dynamic_batch_runs_only_the_real_rows(tmp_path: Path) -> None:
    info = colour_model_info()
    engine = create_engine(EngineConfig(batch_size=4), colour_model(tmp_path / "m.onnx", info), info)
    assert engine.batch_size == 4
    inputs = random_batch(4)
    for count in (1, 3, 4):
        logits = engine.infer(inputs, count)
        assert logits.shape == (count, 3) and logits.dtype == np.float32
        np.testing.assert_allclose(logits, expected_logits(inputs[:count]), rtol=1e-5, atol=1e-5)


def test_static_batch_pads_and_discards_the_padding(tmp_path: Path) -> None:
    info = colour_model_info(batch=2)
    engine = create_engine(EngineConfig(), colour_model(tmp_path / "m.onnx", info), info)
    assert engine.batch_size == 2
    inputs = random_batch(2)
    logits = engine.infer(inputs, 1)
    np.testing.assert_allclose(logits, expected_logits(inputs[:1]), rtol=1e-5, atol=1e-5)
    engine.warmup()


def test_static_batch_conflicting_with_config_is_an_error(tmp_path: Path) -> None:
    info = colour_model_info(batch=2)
    path = colour_model(tmp_path / "m.onnx", info)
    with pytest.raises(EngineError, match=r"static batch of 2; engine\.batch_size = 8"):
        create_engine(EngineConfig(batch_size=8), path, info)


def test_metadata_that_disagrees_with_the_graph_is_an_error(tmp_path: Path) -> None:
    path = colour_model(tmp_path / "m.onnx", colour_model_info(input_hw=(32, 32)))
    with pytest.raises(EngineError, match="does not match the metadata's input_size"):
        create_engine(EngineConfig(), path, colour_model_info(input_hw=(64, 64)))


def test_unavailable_provider_lists_what_is_available(tmp_path: Path) -> None:
    info = colour_model_info()
    path = colour_model(tmp_path / "m.onnx", info)
    with pytest.raises(EngineError, match=r"not available .*CPUExecutionProvider"):
        options = OnnxRuntimeOptions(providers=["NoSuchExecutionProvider"])
        create_engine(EngineConfig(type="onnxruntime", onnxruntime=options), path, info)


def test_corrupt_model_is_an_engine_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"\x08\x07garbage" * 50)
    with pytest.raises(EngineError, match="cannot load"):
        create_engine(EngineConfig(), path, colour_model_info())


def test_best_providers_prefers_a_gpu_and_keeps_cpu_as_fallback() -> None:
    assert best_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert best_providers(["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert best_providers(["CUDAExecutionProvider", "MIGraphXExecutionProvider", "CPUExecutionProvider"])[0] == \
        "MIGraphXExecutionProvider"


def test_io_binding_gives_the_same_logits(tmp_path: Path) -> None:
    info = colour_model_info()
    path = colour_model(tmp_path / "m.onnx", info)
    bound = create_engine(EngineConfig(type="onnxruntime", batch_size=4,
                                       onnxruntime=OnnxRuntimeOptions(io_binding=True)), path, info)
    assert bound.describe()["io_binding"] == "true"
    inputs = random_batch(4)
    np.testing.assert_allclose(bound.infer(inputs, 3), expected_logits(inputs[:3]), rtol=1e-5, atol=1e-5)


def test_options_for_a_provider_not_in_use_are_an_error(tmp_path: Path) -> None:
    info = colour_model_info()
    path = colour_model(tmp_path / "m.onnx", info)
    options = OnnxRuntimeOptions(provider_options={"CUDAExecutionProvider": {"device_id": "0"}})
    with pytest.raises(EngineError, match="provider_options names providers not in use"):
        create_engine(EngineConfig(type="onnxruntime", onnxruntime=options), path, info)


# The ONNX Runtime GPU route, on the onnxruntime-migraphx double (tests/doubles/onnxruntime_migraphx.py): the real
# wrapper and CPU kernels, a stand-in MIGraphX provider.

MIGRAPHX_FIRST = ["MIGraphXExecutionProvider", "CPUExecutionProvider"]


def use_migraphx_build(monkeypatch: pytest.MonkeyPatch, version: str = ort.__version__,
                       supported_ops: set[str] | None = None) -> ModuleType:
    double = onnxruntime_migraphx(version, supported_ops)
    monkeypatch.setitem(sys.modules, "onnxruntime", double)
    return double


def migraphx_engine(tmp_path: Path, batch_size: int = 4, hip_library: str = "libamdhip64.so", **options: str) -> Engine:
    info = colour_model_info()
    ort_options = OnnxRuntimeOptions(providers=MIGRAPHX_FIRST,
                                     provider_options={"MIGraphXExecutionProvider": options} if options else {})
    config = EngineConfig(type="onnxruntime", batch_size=batch_size, onnxruntime=ort_options,
                          migraphx={"hip_library": hip_library})
    return create_engine(config, colour_model(tmp_path / "m.onnx", info), info)


@pytest.mark.parametrize("version, reason", [
    (ort.__version__, 'Unknown provider option: "migraphx_fp16_enabled".'),  # raised: enable_fallback=0
    ("1.22.1", "Invalid MIGraphX EP option: migraphx_fp16_enabled"),  # printed by a wrapper that falls back
])
def test_a_provider_that_does_not_start_stops_start_up_with_onnx_runtimes_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], version: str,
        reason: str) -> None:
    use_migraphx_build(monkeypatch, version)
    with pytest.raises(EngineError, match="MIGraphXExecutionProvider") as error:
        migraphx_engine(tmp_path, migraphx_fp16_enabled="1")
    assert reason in str(error.value)
    assert "Falling back" not in capsys.readouterr().out  # what the wrapper printed became the error


def test_the_provider_started_is_the_one_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_migraphx_build(monkeypatch)
    engine = migraphx_engine(tmp_path, migraphx_fp16_enable="True", migraphx_model_cache_dir=str(tmp_path))
    assert engine.describe()["provider"] == "MIGraphXExecutionProvider"


def test_option_names_a_release_replaced_are_errors_naming_the_replacement(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_migraphx_build(monkeypatch)
    with pytest.raises(EngineError, match=r"migraphx_save_compiled_model, migraphx_save_model_path replaced by "
                                          r"migraphx_model_cache_dir in ONNX Runtime 1\.23 \(installed: "):
        migraphx_engine(tmp_path, migraphx_save_compiled_model="1", migraphx_save_model_path="/tmp/m.mxr")


def test_option_names_are_those_of_the_installed_release() -> None:
    provider = "MIGraphXExecutionProvider"
    native = {"migraphx_int8_use_native_calibration_table": "True"}
    assert installed_option_names(provider, native, "1.22.2.post1") == {
        "migraphx_use_native_calibration_table": "True"}
    assert installed_option_names(provider, native, "1.32.0") == native
    with pytest.raises(EngineError, match=r"migraphx_model_cache_dir is new in ONNX Runtime 1\.23 \(installed: "
                                          r"1\.22\.1, which has migraphx_save_compiled_model, migraphx_save_model"):
        installed_option_names(provider, {"migraphx_model_cache_dir": "/var/cache"}, "1.22.1")
    assert installed_option_names("CUDAExecutionProvider", {"device_id": "1"}, "1.18.0") == {"device_id": "1"}


def test_an_older_release_gets_its_own_option_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_migraphx_build(monkeypatch, "1.22.1")
    engine = migraphx_engine(tmp_path, migraphx_int8_use_native_calibration_table="False")
    assert engine.describe()["provider"] == "MIGraphXExecutionProvider"


def test_the_edge_configs_provider_options_start_the_installed_migraphx_provider(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    edge = tomllib.loads((REPO / "configs" / "edge-rocm.toml").read_text())["engine"]["onnxruntime"]
    use_migraphx_build(monkeypatch)
    info = colour_model_info()
    engine = create_engine(EngineConfig(type="onnxruntime", onnxruntime=OnnxRuntimeOptions(**edge)),
                           colour_model(tmp_path / "m.onnx", info), info)
    assert engine.describe()["provider"] == edge["providers"][0] == "MIGraphXExecutionProvider"


def test_a_compiling_provider_always_runs_the_full_padded_batch(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    double = use_migraphx_build(monkeypatch)
    engine = migraphx_engine(tmp_path, batch_size=4)  # a dynamic-batch model
    engine.warmup()
    inputs = random_batch(4)
    for count in (1, 3, 4):  # partial batches: a batch timeout, the end of a stream
        np.testing.assert_allclose(engine.infer(inputs, count), expected_logits(inputs[:count]), rtol=1e-5,
                                   atol=1e-5)
    assert set(double.runs) == {(4, 3, 32, 32)}  # one shape: compiled once, at the warm-up


def test_outputs_are_bound_where_the_provider_can_allocate_them(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA: on its device_id. MIGraphX: on the host ("cuda" is an NVIDIA device to ONNX Runtime's wrapper)."""
    assert output_device("CUDAExecutionProvider", {"device_id": "1"}) == ("cuda", 1)
    assert output_device("CUDAExecutionProvider", {}) == ("cuda", 0)
    double = use_migraphx_build(monkeypatch)
    engine = migraphx_engine(tmp_path, device_id="1")
    assert engine.describe()["io_binding"] == "true"
    engine.infer(random_batch(4), 2)
    assert double.output_devices == [("cpu", 0)]


def test_the_removed_rocm_provider_is_not_preferred() -> None:
    assert best_providers(["ROCMExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]


# Plugin execution provider libraries (ONNX Runtime >= 1.23)

def plugin_engine(tmp_path: Path, library: Path, providers: list[str] | None = None) -> Engine:
    info = colour_model_info()
    options = OnnxRuntimeOptions(providers=providers or ["ExampleExecutionProvider"],
                                 plugin_libraries={"ExampleExecutionProvider": library})
    return create_engine(EngineConfig(type="onnxruntime", onnxruntime=options),
                         colour_model(tmp_path / "m.onnx", info), info)


def test_a_missing_plugin_library_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match=f"plugin_libraries.ExampleExecutionProvider: no such file: {tmp_path}"):
        plugin_engine(tmp_path, tmp_path / "libexample_ep.so")


def test_a_file_that_is_no_library_is_an_error_with_onnx_runtimes_reason(tmp_path: Path) -> None:
    library = tmp_path / "libexample_ep.so"
    library.write_text("not a shared library")
    with pytest.raises(EngineError, match=f"cannot register the plugin library {library}: .*Failed to load library"):
        plugin_engine(tmp_path, library)


def test_a_plugin_library_without_a_device_here_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    double = use_migraphx_build(monkeypatch)
    library = tmp_path / "libexample_ep.so"
    library.touch()
    with pytest.raises(EngineError, match=r"offers no ExampleExecutionProvider on this machine \(ONNX Runtime's "
                                          r"providers with a device: \['CPUExecutionProvider'\]\)"):
        plugin_engine(tmp_path, library)
    assert double.plugin_libraries == {"ExampleExecutionProvider": str(library)}


def test_plugin_libraries_need_onnx_runtime_1_23(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_migraphx_build(monkeypatch, "1.22.1")
    with pytest.raises(EngineError, match=r"plugin_libraries needs ONNX Runtime 1\.23 or later \(installed: "
                                          r"1\.22\.1\)"):
        plugin_engine(tmp_path, tmp_path / "libexample_ep.so")


def test_a_plugin_provider_comes_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    library = tmp_path / "libexample_ep.so"
    library.touch()
    double = use_migraphx_build(monkeypatch)
    monkeypatch.setattr(double, "get_ep_devices", lambda: [SimpleNamespace(ep_name="ExampleExecutionProvider")],
                        raising=False)
    with pytest.raises(EngineError, match="a plugin provider must come first, followed by nothing but CPU"):
        plugin_engine(tmp_path, library, ["MIGraphXExecutionProvider", "ExampleExecutionProvider"])


# Where the nodes ran: the colour model is GlobalAveragePool, Flatten, MatMul.

def profile_dirs() -> set[Path]:
    """The engines' profile directories in existence (those of other tests' engines not yet collected too)."""
    return set(Path(tempfile.gettempdir()).glob("nfnet-stream-profile-*"))


def test_nodes_the_gpu_provider_does_not_take_are_reported_by_op_type(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    use_migraphx_build(monkeypatch, supported_ops={"GlobalAveragePool", "MatMul"})
    before = profile_dirs()
    engine = migraphx_engine(tmp_path)
    assert engine.placement is None  # known from the first run
    engine.check_output(3)
    assert engine.placement is not None
    assert engine.placement.describe() == ("MIGraphXExecutionProvider took 2 of 3 nodes "
                                           "(1 on CPUExecutionProvider: Flatten x1)")
    assert engine.placement.counts() == {"MIGraphXExecutionProvider": 2, "CPUExecutionProvider": 1}
    assert profile_dirs() - before == set()  # the profile is deleted once read


def test_a_compiling_provider_counts_each_fused_subgraph_as_one_node(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The MIGraphX provider runs what it takes as one fused node a subgraph: the whole graph is one node."""
    use_migraphx_build(monkeypatch)
    engine = migraphx_engine(tmp_path)
    engine.warmup(1)
    assert engine.placement is not None
    assert engine.placement.describe() == "MIGraphXExecutionProvider took 1 of 1 nodes"
    assert engine.placement.counts() == {"MIGraphXExecutionProvider": 1, "CPUExecutionProvider": 0}


def test_a_gpu_provider_that_takes_no_node_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_migraphx_build(monkeypatch, supported_ops=set())
    before = profile_dirs()
    engine = migraphx_engine(tmp_path)
    with pytest.raises(EngineError, match=r"^ONNX Runtime's MIGraphXExecutionProvider took none of the model's 3 "
                                          r"nodes: all would run on CPUExecutionProvider \(MIGraphXExecutionProvider "
                                          r"took 0 of 3 nodes \(3 on CPUExecutionProvider: Flatten x1, "
                                          r"GlobalAveragePool x1, MatMul x1\)\)$"):
        engine.check_output(3)
    assert profile_dirs() - before == set()


def test_the_cpu_route_counts_every_node_on_the_cpu_and_is_not_refused(tmp_path: Path) -> None:
    info = colour_model_info()
    engine = create_engine(EngineConfig(type="onnxruntime", onnxruntime=OnnxRuntimeOptions(
        providers=["CPUExecutionProvider"])), colour_model(tmp_path / "m.onnx", info), info)
    engine.warmup()
    assert engine.placement is not None
    assert engine.placement.describe() == "CPUExecutionProvider took 3 of 3 nodes"
    assert engine.placement.counts() == {"CPUExecutionProvider": 3}


def test_an_engine_closed_or_dropped_before_its_first_run_leaves_no_profile(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    use_migraphx_build(monkeypatch)
    before = profile_dirs()
    migraphx_engine(tmp_path).close()
    migraphx_engine(tmp_path)  # collected at once: the session writes its profile as it goes
    assert profile_dirs() - before == set()


# HIP's blocking waits for the MIGraphX provider

HIP_DOUBLE = "python:tests.doubles.hip_runtime"


@pytest.mark.parametrize("options, device", [({}, 0), ({"device_id": "1"}, 1)])
def test_the_migraphx_provider_waits_for_the_gpu_without_spinning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 options: dict[str, str], device: int) -> None:
    DEVICE.reset(device_count=2)
    use_migraphx_build(monkeypatch)
    migraphx_engine(tmp_path, hip_library=HIP_DOUBLE, **options)
    assert DEVICE.device_flags == {device: 4}  # hipDeviceScheduleBlockingSync on the provider's device


def test_hip_flags_are_left_alone_without_the_migraphx_provider(tmp_path: Path) -> None:
    DEVICE.reset()
    info = colour_model_info()
    create_engine(EngineConfig(type="onnxruntime", onnxruntime=OnnxRuntimeOptions(providers=["CPUExecutionProvider"]),
                               migraphx={"hip_library": HIP_DOUBLE}), colour_model(tmp_path / "m.onnx", info), info)
    assert DEVICE.device_flags == {}


def test_a_missing_hip_library_is_not_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    use_migraphx_build(monkeypatch)
    with caplog.at_level(logging.DEBUG, logger="pipelines.engines.onnxruntime"):
        engine = migraphx_engine(tmp_path, hip_library=str(tmp_path / "libamdhip64.so"))
    assert engine.describe()["provider"] == "MIGraphXExecutionProvider"
    assert [r.levelname for r in caplog.records if "no HIP runtime" in r.getMessage()] == ["DEBUG"]


def test_the_daemon_logs_and_exports_where_the_nodes_ran(tmp_path: Path) -> None:
    """Start-up on the MIGraphX provider (the double) taking two of the colour model's three nodes: one log line with
    the counts and the op types left to the CPU, and the gauge, while the daemon waits for its subscriber."""
    info = colour_model_info()
    model = colour_model(tmp_path / "m.onnx", info)
    write_video(tmp_path / "v.mp4", solid_frames([(255, 0, 0)] * 2))
    port = free_port()
    engine = f'type = "onnxruntime"\n[engine.onnxruntime]\nproviders = {MIGRAPHX_FIRST}'.replace("'", '"')
    config = tmp_path / "c.toml"
    config.write_text(daemon_config(model, {"cam1": tmp_path / "v.mp4"}, free_port(), port, exit_when_done=True,
                                    engine=engine))
    stderr = tmp_path / "stderr.txt"
    with stderr.open("wb") as err:
        daemon = subprocess.Popen(daemon_on_onnxruntime_migraphx(ort.__version__, "--config", str(config)), cwd=REPO,
                                  stdout=subprocess.DEVNULL, stderr=err,
                                  env={**os.environ, SUPPORTED_OPS_VARIABLE: "GlobalAveragePool,MatMul"})
    try:
        line = "onnxruntime: MIGraphXExecutionProvider took 2 of 3 nodes (1 on CPUExecutionProvider: Flatten x1)"
        deadline = time.monotonic() + 60
        while line not in stderr.read_text():  # logged once the gauge is set
            assert daemon.poll() is None and time.monotonic() < deadline, stderr.read_text()
            time.sleep(0.05)
        status, text = get(port, "/metrics")
    finally:
        daemon.kill()
        daemon.wait()
    assert status == 200
    nodes = {sample.labels["provider"]: sample.value for family in text_string_to_metric_families(text)
             for sample in family.samples if sample.name == "nfnet_stream_engine_nodes"}
    assert nodes == {"MIGraphXExecutionProvider": 2, "CPUExecutionProvider": 1}
