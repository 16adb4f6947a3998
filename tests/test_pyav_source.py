"""decoder = "pyav": the same frames as OpenCV's decoder, handed on as planes and converted once shrunk."""

from __future__ import annotations

import builtins
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipelines.preprocess import FrameShrinker
from pipelines.sources import SourceError, Yuv420, create_source
from pipelines.sources.config import FileSourceConfig
from pipelines.sources.pyav import PyAvFileSource
from tests.test_preprocess import info_for
from tests.test_reliability import h264


def read_all(config: FileSourceConfig) -> tuple[list[np.ndarray], list[float], int]:
    """Every frame of the file shrunk to a 64x64 model's pixels, their pts, and the declared length."""
    source = create_source(config)
    source.open()
    shrink = FrameShrinker(info_for((64, 64), 0.875))
    pixels, pts = [], []
    while (frame := source.read()) is not None:
        pixels.append(shrink(frame.image))
        pts.append(frame.pts)
    source.close()
    return pixels, pts, source.timeline.frames


def test_the_same_frames_as_opencv_with_their_colours_within_a_few_levels(tmp_path: Path) -> None:
    video = h264(tmp_path / "clip.mp4", frames=50)
    theirs, their_pts, their_length = read_all(FileSourceConfig(id="a", path=video))
    ours, our_pts, our_length = read_all(FileSourceConfig(id="a", path=video, decoder="pyav"))
    assert len(ours) == len(theirs) == our_length == their_length == 50
    np.testing.assert_allclose(our_pts, their_pts, atol=1e-3)
    difference = np.abs(np.stack(ours).astype(int) - np.stack(theirs).astype(int))
    assert difference.mean() < 1.5, f"mean {difference.mean():.2f} levels"  # measured 0.6
    assert np.percentile(difference, 99) <= 12, "only edges of saturated colours differ more"


def test_planes_are_handed_on_as_views_and_other_formats_as_bgr(tmp_path: Path) -> None:
    planar = PyAvFileSource(FileSourceConfig(id="a", path=h264(tmp_path / "a.mp4", frames=5), decoder="pyav"))
    planar.open()
    frame = planar.read()
    assert frame is not None and isinstance(frame.image, Yuv420) and not frame.image.full_range
    assert frame.size_hw == (240, 320) and frame.image.u.shape == (120, 160)
    assert not frame.image.y.flags.owndata, "a view of the decoder's buffer, not a copy"
    planar.close()
    rgb24 = tmp_path / "b.mkv"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=64x48:rate=25", "-frames:v", "3", "-c:v", "ffv1", "-pix_fmt", "bgr0", str(rgb24)],
                   check=True)
    other = PyAvFileSource(FileSourceConfig(id="b", path=rgb24, decoder="pyav"))
    other.open()
    frame = other.read()
    assert frame is not None and isinstance(frame.image, np.ndarray) and frame.image.shape == (48, 64, 3)
    other.close()


def test_a_file_that_is_no_video_says_so(tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    with pytest.raises(SourceError, match=r"source 'a': file .*notes.mp4 cannot be opened: "):
        PyAvFileSource(FileSourceConfig(id="a", path=text, decoder="pyav")).open()
    with pytest.raises(SourceError, match=r"source 'a': video file not found"):
        PyAvFileSource(FileSourceConfig(id="a", path=tmp_path / "missing.mp4", decoder="pyav")).check()


def test_without_pyav_the_check_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_av(name: str, *args: object, **kwargs: object) -> object:
        if name == "av":
            raise ModuleNotFoundError("No module named 'av'", name="av")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_av)
    source = PyAvFileSource(FileSourceConfig(id="a", path=h264(tmp_path / "a.mp4", frames=2), decoder="pyav"))
    with pytest.raises(SourceError, match=r"needs PyAV, a dependency of nfnet-stream that is not installed: "
                                          r"pip install av"):
        source.check()

