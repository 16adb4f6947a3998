"""Engine configuration: which engine runs the model, and its options."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipelines.config_base import StrictModel


class EngineConfig(StrictModel):
    type: Literal["onnxruntime"] = Field(
        "onnxruntime", description="Inference engine. ONNX Runtime runs everywhere (CPU by default)."
    )
    batch_size: int | None = Field(
        None, ge=1, le=256,
        description="Frames per inference. Models exported with a static batch use theirs; "
                    "dynamic-batch models default to 4.",
    )
    providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        min_length=1,
        description="ONNX Runtime execution providers, in order of preference.",
    )
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads (0: its default).")
    warmup_runs: int = Field(2, ge=0, description="Batches of zeros run before the daemon is ready.")
