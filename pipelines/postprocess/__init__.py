"""Logits → ranked labels."""

from pipelines.postprocess.per_stream import StreamPostprocess
from pipelines.postprocess.topk import Prediction, softmax, top_k

__all__ = ["Prediction", "StreamPostprocess", "softmax", "top_k"]
