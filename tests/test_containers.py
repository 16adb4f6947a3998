"""Files in any container, under either decoder: a file cut short or damaged, in Matroska, WebM, MP4, MOV or
MPEG-TS, has every frame it should hold published or counted; a rotated video is turned as it is displayed.
Real daemon processes on real files the tests make, as in ``tests/test_reliability.py``; the sources alone
where frames are compared; the placing of frames on a file's timeline as a pure function."""

from __future__ import annotations

import re
import subprocess
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from pipelines.preprocess import FrameShrinker
from pipelines.sources import create_source
from pipelines.sources.config import FileSourceConfig
from pipelines.sources.timeline import FramePlacer, Timeline
from tests.test_preprocess import info_for
from tests.test_reliability import (
    FRAMES,
    assert_every_frame_accounted,
    damage,
    file_config,
    h264,
    run_to_the_end,
    run_to_the_end_and_scrape,
)

RATE = 25  # the test clips' frame rate

# Container (file suffix) and codec of each clip: H.264, or VP8/VP9 through libvpx in WebM.
CLIPS = {"mkv": (".mkv", "h264"), "webm-vp9": (".webm", "libvpx-vp9"), "webm-vp8": (".webm", "libvpx"),
         "mp4": (".mp4", "h264"), "mov": (".mov", "h264"), "mpegts": (".ts", "h264")}


def has_encoder(name: str) -> bool:
    encoders = subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    return f" {name} " in encoders


def clip(path: Path, codec: str) -> Path:
    """240 frames of ffmpeg's test pattern at 25 frames/s; MP4 and MOV with their index first, so that the first
    half of one still opens."""
    if codec == "h264":
        return h264(path, faststart=path.suffix in (".mp4", ".mov"))
    if not has_encoder(codec):
        pytest.skip(f"this ffmpeg has no {codec} encoder")
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
                    "-i", f"testsrc2=size=320x240:rate={RATE}", "-frames:v", str(FRAMES), "-c:v", codec,
                    "-deadline", "realtime", "-cpu-used", "8", "-g", "25", "-b:v", "400k", "-pix_fmt", "yuv420p",
                    str(path)], check=True)
    return path


def cut_in_half(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def timestamp_span(path: Path) -> int:
    """The frames a file's timestamps span, by ffprobe: its duration x its frame rate."""
    duration = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
                               str(path)], capture_output=True, text=True, check=True).stdout
    return round(float(duration) * RATE)


def counted(detail: str) -> tuple[int, int, int, int]:
    """From a file's final status: frames that could not be decoded, frames missing at its end, frames
    published, frames read."""
    undecodable = re.search(r"(\d+) frame\(s\) could not be decoded", detail)
    missing = re.search(r"the file ended (\d+) frame\(s\) before the (\d+)", detail)
    published, read = map(int, re.search(r"(\d+) of (\d+) frames published", detail).groups())
    return (int(undecodable.group(1)) if undecodable else 0, int(missing.group(1)) if missing else 0,
            published, read)


def placed(timeline: Timeline, frames: list[tuple[float, int]]) -> list[int]:
    """The indexes a capture stage gives frames read as (pts, undecodable before it)."""
    placer, indexes = FramePlacer(timeline), []
    for pts, undecodable in frames:
        indexes.append(placer.place(pts, undecodable, indexes[-1] + 1 if indexes else 0))
    return indexes


def test_frames_a_demuxer_skipped_are_counted_where_they_were_lost_and_a_late_failure_once() -> None:
    timeline = Timeline(10, interval_s=0.04)
    assert placed(timeline, [(n * 0.04, 0) for n in (0, 1, 2, 6, 7, 8, 9)]) == [0, 1, 2, 6, 7, 8, 9]
    # Frame 5's failure, reported by a frame-threaded decoder with frame 3 (early) or frame 8 (late).
    early = [(0.0, 0), (0.04, 0), (0.08, 0), (0.12, 1), (0.16, 0), (0.24, 0), (0.28, 0), (0.32, 0), (0.36, 0)]
    assert placed(timeline, early) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    late = [(0.0, 0), (0.04, 0), (0.08, 0), (0.12, 0), (0.16, 0), (0.24, 0), (0.28, 0), (0.32, 1), (0.36, 0)]
    assert placed(timeline, late) == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    assert placed(Timeline(10), [(0.0, 0), (0.4, 0), (0.44, 2)]) == [0, 1, 4], "no interval: failures only"
    assert placed(timeline, [(0.0, 0), (3600.0, 0)]) == [0, 9], "a leap past the end loses no more than it holds"


def test_a_frame_rate_a_little_off_does_not_add_up_to_lost_frames_over_a_long_file() -> None:
    """An hour at 29.97 frames/s whose rate the container rounds to 30: 108 frames' worth of drift."""
    frames = 107_892
    assert placed(Timeline(frames, interval_s=1 / 30), [(n * 1001 / 30000, 0) for n in range(frames)]) == \
        list(range(frames))


@pytest.mark.parametrize("decoder", ["pyav", "opencv"])
@pytest.mark.parametrize("harm", ["cut", "damaged"])
@pytest.mark.parametrize("kind", CLIPS)
def test_every_frame_a_file_should_hold_is_published_or_counted(tmp_path: Path, daemon_process, kind: str,
                                                                harm: str, decoder: str) -> None:
    suffix, codec = CLIPS[kind]
    video = clip(tmp_path / f"clip{suffix}", codec)
    (cut_in_half if harm == "cut" else damage)(video)
    # An MPEG-TS declares no length: cut, it is a shorter file, which its timestamps are all there is to say.
    should_hold = timestamp_span(video) if (kind, harm) == ("mpegts", "cut") else FRAMES
    config, zmq_port, _ = file_config(tmp_path, video, decoder=decoder)
    daemon, subscriber = run_to_the_end(daemon_process, config, zmq_port)
    end = subscriber.statuses[-1]
    undecodable, missing, published, read = counted(end["detail"])
    assert end["state"] == "ended" and published == len(subscriber.labels) < should_hold, end
    assert read - published == undecodable, "every frame read and not published could not be decoded"
    assert read + missing == should_hold, "before, pyav on a cut mkv: 119 of 119 frames published, exit 0"
    assert assert_every_frame_accounted(subscriber) <= read
    # Frames lost in the middle are counted where they were lost: each published frame is at its place on the
    # file's timeline, or a few frames ahead where a decoder reports a failure before the gap it leaves.
    assert all(0 <= m["frame_index"] - round(m["pts"] * RATE) <= 8 for _, m in subscriber.labels)
    assert daemon.wait(60) == 4, daemon.stderr


@pytest.mark.parametrize("decoder", ["pyav", "opencv"])
def test_a_matroska_file_cut_short_is_expected_to_hold_its_duration_times_its_frame_rate(
        tmp_path: Path, daemon_process, decoder: str) -> None:
    video = cut_in_half(h264(tmp_path / "cut.mkv"))
    config, zmq_port, metrics_port = file_config(tmp_path, video, exit_when_done=False, decoder=decoder)
    _, subscriber, metrics = run_to_the_end_and_scrape(daemon_process, config, zmq_port, metrics_port)
    end = subscriber.statuses[-1]
    missing = end["missing"]
    assert end["frames"] + missing == FRAMES and missing > 100, "before (pyav): 119 of 119 frames published"
    assert f"the file ended {missing} frame(s) before the {FRAMES} its duration and frame rate make" in \
        subscriber.statuses[-1]["detail"]
    assert metrics[("nfnet_stream_frames_missing_total", (("stream", "cam"),))] == missing


@pytest.mark.parametrize("decoder", ["pyav", "opencv"])
def test_a_recording_whose_end_was_never_written_is_read_past_the_demuxers_failures(
        tmp_path: Path, daemon_process, decoder: str) -> None:
    """An MPEG-TS whose second half is zeros (a preallocated file the recorder never filled): FFmpeg's demuxer
    fails on the zeros (EAGAIN) before it reaches the end."""
    video = h264(tmp_path / "recording.ts")
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 2] + bytes(len(data) - len(data) // 2))
    config, zmq_port, _ = file_config(tmp_path, video, decoder=decoder)
    daemon, subscriber = run_to_the_end(daemon_process, config, zmq_port)
    assert daemon.wait(60) == 0, daemon.stderr
    _, missing, published, read = counted(subscriber.statuses[-1]["detail"])
    assert published == read == timestamp_span(video) and missing == 0, "before (pyav): 116 of 116, the first " \
                                                                        "failed read the end"


def with_longer_audio(path: Path) -> Path:
    """240 frames (9.6 s) of H.264 (VP9 in WebM) beside 12 s of sound, as a recording whose sound outlasts its
    picture: the container's duration is the sound's."""
    video = ["libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8"] if path.suffix == ".webm" else \
        ["libx264", "-preset", "veryfast"]
    audio = "libopus" if path.suffix in (".webm", ".mkv") else "mp2"
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
                    "-i", f"testsrc2=size=320x240:rate={RATE}:duration={FRAMES / RATE}", "-f", "lavfi",
                    "-i", "sine=duration=12", "-c:v", *video, "-pix_fmt", "yuv420p", "-c:a", audio, str(path)],
                   check=True)
    return path


@pytest.mark.parametrize("decoder", ["pyav", "opencv"])
@pytest.mark.parametrize("suffix", [".mkv", ".webm", ".ts"])
def test_a_file_whose_sound_outlasts_its_picture_is_expected_to_hold_its_pictures_only(
        tmp_path: Path, daemon_process, suffix: str, decoder: str) -> None:
    video = with_longer_audio(tmp_path / f"recording{suffix}")
    config, zmq_port, _ = file_config(tmp_path, video, decoder=decoder)
    daemon, subscriber = run_to_the_end(daemon_process, config, zmq_port)
    assert daemon.wait(60) == 0, f"before (opencv): 60 frames said missing, 240 of 300: {daemon.stderr}"
    assert assert_every_frame_accounted(subscriber) == len(subscriber.labels) == FRAMES


def variable_rate(path: Path) -> Path:
    """240 frames in 13.6 s: 7 of every 10 frames of a 25 frames/s source, each at its own time."""
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
                    "-i", f"testsrc2=size=320x240:rate={RATE}", "-vf", r"select='lt(mod(n\,10)\,7)'",
                    "-fps_mode", "vfr", "-frames:v", str(FRAMES), "-c:v", "libx264", "-preset", "veryfast",
                    "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


@pytest.mark.parametrize("decoder", ["pyav", "opencv"])
def test_the_timestamps_of_a_variable_rate_file_are_not_taken_for_lost_frames(tmp_path: Path, daemon_process,
                                                                              decoder: str) -> None:
    video = variable_rate(tmp_path / "phone.mp4")
    config, zmq_port, _ = file_config(tmp_path, video, decoder=decoder)
    daemon, subscriber = run_to_the_end(daemon_process, config, zmq_port)
    assert daemon.wait(60) == 0, daemon.stderr
    assert assert_every_frame_accounted(subscriber) == len(subscriber.labels) == FRAMES


def rotated(path: Path, degrees: int = 90) -> Path:
    """An H.264 MP4 whose display matrix turns it ``degrees`` (a phone's portrait video): ffmpeg >= 6 sets it
    with ``-display_rotation``, older ones from the ``rotate`` tag when copying."""
    stored = h264(path.with_name(f"stored-{path.name}"), frames=50)
    version = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split()[2]
    major = re.match(r"n?(\d+)\.", version)  # 5.1.9-0+deb12u1, n7.1 (a git build's: no number, taken as >= 6)
    modern = major is None or int(major.group(1)) >= 6
    turn = ["-display_rotation", str(degrees), "-i", str(stored)] if modern else \
        ["-i", str(stored), "-metadata:s:v:0", f"rotate={degrees}"]
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *turn, "-c", "copy", str(path)],
                   check=True)
    matrix = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream_side_data=rotation", "-of",
                             "csv=p=0", str(path)], capture_output=True, text=True, check=True).stdout
    assert matrix.strip() and round(float(matrix)) % 360 in (degrees % 360, -degrees % 360), \
        f"no display matrix written: {matrix!r}"
    return path


def frames_of(config: FileSourceConfig) -> tuple[set[tuple[int, int]], np.ndarray]:
    """The frame sizes a source delivers, and its frames shrunk to a 64x64 model's pixels."""
    source = create_source(config)
    source.open()
    shrink = FrameShrinker(info_for((64, 64), 0.875))
    sizes, pixels = set(), []
    while (frame := source.read()) is not None:
        sizes.add(frame.size_hw)
        pixels.append(shrink(frame.image))
    source.close()
    return sizes, np.stack(pixels).astype(int)


@pytest.mark.parametrize(("degrees", "rotation"), [(90, "auto"), (180, "auto"), (270, "auto"), (90, "ignore")])
def test_both_decoders_turn_a_rotated_video_alike_or_leave_it_as_stored(tmp_path: Path, degrees: int,
                                                                         rotation: str) -> None:
    video = rotated(tmp_path / "portrait.mp4", degrees)
    pyav_sizes, pyav = frames_of(FileSourceConfig(id="a", path=video, decoder="pyav", rotation=rotation))
    opencv_sizes, opencv = frames_of(FileSourceConfig(id="a", path=video, decoder="opencv", rotation=rotation))
    expected = {(320, 240)} if rotation == "auto" and degrees != 180 else {(240, 320)}
    assert pyav_sizes == opencv_sizes == expected, f"before: pyav {pyav_sizes}, opencv {opencv_sizes}"
    difference = np.abs(pyav - opencv)
    assert difference.mean() < 1.5 and np.percentile(difference, 99) <= 12, "the same pictures, the same way up"
    if rotation == "auto":  # (and not both as stored: upside down is the same size)
        _, stored = frames_of(FileSourceConfig(id="a", path=video, decoder="pyav", rotation="ignore"))
        assert np.abs(pyav - stored).mean() > 10


def test_a_rotated_video_is_classified_upright_and_alike_under_either_decoder(tmp_path: Path,
                                                                              daemon_process) -> None:
    """A pixel ROI that fits the frame as displayed (240 wide, 320 high), not as stored (320 x 240): each
    decoder reads every frame through it, and both give each frame the same label."""
    video = rotated(tmp_path / "portrait.mp4")
    labels = {}
    for decoder in ("pyav", "opencv"):
        config, zmq_port, _ = file_config(tmp_path, video, decoder=decoder)
        config = config.replace(f'decoder = "{decoder}"\n',
                                f'decoder = "{decoder}"\nroi = {{ x = 0, y = 160, width = 240, height = 160 }}\n')
        daemon, subscriber = run_to_the_end(partial(daemon_process, name=decoder), config, zmq_port)
        assert daemon.wait(60) == 0, daemon.stderr
        end = subscriber.statuses[-1]
        assert end["state"] == "ended" and len(subscriber.labels) == 50, f"before ({decoder}): {end['detail']}"
        labels[decoder] = [(m["frame_index"], m["top_k"][0]["label"]) for _, m in subscriber.labels]
    assert labels["pyav"] == labels["opencv"]
