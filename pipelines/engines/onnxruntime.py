"""ONNX Runtime engine: the portable default, on CPU here and on whatever providers a box has."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.engines.base import Engine, EngineError
from pipelines.engines.config import EngineConfig
from pipelines.model_info import ModelInfo

DYNAMIC_BATCH_DEFAULT = 4


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"

    def __init__(self, model_path: Path, info: ModelInfo, config: EngineConfig) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        missing = [p for p in config.providers if p not in available]
        if missing:
            raise EngineError(
                f"ONNX Runtime providers {missing} are not available in this installation "
                f"(available: {available})"
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = config.intra_op_threads
        options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(str(model_path), options, providers=config.providers)
        except Exception as exc:  # ORT raises its own exception types per failure
            raise EngineError(f"ONNX Runtime cannot load {model_path}: {exc}") from exc

        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1:
            raise EngineError(f"{model_path}: expected one input, found {[i.name for i in inputs]}")
        model_input = inputs[0]
        static_batch = model_input.shape[0] if isinstance(model_input.shape[0], int) else None
        if list(model_input.shape[1:]) != list(info.input_size):
            raise EngineError(
                f"{model_path}: graph input shape {model_input.shape} does not match the metadata's "
                f"input_size {list(info.input_size)}"
            )
        if static_batch is not None and config.batch_size not in (None, static_batch):
            raise EngineError(
                f"{model_path} was exported with a static batch of {static_batch}; "
                f"engine.batch_size = {config.batch_size} cannot be used (re-export with --dynamic-batch)"
            )
        self.batch_size = static_batch or config.batch_size or DYNAMIC_BATCH_DEFAULT
        self._static = static_batch is not None
        self._input_name = model_input.name
        self._input_dtype = np.float16 if model_input.type == "tensor(float16)" else np.float32
        self._output_name = outputs[0].name
        self._info = info

    @property
    def input_chw(self) -> tuple[int, int, int]:
        return self._info.input_size

    def infer(self, inputs: np.ndarray, count: int) -> np.ndarray:
        feed = inputs if self._static else inputs[:count]
        if feed.dtype != self._input_dtype:
            feed = feed.astype(self._input_dtype)
        (logits,) = self._session.run([self._output_name], {self._input_name: feed})
        return np.asarray(logits[:count], dtype=np.float32)

    def describe(self) -> dict[str, str]:
        return {
            "engine": self.name,
            "provider": self._session.get_providers()[0],
            "batch": str(self.batch_size),
            "precision": self._info.precision,
        }
