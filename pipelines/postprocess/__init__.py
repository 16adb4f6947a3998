"""Logits → ranked labels."""

from pipelines.postprocess.topk import Prediction, softmax, top_k

__all__ = ["Prediction", "softmax", "top_k"]
