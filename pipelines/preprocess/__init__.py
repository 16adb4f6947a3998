"""Frame → model input: geometry and normalisation derived from the model's own metadata."""

from pipelines.preprocess.buffers import BufferPool, InputBuffer
from pipelines.preprocess.transform import FrameShrinker, Normaliser, Preprocessor, ResizePlan, plan_resize

__all__ = ["BufferPool", "FrameShrinker", "InputBuffer", "Normaliser", "Preprocessor", "ResizePlan", "plan_resize"]
