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
from pipelines.sources.base import Yuv420
from pipelines.sources.config import RoiConfig

_INTERPOLATION = {
    "nearest": cv2.INTER_NEAREST_EXACT,  # samples pixel centres like PIL
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
}


class FrameFormatError(ValueError):
    """A frame is not an 8-bit, 3-channel BGR image."""


def _ycbcr_to_rgb(kr: float, kb: float, full_range: bool) -> np.ndarray:
    """The 3x4 matrix (for ``cv2.transform``) from 8-bit Y'CbCr with these luma weights to 8-bit R'G'B'."""
    kg = 1.0 - kr - kb
    y_scale, c_scale, y_offset = (1.0, 1.0, 0.0) if full_range else (255 / 219, 255 / 224, 16.0)
    rows = [  # coefficients of Y, Cb, Cr
        (y_scale, 0.0, c_scale * 2 * (1 - kr)),
        (y_scale, -c_scale * 2 * (1 - kb) * kb / kg, -c_scale * 2 * (1 - kr) * kr / kg),
        (y_scale, c_scale * 2 * (1 - kb), 0.0),
    ]
    return np.array([(y, cb, cr, -y * y_offset - (cb + cr) * 128.0) for y, cb, cr in rows], dtype=np.float32)


# BT.601, the matrix FFmpeg's swscale (and so OpenCV's read()) applies to every untagged or SD stream, and to
# HD streams too unless asked otherwise: both decoders give the model the same colours.
_TO_RGB = {full_range: _ycbcr_to_rgb(0.299, 0.114, full_range) for full_range in (False, True)}


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


def halvings(frame_hw: tuple[int, int], resize_hw: tuple[int, int]) -> list[tuple[int, int]]:
    """The (vertical, horizontal) factors, 2 or 1, of the exact halvings on the way from ``frame_hw`` to
    ``resize_hw``: an axis is halved while it is at least twice its target."""
    (height, width), (target_h, target_w) = frame_hw, resize_hw
    steps = []
    while height >= 2 * target_h or width >= 2 * target_w:
        step = (2 if height >= 2 * target_h else 1, 2 if width >= 2 * target_w else 1)
        height, width = height // step[0], width // step[1]
        steps.append(step)
    return steps


class RoiError(ValueError):
    """A region of interest that does not fit the frame it is applied to."""


class FrameShrinker:
    """A decoded BGR frame → the model's pixels: timm's eval geometry, RGB, planar ``(3, H, W)`` uint8.

    With a region of interest only that rectangle of the frame is used (a view, no copy), before the
    model's resize and crop; it can be replaced while frames flow (``roi``, set from another thread).

    Runs in each stream's capture thread, right after decoding, so that streams shrink their frames in
    parallel and buffered frames are small (196 kB at 256 x 256 instead of 6 MB at 1080p). Shrinking is a
    chain of exact halvings, each a 2-tap box filter (bilinear at exactly half the size, OpenCV's fast
    path), then one bilinear step of less than 2x: about the cost of reading the frame once, where a
    single ``INTER_AREA`` resize by a non-integer factor takes OpenCV's generic path (6x slower at 1080p).
    Enlarging uses the model's interpolation; ``nearest`` models are resized in one step.

    A :class:`~pipelines.sources.base.Yuv420` frame is shrunk plane by plane (its chroma from half size to the
    same target), and only the model-sized result is converted to RGB, with BT.601 as FFmpeg's swscale does.
    """

    def __init__(self, info: ModelInfo, roi: RoiConfig | None = None) -> None:
        self._info = info
        self._interpolation = _INTERPOLATION[info.interpolation]
        self._nearest = info.interpolation == "nearest"
        self._plans: dict[tuple[int, int], ResizePlan] = {}
        self.roi = roi

    def plan_for(self, frame_hw: tuple[int, int]) -> ResizePlan:
        plan = self._plans.get(frame_hw)
        if plan is None:
            plan = self._plans[frame_hw] = plan_resize(frame_hw, self._info)
        return plan

    def __call__(self, frame: np.ndarray | Yuv420) -> np.ndarray:
        if isinstance(frame, Yuv420):
            return self._shrink_yuv(frame)
        return self._shrink_bgr(frame)

    def _shrink_bgr(self, frame_bgr: np.ndarray) -> np.ndarray:
        if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
            raise FrameFormatError(
                f"expected an HxWx3 uint8 BGR frame, got shape {frame_bgr.shape} dtype {frame_bgr.dtype}"
            )
        top, bottom, left, right = self._region(frame_bgr.shape[:2])
        frame_bgr = frame_bgr[top:bottom, left:right]
        plan = self.plan_for(frame_bgr.shape[:2])
        blue, green, red = cv2.split(_crop(self._resize(frame_bgr, plan.resize_hw), plan))
        return np.stack((red, green, blue))

    def _shrink_yuv(self, frame: Yuv420) -> np.ndarray:
        top, bottom, left, right = self._region(frame.y.shape)
        # The chroma sample covering the region's first row and column, and its last: a region that starts on
        # an odd pixel takes half a pixel more of chroma.
        chroma = (slice(top // 2, (bottom + 1) // 2), slice(left // 2, (right + 1) // 2))
        luma = frame.y[top:bottom, left:right]
        plan = self.plan_for(luma.shape)
        planes = [self._halve(plane, plan.resize_hw) for plane in (luma, frame.u[chroma], frame.v[chroma])]
        if all(plane.shape == planes[0].shape for plane in planes):
            # The usual case (chroma, halved once fewer, lands on luma's size): one last resize for the three
            # planes together, the same pixels in fewer OpenCV calls (each drops and retakes the GIL).
            ycc = self._final(cv2.merge(planes), plan.resize_hw)
        else:
            ycc = cv2.merge([self._final(plane, plan.resize_hw) for plane in planes])
        return np.stack(cv2.split(cv2.transform(_crop(ycc, plan), _TO_RGB[frame.full_range])))  # rows R, G, B

    def _region(self, frame_hw: tuple[int, int]) -> tuple[int, int, int, int]:
        """The region of interest (top, bottom, left, right) of a frame of ``frame_hw`` (all of it without
        one); :class:`RoiError` if it does not fit."""
        height, width = frame_hw
        roi = self.roi
        if roi is None:
            return 0, height, 0, width
        if roi.units == "fraction":
            left, top = round(roi.x * width), round(roi.y * height)
            right, bottom = round((roi.x + roi.width) * width), round((roi.y + roi.height) * height)
        else:
            left, top, right, bottom = int(roi.x), int(roi.y), int(roi.x + roi.width), int(roi.y + roi.height)
        if right > width or bottom > height or right <= left or bottom <= top:
            raise RoiError(f"the region of interest x={left}..{right}, y={top}..{bottom} does not fit a "
                           f"{width}x{height} frame")
        return top, bottom, left, right

    def _resize(self, image: np.ndarray, resize_hw: tuple[int, int]) -> np.ndarray:
        return self._final(self._halve(image, resize_hw), resize_hw)

    def _halve(self, image: np.ndarray, resize_hw: tuple[int, int]) -> np.ndarray:
        """The exact halvings on the way to ``resize_hw`` (none for ``nearest`` models)."""
        if self._nearest:
            return image
        for down_y, down_x in halvings(image.shape[:2], resize_hw):
            # Exactly half (an odd last row or column left out): bilinear averages each pair of pixels.
            height, width = image.shape[0] // down_y, image.shape[1] // down_x
            image = cv2.resize(image[:height * down_y, :width * down_x], (width, height),
                               interpolation=cv2.INTER_LINEAR)
        return image

    def _final(self, image: np.ndarray, resize_hw: tuple[int, int]) -> np.ndarray:
        """The one step from what the halvings left to ``resize_hw``."""
        if image.shape[:2] == resize_hw:
            return image
        enlarging = resize_hw[0] > image.shape[0] or resize_hw[1] > image.shape[1]
        interpolation = self._interpolation if enlarging or self._nearest else cv2.INTER_LINEAR
        return cv2.resize(image, (resize_hw[1], resize_hw[0]), interpolation=interpolation)


def _crop(image: np.ndarray, plan: ResizePlan) -> np.ndarray:
    return image[plan.crop_top:plan.crop_top + plan.crop_hw[0], plan.crop_left:plan.crop_left + plan.crop_hw[1]]


class Normaliser:
    """The model's pixels (``FrameShrinker``'s output) → normalised float32, written into a batch row.

    ``(x / 255 - mean) / std`` per channel, by table lookup (OpenCV's LUT, one pass per channel, without
    the GIL): what the batcher does per frame is this and nothing else.
    """

    def __init__(self, info: ModelInfo) -> None:
        std = np.asarray(info.std, dtype=np.float64)
        levels = np.arange(256, dtype=np.float64)
        self._tables = [((levels / 255.0 - mean) / deviation).astype(np.float32)
                        for mean, deviation in zip(info.mean, std, strict=True)]
        self._shape = info.input_size

    def __call__(self, pixels: np.ndarray, out: np.ndarray) -> None:
        """Fill ``out`` (``(3, H, W)`` float32, e.g. a row of a batch buffer) from ``pixels``."""
        if pixels.shape != self._shape or out.shape != self._shape:
            raise FrameFormatError(f"expected pixels and a row of shape {self._shape}, got {pixels.shape} "
                                   f"and {out.shape}")
        for channel, table in enumerate(self._tables):
            cv2.LUT(pixels[channel], table, dst=out[channel])


class Preprocessor:
    """Both steps in one call: one BGR uint8 frame → a normalised RGB CHW float32 tensor in ``out``."""

    def __init__(self, info: ModelInfo) -> None:
        self.shrink = FrameShrinker(info)
        self.normalise = Normaliser(info)

    def __call__(self, frame_bgr: np.ndarray, out: np.ndarray) -> None:
        self.normalise(self.shrink(frame_bgr), out)
