"""The ONNX Runtime engine on real (small, hand-built) models: batching, padding, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.engines import EngineConfig, EngineError, create_engine
from pipelines.engines.config import OnnxRuntimeOptions
from pipelines.engines.onnxruntime import best_providers
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
