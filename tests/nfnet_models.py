"""Random-init NFNets whose every layer matters, for parity tests (needs torch and timm)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tools.export_onnx import data_config_for, export_model, model_info, random_model, resolve_labels


def exercise_all_branches(model: nn.Module, seed: int = 0) -> nn.Module:
    """timm's NFNet init zeroes residual branches (gain 0 or skipinit 0) and biases and makes tiny
    logits; randomise those so that every layer — and so every folding mistake — shows in the logits."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("skipinit_gain"):
                param.fill_(1.0)
            elif name.endswith(".gain"):
                param.copy_(torch.rand(param.shape, generator=generator) + 0.5)
            elif name.endswith(".bias"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
            elif name.endswith("fc.weight"):
                param.mul_(20.0)
    return model.eval()


def export_random_nfnet(name: str, input_hw: tuple[int, int], out: Path, batch: int | None = None) -> Path:
    """Export ``name`` with seeded random weights (all branches live) to ``out``."""
    model, weights = random_model(name, seed=0)
    exercise_all_branches(model)
    info = model_info(name, data_config_for(model, input_hw), labels=resolve_labels(model, None),
                      weights=weights, batch=batch)
    return export_model(model, info, out)
