"""Inference engines behind one interface, chosen by ``engine.type``."""

from __future__ import annotations

from pathlib import Path

from pipelines.engines.base import Engine, EngineError
from pipelines.engines.config import EngineConfig
from pipelines.model_info import ModelInfo


def create_engine(config: EngineConfig, model_path: Path, info: ModelInfo) -> Engine:
    """Build the configured engine for ``model_path``."""
    if config.type == "onnxruntime":
        from pipelines.engines.onnxruntime import OnnxRuntimeEngine

        return OnnxRuntimeEngine(model_path, info, config)
    raise EngineError(f"unknown engine type {config.type!r}")


__all__ = ["Engine", "EngineConfig", "EngineError", "create_engine"]
