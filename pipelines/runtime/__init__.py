"""The stage/queue runtime that links sources, preprocessing, the engine and publishers."""

from pipelines.runtime.config import PipelineConfig
from pipelines.runtime.metrics import PipelineMetrics
from pipelines.runtime.pipeline import Pipeline, StageFailure
from pipelines.runtime.progress import Progress

__all__ = ["Pipeline", "PipelineConfig", "PipelineMetrics", "Progress", "StageFailure"]
