"""Random-init NFNets whose every layer matters, for parity tests (needs torch and timm)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tools.export_onnx import (
    data_config_for,
    export_model,
    model_info,
    random_model,
    randomise_gains,
    resolve_labels,
)


def exercise_all_branches(model: nn.Module, seed: int = 0) -> nn.Module:
    """A model built by hand made as the tests make a ``--random-init`` one: every branch live
    (:func:`randomise_gains`), then :func:`random_biases_and_large_logits`."""
    return random_biases_and_large_logits(randomise_gains(model, seed), seed)


def random_biases_and_large_logits(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random biases (timm's are zero), and logits 20 times larger (timm's head makes them well below 1), so
    that every layer shows in the logits, an error relative to them means something, and the best classes
    stand apart."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
            elif name.endswith("fc.weight"):
                param.mul_(20.0)
    return model.eval()


def export_random_nfnet(name: str, input_hw: tuple[int, int], out: Path, batch: int | None = None) -> Path:
    """Export ``name`` with seeded random weights (all branches live, large logits) to ``out``."""
    model, weights = random_model(name, seed=0)
    random_biases_and_large_logits(model)
    info = model_info(name, data_config_for(model, input_hw), labels=resolve_labels(model, None),
                      weights=weights, batch=batch)
    return export_model(model, info, out)
