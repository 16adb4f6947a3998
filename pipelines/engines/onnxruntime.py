"""ONNX Runtime engine: the portable default, on CPU here and on whatever providers a box has."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.engines.base import Engine, EngineError
from pipelines.engines.batching import resolve_batch
from pipelines.engines.config import EngineConfig, OnnxRuntimeOptions
from pipelines.model_info import ModelInfo

log = logging.getLogger(__name__)

# Preference order when no providers are configured.
PREFERRED_PROVIDERS = ("MIGraphXExecutionProvider", "ROCMExecutionProvider", "CUDAExecutionProvider",
                       "CPUExecutionProvider")
GPU_PROVIDERS = {"MIGraphXExecutionProvider": "cuda", "ROCMExecutionProvider": "cuda",
                 "CUDAExecutionProvider": "cuda"}  # ONNX Runtime names every GPU device "cuda"


def best_providers(available: list[str]) -> list[str]:
    """The preferred GPU provider that is available (if any), then CPU as the fallback."""
    chosen = [p for p in PREFERRED_PROVIDERS if p in available and p != "CPUExecutionProvider"][:1]
    return [*chosen, "CPUExecutionProvider"]


def resolve_providers(options: OnnxRuntimeOptions) -> list[str]:
    """The providers a session will use: the configured ones, or the best available; raise
    :class:`EngineError` if one is missing here or ``provider_options`` names one not in use."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    providers = options.providers or best_providers(available)
    missing = [p for p in providers if p not in available]
    if missing:
        raise EngineError(
            f"ONNX Runtime providers {missing} are not available in this installation (available: {available})")
    unknown = sorted(set(options.provider_options) - set(providers))
    if unknown:
        raise EngineError(f"engine.onnxruntime.provider_options names providers not in use: {unknown}")
    return providers


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"

    def __init__(self, model_path: Path, info: ModelInfo, config: EngineConfig) -> None:
        import onnxruntime as ort

        options = config.onnxruntime
        providers = resolve_providers(options)
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.intra_op_num_threads = options.intra_op_threads
        session_options.inter_op_num_threads = 1
        provider_list: list[Any] = [(p, options.provider_options[p]) if p in options.provider_options else p
                                    for p in providers]
        try:
            self._session = ort.InferenceSession(str(model_path), session_options, providers=provider_list)
        except Exception as exc:  # ORT raises its own exception types per failure
            raise EngineError(f"ONNX Runtime cannot load {model_path}: {exc}") from exc

        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1:
            raise EngineError(f"{model_path}: expected one input, found {[i.name for i in inputs]}")
        model_input = inputs[0]
        if list(model_input.shape[1:]) != list(info.input_size):
            raise EngineError(
                f"{model_path}: graph input shape {model_input.shape} does not match the metadata's "
                f"input_size {list(info.input_size)}"
            )
        static_batch = model_input.shape[0] if isinstance(model_input.shape[0], int) else None
        self.batch_size = resolve_batch(model_path, static_batch, config.batch_size)
        self._static = static_batch is not None
        self._input_name = model_input.name
        self._input_dtype = np.float16 if model_input.type == "tensor(float16)" else np.float32
        self._output_name = outputs[0].name
        self._info = info
        self._provider = self._session.get_providers()[0]
        use_binding = options.io_binding if options.io_binding is not None else self._provider in GPU_PROVIDERS
        self._binding = self._session.io_binding() if use_binding else None
        self._output_device = GPU_PROVIDERS.get(self._provider, "cpu")

    @property
    def input_chw(self) -> tuple[int, int, int]:
        return self._info.input_size

    def submit(self, inputs: np.ndarray, count: int) -> np.ndarray:
        """ONNX Runtime runs synchronously (releasing the GIL): the handle is the finished logits."""
        feed = inputs if self._static else inputs[:count]
        if feed.dtype != self._input_dtype:
            feed = feed.astype(self._input_dtype)
        if self._binding is None:
            (logits,) = self._session.run([self._output_name], {self._input_name: feed})
        else:
            # Bound input: ONNX Runtime copies host → device once, with no intermediate copy; the output
            # stays on the provider's device until copied back.
            self._binding.bind_cpu_input(self._input_name, np.ascontiguousarray(feed))
            self._binding.bind_output(self._output_name, self._output_device)
            self._session.run_with_iobinding(self._binding)
            (logits,) = self._binding.copy_outputs_to_cpu()
        return np.asarray(logits[:count], dtype=np.float32)

    def result(self, handle: np.ndarray) -> np.ndarray:
        return handle

    def close(self) -> None:
        """Drop the session (weights, arena) now rather than whenever the engine object is collected."""
        self._binding = None
        self._session = None  # type: ignore[assignment]

    def describe(self) -> dict[str, str]:
        return {
            "engine": self.name,
            "provider": self._provider,
            "io_binding": str(self._binding is not None).lower(),
            "batch": str(self.batch_size),
            "precision": self._info.precision,
        }
