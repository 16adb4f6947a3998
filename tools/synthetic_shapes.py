"""Deterministic synthetic video frames for end-to-end tests: one coloured shape on a noisy background.

A class is colour x shape ("red circle", ..., "yellow square"). Colour is part of the class on purpose:
a BGR/RGB mix-up turns red into blue and yellow into cyan, so a channel-order bug shows up as wrong
labels (green, unchanged by the swap, is the exception). The background is a dim, weakly tinted grey
with a gradient and pixel noise, never saturated enough to be confused with a class colour.

The shape always lies well inside the centred ``min(H, W)`` square, so a centre crop (what a
'center' crop_pct=1.0 preprocessing keeps of a non-square frame) never cuts it, and it spans at
least a third of that square, so it stays visible after resizing to a small model input.

Needs only numpy and OpenCV (no torch), so the daemon's tests can use it.
"""

from __future__ import annotations

import cv2
import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {  # RGB
    "red": (220, 35, 35),
    "green": (40, 190, 50),
    "blue": (40, 70, 225),
    "yellow": (230, 210, 40),
}
SHAPES = ("circle", "square")
LABELS: tuple[str, ...] = tuple(f"{colour} {shape}" for colour in COLOURS for shape in SHAPES)

MIN_SIDE = 32
_COLOUR_JITTER = 20  # per channel, keeps every class colour clearly saturated
_MARGIN = 0.06  # of the centred square's side, between the shape and the square's edge


def render_frame(class_index: int, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Render one RGB uint8 frame of shape (height, width, 3) showing class ``LABELS[class_index]``."""
    if not 0 <= class_index < len(LABELS):
        raise ValueError(f"class_index must be in [0, {len(LABELS)}), got {class_index}")
    if min(height, width) < MIN_SIDE:
        raise ValueError(f"frames must be at least {MIN_SIDE}x{MIN_SIDE}, got {height}x{width}")
    colour_name, shape = LABELS[class_index].split(" ")
    frame = _background(rng, height, width)

    side = min(height, width)
    top, left = (height - side) / 2, (width - side) / 2
    radius = rng.uniform(0.17, 0.30) * side  # circle radius, or half the square's side
    lo, hi = _MARGIN * side + radius, (1 - _MARGIN) * side - radius
    cy, cx = top + rng.uniform(lo, hi), left + rng.uniform(lo, hi)
    colour = np.clip(np.array(COLOURS[colour_name]) + rng.integers(-_COLOUR_JITTER, _COLOUR_JITTER + 1, 3), 0, 255)
    colour_tuple = tuple(int(v) for v in colour)
    if shape == "circle":
        cv2.circle(frame, (round(cx), round(cy)), round(radius), colour_tuple, -1, cv2.LINE_AA)
    else:
        corner1 = (round(cx - radius), round(cy - radius))
        corner2 = (round(cx + radius), round(cy + radius))
        cv2.rectangle(frame, corner1, corner2, colour_tuple, -1, cv2.LINE_AA)

    noise = rng.standard_normal(frame.shape, dtype=np.float32) * rng.uniform(3.0, 12.0)
    return np.clip(frame + noise, 0, 255).astype(np.uint8)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A weakly tinted grey with a linear gradient in a random direction (uint8, RGB)."""
    base = rng.uniform(70, 170) + rng.uniform(-12, 12, 3)
    angle = rng.uniform(0, 2 * np.pi)
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    ramp = (np.cos(angle) * xs + np.sin(angle) * ys) * rng.uniform(-30, 30)
    return np.clip(base[None, None, :] + ramp[..., None], 0, 255).astype(np.uint8)
