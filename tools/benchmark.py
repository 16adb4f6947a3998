"""``nfnet-bench``: the bare engine's frames/s against the daemon's end-to-end frames/s, in one run.

Both run the same model with the same engine settings on the same video. The engine figure is
``engine.infer`` on full batches of already-preprocessed frames (no decode, no preprocess, no publish);
the daemon figure is the whole pipeline on a file source, from ready to the last label published.
The ratio daemon / engine says how much the pipeline around the engine costs (target: ≥ 0.9).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2

from daemon.config import DaemonConfig
from daemon.service import Daemon
from pipelines.engines import EngineConfig, create_engine
from pipelines.engines.config import OnnxRuntimeOptions
from pipelines.model_info import ModelInfo, read_model_info
from pipelines.preprocess import Preprocessor
from tools.make_demo_video import make_video

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / "tests" / "assets" / "shapes_nfnet.onnx"


@dataclass
class BenchResult:
    model: str
    video: str
    frames: int
    batch_size: int
    engine_fps: float
    daemon_fps: float

    @property
    def ratio(self) -> float:
        return self.daemon_fps / self.engine_fps


def engine_fps(model: Path, info: ModelInfo, engine_config: EngineConfig, video: Path, frames: int) -> float:
    """Frames/s of ``engine.infer`` alone on full batches made from the video's first frames."""
    engine = create_engine(engine_config, model, info)
    engine.warmup()
    buffers = engine.input_buffers(engine.max_in_flight)  # one per submission in flight, as the pipeline has
    capture = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    preprocess = Preprocessor(info)
    for row in range(engine.batch_size):
        ok, image = capture.read()
        if not ok:
            break
        preprocess(image, buffers[0][row])
    capture.release()
    for buffer in buffers[1:]:
        buffer[:] = buffers[0]
    runs = max(1, frames // engine.batch_size)
    start = time.perf_counter()
    pending: list[Any] = []
    for run in range(runs):  # keep the engine as busy as the pipeline does: max_in_flight submissions
        if len(pending) == engine.max_in_flight:
            engine.result(pending.pop(0))
        pending.append(engine.submit(buffers[run % len(buffers)], engine.batch_size))
    for handle in pending:
        engine.result(handle)
    elapsed = time.perf_counter() - start
    engine.close()
    return runs * engine.batch_size / elapsed


def run_daemon(model: Path | str, engine: dict[str, Any], sources: list[dict[str, Any]]) -> tuple[int, int, float]:
    """The whole daemon, embedded in this process, on file ``sources`` until they end: its exit code, the
    frames it published, and the seconds from ready to its exit (0 if it never became ready)."""
    config = DaemonConfig.model_validate({
        "model": {"path": str(model)},
        "engine": engine,
        "sources": sources,
        "publish": {"zmq": {"endpoint": "tcp://127.0.0.1:*"}},
        "metrics": {"enabled": False},
        "pipeline": {"exit_when_sources_end": True},
    })
    daemon = Daemon(config)
    ready_at: list[float] = []
    threading.Thread(target=lambda: (daemon.ready.wait(), ready_at.append(time.perf_counter())),
                     daemon=True).start()
    code = daemon.run()
    finished = time.perf_counter()
    published = sum(daemon.pipeline.output.published.values()) if daemon.pipeline else 0
    return code, published, finished - ready_at[0] if ready_at else 0.0


def daemon_fps(model: Path, engine_config: EngineConfig, video: Path, frames: int) -> float:
    """Frames/s of the whole daemon, embedded in this process, from ready to its exit."""
    code, published, seconds = run_daemon(model, engine_config.model_dump(mode="json"),
                                          [{"id": "bench", "path": str(video)}])
    if code != 0:
        raise RuntimeError(f"the daemon exited with {code}")
    if published != frames:
        raise RuntimeError(f"the daemon published {published} of {frames} frames")
    return frames / seconds


def run(model: Path, video: Path | None, frames: int, engine_config: EngineConfig, repeats: int) -> BenchResult:
    info = read_model_info(model)
    with tempfile.TemporaryDirectory() as scratch:
        if video is None:
            video = Path(scratch) / "bench.mp4"
            make_video(video, frames, frames_per_class=10, size_hw=(480, 640), fps=30.0, seed=1)
        count = int(cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FRAME_COUNT))
        # Interleave the two measurements so that drift in machine load hits both alike; keep the best.
        engine_runs, daemon_runs = [], []
        for _ in range(repeats):
            engine_runs.append(engine_fps(model, info, engine_config, video, count))
            daemon_runs.append(daemon_fps(model, engine_config, video, count))
    probe = create_engine(engine_config, model, info)
    batch = probe.batch_size
    probe.close()
    return BenchResult(str(model), str(video), count, batch, max(engine_runs), max(daemon_runs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nfnet-bench", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="exported ONNX model")
    parser.add_argument("--video", type=Path, help="video file (default: a synthetic 640x480 video)")
    parser.add_argument("--frames", type=int, default=600, help="frames of the synthetic video")
    parser.add_argument("--engine", choices=["auto", "migraphx", "onnxruntime"], default="auto")
    parser.add_argument("--batch-size", type=int, help="engine batch size (dynamic-batch models)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: default)")
    parser.add_argument("--repeats", type=int, default=2, help="measurements of each kind; the best counts")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    engine_config = EngineConfig(type=args.engine, batch_size=args.batch_size,
                                 onnxruntime=OnnxRuntimeOptions(intra_op_threads=args.threads))
    result = run(args.model, args.video, args.frames, engine_config, args.repeats)
    if args.json:
        print(json.dumps({**asdict(result), "ratio": result.ratio}))
    else:
        print(f"model   {result.model} (batch {result.batch_size})")
        print(f"video   {result.video} ({result.frames} frames)")
        print(f"engine  {result.engine_fps:8.1f} frames/s  (inference only)")
        print(f"daemon  {result.daemon_fps:8.1f} frames/s  (decode → preprocess → infer → publish)")
        print(f"ratio   {result.ratio:8.3f}  (target ≥ 0.9)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
