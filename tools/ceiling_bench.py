"""``nfnet-ceiling``: how close the daemon comes to decoding alone, on H.264 video it makes itself.

On a GPU box the engine is fast, so what bounds the daemon is the CPU work around it. This measures, for
each case (streams x resolution), in one run and interleaved so that drift in machine load hits all alike:

- ``decode``: OpenCV decoding alone as a user gets it, one thread per stream (each stream its own
  ``VideoCapture`` with OpenCV's defaults); the reference the daemon is measured against;
- ``decode (daemon's threads)``: the same with FFmpeg's decoding threads as the daemon sets them (the
  cores shared among the streams, ``pipeline.decode_threads``);
- ``decode+preprocess``: that plus the daemon's preprocessing of every frame (its capture-thread shrink
  and its batcher's normalisation into a batch row);
- ``daemon, opencv``: the whole daemon with the bundled small model (so the engine costs next to nothing),
  its files decoded by OpenCV (``decoder = "opencv"``), in a process of its own, from ready to its last
  label published; and that process's peak resident memory;
- ``daemon, pyav``: the same with the files decoded by PyAV (``decoder = "pyav"``, the default: planes
  shrunk before their conversion).

Reports frames/s (all streams together) and daemon/decode for either decoder. The videos are ffmpeg's
``testsrc2`` encoded with libx264 ``veryfast`` (needs the ``ffmpeg`` program: ``apt install ffmpeg``).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from pipelines.model_info import ModelInfo, read_model_info
from pipelines.preprocess import FrameShrinker, Normaliser
from pipelines.sources.opencv import decode_threads_per_stream
from tools.benchmark import DEFAULT_MODEL, run_daemon

DEFAULT_CASES = "1x1920x1080,1x1280x720,4x1280x720,4x1920x1080"


@dataclass(frozen=True)
class Case:
    streams: int
    width: int
    height: int

    @classmethod
    def parse(cls, text: str) -> Case:
        """``4x1280x720``: 4 streams of 1280x720."""
        try:
            streams, width, height = (int(part) for part in text.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected STREAMSxWIDTHxHEIGHT, e.g. 4x1280x720") from None
        return cls(streams, width, height)

    def __str__(self) -> str:
        return f"{self.streams} x {self.width}x{self.height}"


@dataclass
class CaseResult:
    case: str
    frames: int  # all streams together
    # the best of the repeats so far, each kind
    decode_fps: float = 0.0
    decode_daemon_threads_fps: float = 0.0
    decode_preprocess_fps: float = 0.0
    daemon_fps: float = 0.0
    daemon_peak_rss_mb: float = 0.0
    daemon_pyav_fps: float = 0.0
    daemon_pyav_peak_rss_mb: float = 0.0

    @property
    def ratio(self) -> float:
        return self.daemon_fps / self.decode_fps

    @property
    def pyav_ratio(self) -> float:
        return self.daemon_pyav_fps / self.decode_fps


def make_h264(path: Path, width: int, height: int, frames: int) -> Path:
    """``frames`` of ffmpeg's test pattern at 30 frames/s, H.264 (libx264 veryfast, yuv420p) in MP4."""
    if shutil.which("ffmpeg") is None:
        raise SystemExit("nfnet-ceiling: needs the ffmpeg program to make its H.264 videos (apt install ffmpeg)")
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
                    "-i", f"testsrc2=size={width}x{height}:rate=30", "-frames:v", str(frames),
                    "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


def _per_stream(streams: int, work: Callable[[], int]) -> float:
    """Run ``work`` (returns frames done) in one thread per stream; frames/s of all together."""
    counts: list[int] = []
    threads = [threading.Thread(target=lambda: counts.append(work())) for _ in range(streams)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - start)


def _capture(video: Path, threads: int) -> cv2.VideoCapture:
    return cv2.VideoCapture(str(video), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, threads] if threads else [])


def decode_fps(video: Path, streams: int, threads: int = 0) -> float:
    """Decoding alone; ``threads``: FFmpeg's threads per stream (0: OpenCV's default)."""
    def decode() -> int:
        capture, frames = _capture(video, threads), 0
        while capture.read()[0]:
            frames += 1
        capture.release()
        return frames

    return _per_stream(streams, decode)


def decode_preprocess_fps(video: Path, streams: int, threads: int, info: ModelInfo) -> float:
    def decode_and_preprocess() -> int:
        capture, frames = _capture(video, threads), 0
        shrink, normalise = FrameShrinker(info), Normaliser(info)
        row = np.empty(info.input_size, np.float32)
        while True:
            ok, image = capture.read()
            if not ok:
                break
            normalise(shrink(image), row)
            frames += 1
        capture.release()
        return frames

    return _per_stream(streams, decode_and_preprocess)


def _daemon_run(model: str, video: str, streams: int, frames: int, decoder: str,
                result: multiprocessing.Queue) -> None:
    """In a process of its own: the daemon on ``streams`` copies of ``video``; frames/s and peak RSS."""
    logging.basicConfig(level=logging.WARNING)
    code, published, seconds = run_daemon(
        model,
        # One thread is all the small model needs (ONNX Runtime's default, a thread per core, spends more
        # in hand-offs than it saves): the engine stays the small cost it would be on a GPU.
        {"onnxruntime": {"intra_op_threads": 1}},
        [{"id": f"s{i}", "path": video, "decoder": decoder} for i in range(streams)])
    if code != 0 or published != frames:
        result.put({"error": f"the daemon exited with {code} after publishing {published} of {frames} frames"})
        return
    result.put({"fps": frames / seconds,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def daemon_fps(model: Path, video: Path, streams: int, frames: int, decoder: str = "opencv") -> tuple[float, float]:
    """The whole daemon's frames/s and its process's peak resident memory (MB)."""
    context = multiprocessing.get_context("spawn")
    result: multiprocessing.Queue = context.Queue()
    process = context.Process(target=_daemon_run, args=(str(model), str(video), streams, frames, decoder, result))
    process.start()
    outcome = result.get(timeout=600)
    process.join()
    if "error" in outcome:
        raise RuntimeError(outcome["error"])
    return outcome["fps"], outcome["peak_rss_mb"]


def run(cases: list[Case], frames: int, repeats: int, model: Path) -> list[CaseResult]:
    info = read_model_info(model)
    results = {case: CaseResult(str(case), case.streams * frames) for case in cases}
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as scratch:
        videos = {(case.width, case.height): None for case in cases}
        for width, height in videos:
            videos[(width, height)] = make_h264(Path(scratch) / f"{width}x{height}.mp4", width, height, frames)
        for _ in range(repeats):  # interleaved; the best of each kind counts
            for case in cases:
                video = videos[(case.width, case.height)]
                assert video is not None
                result = results[case]
                threads = decode_threads_per_stream(case.streams, None, cores)
                result.decode_fps = max(result.decode_fps, decode_fps(video, case.streams))
                result.decode_daemon_threads_fps = max(result.decode_daemon_threads_fps,
                                                       decode_fps(video, case.streams, threads))
                result.decode_preprocess_fps = max(result.decode_preprocess_fps,
                                                   decode_preprocess_fps(video, case.streams, threads, info))
                fps, peak_mb = daemon_fps(model, video, case.streams, case.streams * frames)
                result.daemon_fps = max(result.daemon_fps, fps)
                result.daemon_peak_rss_mb = max(result.daemon_peak_rss_mb, peak_mb)
                fps, peak_mb = daemon_fps(model, video, case.streams, case.streams * frames, "pyav")
                result.daemon_pyav_fps = max(result.daemon_pyav_fps, fps)
                result.daemon_pyav_peak_rss_mb = max(result.daemon_pyav_peak_rss_mb, peak_mb)
    return list(results.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nfnet-ceiling", description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=DEFAULT_CASES,
                        help=f"comma-separated STREAMSxWIDTHxHEIGHT (default {DEFAULT_CASES})")
    parser.add_argument("--frames", type=int, default=300, help="frames per stream")
    parser.add_argument("--repeats", type=int, default=2, help="measurements of each kind; the best counts")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model (default: the bundled small one)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    cases = [Case.parse(text) for text in args.cases.split(",")]
    results = run(cases, args.frames, args.repeats, args.model)
    if args.json:
        print(json.dumps([{**asdict(r), "ratio": r.ratio, "pyav_ratio": r.pyav_ratio} for r in results]))
        return 0
    print("| input | decode | decode, daemon's threads | decode + preprocess | daemon, opencv | daemon, opencv "
          "/ decode | peak RSS | daemon, pyav | daemon, pyav / decode | peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r.case} | {r.decode_fps:.0f} | {r.decode_daemon_threads_fps:.0f} | {r.decode_preprocess_fps:.0f} "
              f"| {r.daemon_fps:.0f} | {r.ratio:.2f} | {r.daemon_peak_rss_mb:.0f} MB "
              f"| {r.daemon_pyav_fps:.0f} | {r.pyav_ratio:.2f} | {r.daemon_pyav_peak_rss_mb:.0f} MB |")
    print(f"(frames/s, all streams together; {args.frames} frames per stream, best of {args.repeats}; "
          f"{Path(args.model).name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
