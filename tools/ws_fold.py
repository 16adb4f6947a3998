"""Fold weight standardization into plain convolutions and make TF-style 'same' padding static.

timm's weight-standardized convolutions (``ScaledStdConv2d`` and friends, the building block of every
``NormFreeNet``) standardize their weight at *every* forward with a training-mode ``F.batch_norm``.
Exported as is, that becomes hundreds of nodes and ``BatchNormalization(training_mode=1)``, which the
ONNX Runtime CUDA EP rejects and MIGraphX silently runs in inference mode (wrong weights). In eval
the standardized weight is a constant, so each such layer is replaced by an ``nn.Conv2d`` holding it.

Layers with TF-style 'same' padding and stride > 1 (``*Same`` convs and pools) compute their padding
from the input's shape at run time, which exports as a ``Shape``-derived ``Pad``. For a fixed export
input size every layer sees a fixed spatial size, so a dry run records it and the padding becomes a
constant. The folded model is therefore only valid at that input size (any batch size).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from timm.layers import ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d, StdConv2dSame
from timm.layers.padding import pad_same_arg
from timm.layers.pool2d_same import AvgPool2dSame, MaxPool2dSame
from torch import nn

STD_CONV_TYPES = (StdConv2d, StdConv2dSame, ScaledStdConv2d, ScaledStdConv2dSame)
SAME_POOL_TYPES = (AvgPool2dSame, MaxPool2dSame)

Pads = tuple[int, int, int, int]  # (left, right, top, bottom), the order of F.pad / nn.ZeroPad2d


class FoldError(RuntimeError):
    """The model cannot be folded for the requested input size."""


def fold_weight_standardization(model: nn.Module, input_size: tuple[int, int]) -> nn.Module:
    """Return an eval-mode copy of ``model`` with every std conv and 'same' pool made export-friendly.

    ``input_size`` is the (height, width) the copy will be exported at; dynamic 'same' padding is
    resolved for exactly that size. The original model is left untouched (it serves as the reference
    when checking the export).
    """
    folded = copy.deepcopy(model).eval()
    input_sizes = record_input_sizes(folded, input_size, [m for m in folded.modules() if _pads_dynamically(m)])
    for name, module in list(folded.named_modules()):
        if isinstance(module, STD_CONV_TYPES):
            replacement = _folded_conv(module, input_sizes.get(module))
        elif isinstance(module, SAME_POOL_TYPES):
            replacement = _static_pool(module, input_sizes[module])
        else:
            continue
        folded.set_submodule(name, replacement)
    return folded


def record_input_sizes(
    model: nn.Module, input_size: tuple[int, int], modules: list[nn.Module]
) -> dict[nn.Module, tuple[int, int]]:
    """Run ``model`` once on a zero image of ``input_size`` and return each module's input (H, W)."""
    sizes: dict[nn.Module, tuple[int, int]] = {}
    if not modules:
        return sizes

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        size = (int(args[0].shape[-2]), int(args[0].shape[-1]))
        if sizes.setdefault(module, size) != size:
            raise FoldError(f"a shared {type(module).__name__} sees inputs of {sizes[module]} and {size}")

    handles = [m.register_forward_pre_hook(hook) for m in modules]
    try:
        param = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, 3, *input_size, dtype=param.dtype, device=param.device))
    finally:
        for handle in handles:
            handle.remove()
    unseen = [type(m).__name__ for m in modules if m not in sizes]
    if unseen:
        raise FoldError(
            f"{len(unseen)} 'same'-padded layers ({unseen[0]}, ...) were not run in the dry run; "
            "their padding cannot be made static"
        )
    return sizes


def standardized_weight(conv: nn.Conv2d) -> torch.Tensor:
    """The weight a std conv actually convolves with, computed exactly as its forward does."""
    gain = conv.gain * conv.scale if isinstance(conv, (ScaledStdConv2d, ScaledStdConv2dSame)) else None
    with torch.no_grad():
        return F.batch_norm(
            conv.weight.reshape(1, conv.out_channels, -1),
            None,
            None,
            weight=None if gain is None else gain.view(-1),
            training=True,
            momentum=0.0,
            eps=conv.eps,
        ).reshape_as(conv.weight)


def _pads_dynamically(module: nn.Module) -> bool:
    return isinstance(module, SAME_POOL_TYPES) or (
        isinstance(module, (StdConv2dSame, ScaledStdConv2dSame)) and module.same_pad
    )


def _same_pads(module: nn.Module, input_hw: tuple[int, int]) -> Pads:
    """The padding timm's ``pad_same`` applies to an input of ``input_hw``."""
    dilation = getattr(module, "dilation", (1, 1))
    left, right, top, bottom = pad_same_arg(list(input_hw), module.kernel_size, module.stride, dilation)
    return int(left), int(right), int(top), int(bottom)


def _folded_conv(conv: nn.Conv2d, input_hw: tuple[int, int] | None) -> nn.Module:
    padding = conv.padding
    pads: Pads | None = None
    if input_hw is not None:  # dynamic 'same' padding, resolved for the recorded input size
        pads = _same_pads(conv, input_hw)
        left, right, top, bottom = pads
        padding = (top, left) if (left, top) == (right, bottom) else (0, 0)
    plain = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        plain.weight.copy_(standardized_weight(conv))
        if conv.bias is not None:
            plain.bias.copy_(conv.bias)
    if pads is not None and padding == (0, 0) and any(pads):
        return nn.Sequential(nn.ZeroPad2d(pads), plain)
    return plain


def _static_pool(pool: nn.Module, input_hw: tuple[int, int]) -> nn.Module:
    """Explicit constant pad + unpadded pool: what timm's ``*Pool2dSame`` do, with the pad fixed."""
    pads = _same_pads(pool, input_hw)
    if isinstance(pool, MaxPool2dSame):
        static: nn.Module = nn.MaxPool2d(pool.kernel_size, pool.stride, 0, pool.dilation, ceil_mode=pool.ceil_mode)
        fill = -float("inf")
    else:
        static = nn.AvgPool2d(pool.kernel_size, pool.stride, 0, pool.ceil_mode, pool.count_include_pad)
        fill = 0.0
    return nn.Sequential(nn.ConstantPad2d(pads, fill), static) if any(pads) else static
