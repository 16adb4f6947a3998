"""Inference engines behind one interface, chosen by ``engine.type``."""

from __future__ import annotations

import logging
from pathlib import Path

from pipelines.engines.base import Engine, EngineError
from pipelines.engines.config import EngineConfig, MigraphxOptions
from pipelines.model_info import ModelInfo

log = logging.getLogger(__name__)


def migraphx_unavailable(options: MigraphxOptions) -> str | None:
    """Why MIGraphX on a GPU cannot be used here, or None if it can."""
    from pipelines.engines.migraphx_engine import import_migraphx, open_gpu

    try:
        import_migraphx()
        open_gpu(options.hip_library, options.device)
    except EngineError as exc:
        return str(exc)
    return None


def create_engine(config: EngineConfig, model_path: Path, info: ModelInfo) -> Engine:
    """Build the configured engine for ``model_path``; ``auto`` logs what it chose and why."""
    kind = config.type
    if kind == "auto":
        reason = migraphx_unavailable(config.migraphx)
        if reason is None:
            log.info("engine auto: MIGraphX, which imports and sees a GPU")
            kind = "migraphx"
        else:
            log.info("engine auto: ONNX Runtime, because %s", reason)
            kind = "onnxruntime"
    if kind == "migraphx":
        from pipelines.engines.migraphx_engine import MigraphxEngine

        return MigraphxEngine(model_path, info, config)
    from pipelines.engines.onnxruntime import OnnxRuntimeEngine

    return OnnxRuntimeEngine(model_path, info, config)


__all__ = ["Engine", "EngineConfig", "EngineError", "create_engine", "migraphx_unavailable"]
