"""The ONNX Runtime engine on real (small, hand-built) models: batching, padding, errors; the GPU route (provider
start-up, option names per release, compiling providers, I/O binding) on the onnxruntime-migraphx double."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest

from pipelines.engines import Engine, EngineConfig, EngineError, create_engine
from pipelines.engines.config import OnnxRuntimeOptions
from pipelines.engines.onnxruntime import best_providers, installed_option_names, output_device
from tests.conftest import REPO
from tests.doubles.onnxruntime_migraphx import onnxruntime_migraphx
from tests.onnx_models import colour_model, colour_model_info


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


def use_migraphx_build(monkeypatch: pytest.MonkeyPatch, version: str = ort.__version__) -> ModuleType:
    double = onnxruntime_migraphx(version)
    monkeypatch.setitem(sys.modules, "onnxruntime", double)
    return double


def migraphx_engine(tmp_path: Path, batch_size: int = 4, **options: str) -> Engine:
    info = colour_model_info()
    ort_options = OnnxRuntimeOptions(providers=MIGRAPHX_FIRST,
                                     provider_options={"MIGraphXExecutionProvider": options} if options else {})
    return create_engine(EngineConfig(type="onnxruntime", batch_size=batch_size, onnxruntime=ort_options),
                         colour_model(tmp_path / "m.onnx", info), info)


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
