"""Preprocessing against timm's own evaluation transform (PIL), the reference NFNets were trained with."""

from __future__ import annotations

import cv2
import numpy as np
import PIL.Image
import pytest
import timm.data

from pipelines.model_info import ModelInfo, WeightSource
from pipelines.preprocess import BufferPool, FrameShrinker, Normaliser, Preprocessor, plan_resize
from pipelines.preprocess.transform import FrameFormatError, RoiError, halvings
from pipelines.sources.base import Yuv420
from pipelines.sources.config import RoiConfig

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def info_for(size: tuple[int, int], crop_pct: float, crop_mode: str = "center",
             interpolation: str = "bicubic") -> ModelInfo:
    return ModelInfo("m", (3, *size), MEAN, STD, interpolation, crop_pct, crop_mode, ("a",),  # type: ignore[arg-type]
                     WeightSource("random", "0"), None)


def natural_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients plus shapes with hard edges, RGB."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 16 + 2, width // 16 + 2, 3), dtype=np.uint8)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)
    cv2.circle(image, (width // 3, height // 2), min(height, width) // 5, (220, 30, 30), -1)
    cv2.rectangle(image, (width // 2, height // 4), (width * 3 // 4, height * 3 // 4), (30, 200, 60), -1)
    return image


def timm_reference(rgb: np.ndarray, info: ModelInfo) -> np.ndarray:
    transform = timm.data.create_transform(
        input_size=info.input_size, interpolation=info.interpolation, mean=info.mean, std=info.std,
        crop_pct=info.crop_pct, crop_mode=info.crop_mode)
    return transform(PIL.Image.fromarray(rgb)).numpy()


def ours(rgb: np.ndarray, info: ModelInfo) -> np.ndarray:
    out = np.full(info.input_size, np.nan, dtype=np.float32)
    Preprocessor(info)(np.ascontiguousarray(rgb[:, :, ::-1]), out)
    return out


def mean_abs_levels(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference expressed in 8-bit pixel levels."""
    return float(np.mean(np.abs(a - b) * np.asarray(STD, dtype=np.float32)[:, None, None]) * 255.0)


@pytest.mark.parametrize("frame_hw", [(480, 640), (720, 1280), (1080, 1920), (640, 480), (97, 131), (50, 60)])
@pytest.mark.parametrize(("size", "crop_pct", "crop_mode"), [
    ((224, 224), 0.875, "center"), ((256, 256), 0.94, "center"), ((64, 64), 1.0, "center"),
    ((256, 192), 0.9, "center"), ((224, 224), 0.9, "squash"),
])
def test_geometry_is_timms(frame_hw: tuple[int, int], size: tuple[int, int], crop_pct: float,
                           crop_mode: str) -> None:
    """Same resize and crop as timm: nearest-neighbour output (no resampling differences) is identical."""
    info = info_for(size, crop_pct, crop_mode, interpolation="nearest")
    # Every pixel distinct in position so that any off-by-one in resize or crop changes the output.
    h, w = frame_hw
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([(yy * 7) % 256, (xx * 5) % 256, (yy + xx) % 256], axis=-1).astype(np.uint8)
    plan = plan_resize(frame_hw, info)
    reference = timm_reference(rgb, info)
    assert plan.crop_hw == size
    # Geometry: our crop window of a nearest-resized frame equals timm's output exactly wherever
    # OpenCV and PIL pick the same source pixel; PIL's nearest rounds pixel centres the same way.
    got = ours(rgb, info)
    assert got.shape == reference.shape
    agreement = np.mean(np.isclose(got, reference, atol=1e-4))
    assert agreement > 0.97, f"only {agreement:.3f} of values agree: the crop window is off"


@pytest.mark.parametrize(("frame_hw", "size", "crop_pct", "limit"), [
    ((480, 640), (224, 224), 0.875, 1.5),
    ((1080, 1920), (224, 224), 0.875, 2.5),
    ((720, 1280), (256, 256), 0.94, 2.5),
    ((120, 160), (224, 224), 0.875, 1.5),  # upscale
    ((480, 640), (64, 64), 1.0, 3.0),
])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_pixels_close_to_timm(frame_hw: tuple[int, int], size: tuple[int, int], crop_pct: float,
                              limit: float, interpolation: str) -> None:
    info = info_for(size, crop_pct, interpolation=interpolation)
    rgb = natural_image(*frame_hw)
    difference = mean_abs_levels(ours(rgb, info), timm_reference(rgb, info))
    assert difference < limit, f"mean |ours - timm| = {difference:.2f} 8-bit levels"


def test_bgr_frames_become_normalised_rgb() -> None:
    info = info_for((32, 32), 1.0)
    red_bgr = np.zeros((40, 40, 3), dtype=np.uint8)
    red_bgr[:, :, 2] = 255
    out = np.empty(info.input_size, dtype=np.float32)
    Preprocessor(info)(red_bgr, out)
    expected = [(1.0 - MEAN[0]) / STD[0], (0.0 - MEAN[1]) / STD[1], (0.0 - MEAN[2]) / STD[2]]
    np.testing.assert_allclose(out.mean(axis=(1, 2)), expected, rtol=1e-5)


def test_writes_into_the_callers_buffer_and_adapts_to_new_frame_sizes() -> None:
    info = info_for((32, 32), 1.0, interpolation="bilinear")
    pool = BufferPool([np.zeros((3, *info.input_size), np.float32) for _ in range(2)])
    buffer = pool.acquire(timeout=1)
    assert buffer is not None
    preprocess = Preprocessor(info)
    for row, size in enumerate([(64, 64), (48, 80), (32, 32)]):
        preprocess(np.full((*size, 3), 128, dtype=np.uint8), buffer.array[row])
    np.testing.assert_allclose(buffer.array[:, 0], (128 / 255 - MEAN[0]) / STD[0], rtol=1e-5)
    pool.release(buffer)
    with pytest.raises(RuntimeError, match="released twice"):
        pool.release(buffer)


@pytest.mark.parametrize("bad", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8),
                                 np.zeros((8, 8, 3), np.float32)])
def test_rejects_frames_that_are_not_bgr8(bad: np.ndarray) -> None:
    info = info_for((32, 32), 1.0)
    with pytest.raises(FrameFormatError, match="HxWx3 uint8"):
        Preprocessor(info)(bad, np.empty(info.input_size, np.float32))


def test_buffer_pool_applies_back_pressure() -> None:
    pool = BufferPool([np.zeros((1, 3, 4, 4), np.float32) for _ in range(2)])
    first, second = pool.acquire(0.1), pool.acquire(0.1)
    assert first is not None and second is not None and first is not second
    assert pool.acquire(timeout=0.05) is None
    pool.release(first)
    assert pool.acquire(timeout=0.05) is first


@pytest.mark.parametrize(("frame_hw", "resize_hw", "steps"), [
    ((1080, 1920), (284, 284), [(2, 2), (1, 2)]),  # dm_nfnet_f0 at 256, squashed: y 3.8x, x 6.8x
    ((2160, 3840), (284, 284), [(2, 2), (2, 2), (1, 2)]),
    ((720, 1280), (64, 113), [(2, 2), (2, 2), (2, 2)]),
    ((480, 640), (256, 256), [(1, 2)]),  # only the width is twice its target
    ((400, 500), (256, 256), []),  # less than 2x: one bilinear step
    ((120, 160), (224, 224), []),  # enlarging
])
def test_shrinking_halves_while_an_axis_is_twice_its_target(frame_hw: tuple[int, int], resize_hw: tuple[int, int],
                                                            steps: list[tuple[int, int]]) -> None:
    assert halvings(frame_hw, resize_hw) == steps


def test_shrinker_gives_planar_rgb_in_the_models_geometry_and_normaliser_fills_a_row() -> None:
    info = info_for((64, 64), 1.0, interpolation="bilinear")
    frame = np.zeros((721, 1281, 3), dtype=np.uint8)  # odd sizes: a last row and column are left out
    frame[:, :, 2] = 200  # BGR: red
    pixels = FrameShrinker(info)(frame)
    assert pixels.shape == (3, 64, 64) and pixels.dtype == np.uint8 and pixels.flags.c_contiguous
    assert (pixels[0] == 200).all() and (pixels[1:] == 0).all(), "RGB order, no colour bleeding"
    row = np.full((3, 64, 64), np.nan, dtype=np.float32)
    Normaliser(info)(pixels, row)
    np.testing.assert_allclose(row[:, 0, 0], [(200 / 255 - MEAN[0]) / STD[0], -MEAN[1] / STD[1], -MEAN[2] / STD[2]],
                               rtol=1e-6)
    with pytest.raises(FrameFormatError, match=r"expected pixels and a row of shape \(3, 64, 64\)"):
        Normaliser(info)(pixels[:, :32], row)


@pytest.mark.parametrize("roi", [
    RoiConfig(x=320, y=90, width=640, height=360),
    RoiConfig(x=0.25, y=0.125, width=0.5, height=0.5, units="fraction"),
])
def test_a_region_of_interest_is_shrunk_as_if_it_were_the_frame(roi: RoiConfig) -> None:
    info = info_for((64, 64), 0.875)
    frame = cv2.cvtColor(natural_image(720, 1280), cv2.COLOR_RGB2BGR)
    region = frame[90:450, 320:960]
    np.testing.assert_array_equal(FrameShrinker(info, roi)(frame), FrameShrinker(info)(region))


def test_a_region_of_interest_that_does_not_fit_the_frame_says_so() -> None:
    shrink = FrameShrinker(info_for((64, 64), 1.0), RoiConfig(x=1200, y=0, width=100, height=100))
    with pytest.raises(RoiError, match=r"the region of interest x=1200..1300, y=0..100 does not fit a 1280x720 frame"):
        shrink(np.zeros((720, 1280, 3), dtype=np.uint8))
    shrink.roi = RoiConfig(x=0.5, width=0.5, height=1.0, units="fraction")  # replaced while frames flow
    assert shrink(np.zeros((720, 1280, 3), dtype=np.uint8)).shape == (3, 64, 64)


def yuv420_of(rgb: np.ndarray, full_range: bool = False) -> Yuv420:
    """``rgb`` as a decoder of H.264 (video range) or MJPEG (full range) would hold it: BT.601 4:2:0 planes."""
    height, width = rgb.shape[:2]
    if full_range:
        ycrcb = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)  # JPEG's full-range BT.601
        chroma = cv2.resize(ycrcb, (width // 2, height // 2), interpolation=cv2.INTER_AREA)
        return Yuv420(ycrcb[:, :, 0], chroma[:, :, 2].copy(), chroma[:, :, 1].copy(), full_range=True)
    i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)  # video-range BT.601, as libx264 stores it
    quarter = height * width // 4
    chroma = i420[height:].reshape(-1)
    return Yuv420(i420[:height], chroma[:quarter].reshape(height // 2, width // 2),
                  chroma[quarter:].reshape(height // 2, width // 2), full_range=False)


def ours_from_planes(planes: Yuv420, info: ModelInfo) -> np.ndarray:
    out = np.full(info.input_size, np.nan, dtype=np.float32)
    Normaliser(info)(FrameShrinker(info)(planes), out)
    return out


@pytest.mark.parametrize(("frame_hw", "size", "crop_pct", "limit"), [
    ((480, 640), (224, 224), 0.875, 2.0),
    ((1080, 1920), (224, 224), 0.875, 3.0),
    ((720, 1280), (256, 256), 0.94, 3.0),
    ((120, 160), (224, 224), 0.875, 3.0),  # upscale: chroma interpolated here, repeated by the reference's conversion
])
def test_yuv_planes_close_to_timm_on_the_decoders_rgb(frame_hw: tuple[int, int], size: tuple[int, int],
                                                       crop_pct: float, limit: float) -> None:
    """Planes shrunk, then converted, against timm on the RGB the decoder would have converted them to first
    (OpenCV's read(): BT.601, chroma upsampled): the same bound as for RGB frames, half a level wider for
    chroma shrunk from half resolution."""
    info = info_for(size, crop_pct)
    planes = yuv420_of(natural_image(*frame_hw))
    decoders_rgb = cv2.cvtColor(np.concatenate((planes.y, planes.u.reshape(-1, frame_hw[1]),
                                                planes.v.reshape(-1, frame_hw[1]))), cv2.COLOR_YUV2RGB_I420)
    difference = mean_abs_levels(ours_from_planes(planes, info), timm_reference(decoders_rgb, info))
    assert difference < limit, f"mean |ours - timm| = {difference:.2f} 8-bit levels"


@pytest.mark.parametrize("full_range", [False, True])
@pytest.mark.parametrize("rgb", [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0), (90, 140, 200)])
def test_yuv_planes_keep_their_colour_in_either_range(rgb: tuple[int, int, int], full_range: bool) -> None:
    info = info_for((32, 32), 1.0, interpolation="bilinear")
    frame = np.empty((48, 64, 3), dtype=np.uint8)
    frame[:] = rgb
    pixels = FrameShrinker(info)(yuv420_of(frame, full_range))
    assert pixels.shape == (3, 32, 32) and pixels.dtype == np.uint8
    assert np.abs(pixels.reshape(3, -1).astype(int) - np.array(rgb)[:, None]).max() <= 2


def test_a_region_of_interest_of_planes_is_shrunk_as_if_it_were_the_frame() -> None:
    info = info_for((64, 64), 0.875)
    planes = yuv420_of(natural_image(720, 1280))
    roi = RoiConfig(x=320, y=90, width=640, height=360)
    region = Yuv420(planes.y[90:450, 320:960], planes.u[45:225, 160:480], planes.v[45:225, 160:480], False)
    np.testing.assert_array_equal(FrameShrinker(info, roi)(planes), FrameShrinker(info)(region))
    with pytest.raises(RoiError, match=r"does not fit a 1280x720 frame"):
        FrameShrinker(info, RoiConfig(x=1200, y=0, width=100, height=100))(planes)
