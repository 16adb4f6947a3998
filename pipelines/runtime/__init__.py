"""The stage/queue runtime that links sources, preprocessing, the engine and publishers."""

from pipelines.runtime.config import PipelineConfig
from pipelines.runtime.metrics import PipelineMetrics
from pipelines.runtime.pipeline import Pipeline, StageFailure

__all__ = ["Pipeline", "PipelineConfig", "PipelineMetrics", "StageFailure"]
