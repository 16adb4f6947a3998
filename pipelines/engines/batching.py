"""The batch size an engine runs: the model's static batch, or the configured one for dynamic models."""

from __future__ import annotations

from pathlib import Path

from pipelines.engines.base import EngineError

DYNAMIC_BATCH_DEFAULT = 4


def resolve_batch(model_path: Path, static_batch: int | None, configured: int | None) -> int:
    if static_batch is not None and configured not in (None, static_batch):
        raise EngineError(
            f"{model_path} was exported with a static batch of {static_batch}; "
            f"engine.batch_size = {configured} cannot be used (re-export with --dynamic-batch)"
        )
    return static_batch or configured or DYNAMIC_BATCH_DEFAULT
