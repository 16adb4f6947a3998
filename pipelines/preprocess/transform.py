"""Preprocessing that reproduces timm's evaluation transform with OpenCV on BGR frames.

timm's eval transform (``timm.data.transforms_factory.transforms_imagenet_eval``) is: resize so that
the crop covers ``crop_pct`` of the image (shortest edge for ``center``, both edges for ``squash``),
centre-crop to the model's input size, scale to [0, 1], normalise with mean/std, RGB channel order.
The geometry here follows its integer rounding exactly; only the resampling kernel differs (OpenCV
instead of PIL), which ``tests/test_preprocess.py`` bounds against timm itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from pipelines.model_info import ModelInfo

_INTERPOLATION = {
    "nearest": cv2.INTER_NEAREST_EXACT,  # samples pixel centres like PIL
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
}


class FrameFormatError(ValueError):
    """A frame is not an 8-bit, 3-channel BGR image."""


@dataclass(frozen=True)
class ResizePlan:
    """Where a frame of a given size is resized to, and which window of it is kept."""

    resize_hw: tuple[int, int]
    crop_top: int
    crop_left: int
    crop_hw: tuple[int, int]


def plan_resize(frame_hw: tuple[int, int], info: ModelInfo) -> ResizePlan:
    """Compute timm's eval-transform geometry for a frame of ``frame_hw`` (height, width)."""
    height, width = frame_hw
    crop_h, crop_w = info.height, info.width
    scale_h, scale_w = (math.floor(crop_h / info.crop_pct), math.floor(crop_w / info.crop_pct))
    if info.crop_mode == "squash":
        resize_h, resize_w = scale_h, scale_w
    elif scale_h == scale_w:
        # torchvision Resize(int): the shorter edge becomes the size, the longer edge is truncated.
        short, long = min(height, width), max(height, width)
        new_short, new_long = scale_h, int(scale_h * long / short)
        resize_h, resize_w = (new_long, new_short) if width <= height else (new_short, new_long)
    else:
        # timm ResizeKeepRatio(longest=0): scale by the smaller of the two ratios, rounding.
        ratio = min(height / scale_h, width / scale_w)
        resize_h, resize_w = round(height / ratio), round(width / ratio)
    resize_h, resize_w = max(resize_h, crop_h), max(resize_w, crop_w)
    # torchvision CenterCrop rounds the offset half to even, as Python's round() does.
    top = round((resize_h - crop_h) / 2.0)
    left = round((resize_w - crop_w) / 2.0)
    return ResizePlan((resize_h, resize_w), top, left, (crop_h, crop_w))


class Preprocessor:
    """Writes one BGR uint8 frame as a normalised RGB CHW float32 tensor into a caller's buffer.

    Resize plans are cached per frame size, so a stream that changes resolution mid-way is handled
    without extra work for the frames in between.
    """

    def __init__(self, info: ModelInfo) -> None:
        self._info = info
        self._interpolation = _INTERPOLATION[info.interpolation]
        # OpenCV's cubic/linear kernels do not antialias when shrinking (PIL's do); INTER_AREA is
        # OpenCV's antialiased downscale and keeps us closest to timm's PIL reference.
        self._shrink_interpolation = self._interpolation if info.interpolation == "nearest" else cv2.INTER_AREA
        # x_norm = (x / 255 - mean) / std = x * scale + offset, per RGB channel.
        std = np.asarray(info.std, dtype=np.float64)
        self._scale = (1.0 / (255.0 * std)).astype(np.float32)
        self._offset = (-np.asarray(info.mean, dtype=np.float64) / std).astype(np.float32)
        self._plans: dict[tuple[int, int], ResizePlan] = {}

    @property
    def output_shape(self) -> tuple[int, int, int]:
        return self._info.input_size

    def plan_for(self, frame_hw: tuple[int, int]) -> ResizePlan:
        plan = self._plans.get(frame_hw)
        if plan is None:
            plan = self._plans[frame_hw] = plan_resize(frame_hw, self._info)
        return plan

    def __call__(self, frame_bgr: np.ndarray, out: np.ndarray) -> None:
        """Fill ``out`` (shape ``(3, H, W)``, float32) from ``frame_bgr`` (``HxWx3`` uint8, BGR)."""
        if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
            raise FrameFormatError(
                f"expected an HxWx3 uint8 BGR frame, got shape {frame_bgr.shape} dtype {frame_bgr.dtype}"
            )
        plan = self.plan_for(frame_bgr.shape[:2])
        resize_h, resize_w = plan.resize_hw
        if (resize_h, resize_w) != frame_bgr.shape[:2]:
            shrinking = resize_h * resize_w < frame_bgr.shape[0] * frame_bgr.shape[1]
            interpolation = self._shrink_interpolation if shrinking else self._interpolation
            resized = cv2.resize(frame_bgr, (resize_w, resize_h), interpolation=interpolation)
        else:
            resized = frame_bgr
        crop_h, crop_w = plan.crop_hw
        crop = resized[plan.crop_top:plan.crop_top + crop_h, plan.crop_left:plan.crop_left + crop_w]
        for rgb_channel in range(3):
            # BGR input: RGB channel c is BGR channel 2 - c.
            np.multiply(crop[:, :, 2 - rgb_channel], self._scale[rgb_channel], out=out[rgb_channel],
                        casting="unsafe")
            out[rgb_channel] += self._offset[rgb_channel]
