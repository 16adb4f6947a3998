"""A model is its graph and every weights file the graph names: the model id changes with either, and a
weights file that is missing is one clear error (the compiled-program cache key: tests/test_migraphx_engine.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from pipelines.model_info import ModelMetadataError, model_files, model_id, model_sha256, read_model_info
from tests.onnx_models import sidecar_twins


def test_models_that_differ_only_in_their_sidecar_have_different_ids(tmp_path: Path) -> None:
    a, b = sidecar_twins(tmp_path)
    assert a.read_bytes() == b.read_bytes(), "the same graph bytes"
    assert model_files(a) == [a, a.parent / "colour.onnx.data"]
    red = np.zeros((1, 3, 32, 32), np.float32)
    red[:, 0] = 1.0
    labels = [ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": red})[0].argmax()
              for path in (a, b)]
    assert labels == [0, 1], "the sidecars hold different weights"
    info = read_model_info(a)
    assert model_sha256(a) != model_sha256(b)
    assert model_id(a, info) != model_id(b, info)


def test_a_missing_sidecar_is_a_clear_error(tmp_path: Path) -> None:
    a, _ = sidecar_twins(tmp_path)
    (a.parent / "colour.onnx.data").unlink()
    with pytest.raises(ModelMetadataError, match=r"colour\.onnx: external weight data not found: .*colour\.onnx\.data"):
        model_id(a, read_model_info(a))
