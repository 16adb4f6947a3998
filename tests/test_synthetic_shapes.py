"""The synthetic shapes generator, and the bundled model trained on it (tests/assets/shapes_nfnet.onnx)."""

from __future__ import annotations

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from pipelines.model_info import read_model_info
from tests.conftest import SHAPES_MODEL
from tools.synthetic_shapes import COLOURS, LABELS, render_frame
from tools.train_shapes import data_config_of, reference_transform, render_dataset


def saturated_mask(frame: np.ndarray) -> np.ndarray:
    """Pixels far from grey: the shape (the background is a weakly tinted grey). The median filter
    drops the odd background pixel that noise pushes far from grey."""
    channels = cv2.medianBlur(np.ascontiguousarray(frame), 5).astype(np.int16)
    return (channels.max(axis=2) - channels.min(axis=2)) > 90


def test_labels_are_colour_times_shape() -> None:
    assert len(LABELS) == len(set(LABELS)) == 8
    assert {label.split(" ")[0] for label in LABELS} == set(COLOURS)
    assert {label.split(" ")[1] for label in LABELS} == {"circle", "square"}


def test_render_is_deterministic_per_seed() -> None:
    first = render_frame(3, np.random.default_rng(5), 120, 160)
    again = render_frame(3, np.random.default_rng(5), 120, 160)
    other = render_frame(3, np.random.default_rng(6), 120, 160)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first.astype(int) - other.astype(int)).mean() > 1.0


@pytest.mark.parametrize(("height", "width"), [(96, 96), (120, 160), (240, 320), (320, 240), (64, 300)])
def test_shape_has_class_colour_and_stays_in_the_centre_square(height: int, width: int) -> None:
    rng = np.random.default_rng(height * width)
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    for index, label in enumerate(LABELS):
        frame = render_frame(index, rng, height, width)
        assert frame.shape == (height, width, 3) and frame.dtype == np.uint8
        mask = saturated_mask(frame)
        ys, xs = np.nonzero(mask)
        assert mask.sum() > 0.08 * side * side, f"{label}: shape too small to survive a resize"
        assert ys.min() >= top and ys.max() < top + side and xs.min() >= left and xs.max() < left + side
        mean_rgb = frame[mask].mean(axis=0)
        nearest = min(COLOURS, key=lambda name: np.abs(np.array(COLOURS[name]) - mean_rgb).sum())
        assert nearest == label.split(" ")[0]


def test_channel_swap_changes_red_blue_and_yellow() -> None:
    rng = np.random.default_rng(0)
    for index, label in enumerate(LABELS):
        frame = render_frame(index, rng, 96, 96)
        swapped = frame[..., ::-1]
        mean_rgb = swapped[saturated_mask(swapped)].mean(axis=0)
        nearest = min(COLOURS, key=lambda name: np.abs(np.array(COLOURS[name]) - mean_rgb).sum())
        assert (nearest == label.split(" ")[0]) == label.startswith("green"), label


@pytest.mark.parametrize(("index", "height", "width"), [(8, 96, 96), (-1, 96, 96), (0, 16, 96)])
def test_render_rejects_bad_arguments(index: int, height: int, width: int) -> None:
    with pytest.raises(ValueError):
        render_frame(index, np.random.default_rng(0), height, width)


def test_bundled_model_metadata() -> None:
    info = read_model_info(SHAPES_MODEL)
    assert info.labels == LABELS
    assert info.input_size == (3, 64, 64)
    assert (info.crop_mode, info.crop_pct, info.batch, info.precision) == ("center", 1.0, None, "fp32")
    assert info.weights.kind == "checkpoint" and len(info.weights.ref) == 64
    assert "tools/train_shapes.py" in info.weights.detail
    assert SHAPES_MODEL.stat().st_size < 5_000_000


def test_bundled_model_classifies_fresh_frames() -> None:
    """Frames from a seed never used in training, through timm's reference transform built from the
    model's own metadata: ≥ 99% right, and a BGR/RGB swap wrong on every swap-sensitive class."""
    info = read_model_info(SHAPES_MODEL)
    transform = reference_transform(data_config_of(info))
    images, labels = render_dataset(400, 987_654, transform, degrade=False)
    swapped, _ = render_dataset(400, 987_654, transform, degrade=False, swap_channels=True)
    session = ort.InferenceSession(str(SHAPES_MODEL), providers=["CPUExecutionProvider"])

    predicted = session.run(None, {"input": images.numpy()})[0].argmax(axis=1)
    accuracy = float(np.mean(predicted == labels.numpy()))
    assert accuracy >= 0.99, f"accuracy {accuracy:.2%}"

    swapped_predicted = session.run(None, {"input": swapped.numpy()})[0].argmax(axis=1)
    sensitive = np.array([not label.startswith("green") for label in LABELS])[labels.numpy()]
    assert np.mean(swapped_predicted[sensitive] == labels.numpy()[sensitive]) < 0.05
