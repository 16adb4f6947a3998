"""``nfnet-latency-bench``: end-to-end latency and throughput of live streams at fractions and multiples
of what the pipeline can classify.

First the daemon's capacity is measured (frames/s on a file source, lossless, as ``nfnet-bench`` does).
Then, for each load factor, ``--streams`` camera-paced sources together offer ``load * capacity``
frames/s for ``--seconds``; a ZeroMQ subscriber records every label message. Reported per load: offered
frames/s, what the paced readers managed to read and what was classified, the share dropped (by cause),
latency percentiles (capture start → publish) against one batch's inference time in the same run (the
bound the daemon aims for: p99 within about 3 inference times), and how the process's resident memory
moved between the daemon being ready and the end of the run.

With ``--churn-every S`` one more paced stream, at a fifth of a steady stream's rate (so that the load
stays nearly the same), is added and removed again every S seconds by a reload (SIGHUP) during each run:
the figures, which cover the ``--streams`` steady streams only, then show what streams coming and going
cost the others.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import signal
import socket
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import zmq

from daemon.config import DaemonConfig
from daemon.service import Daemon
from pipelines.engines import EngineConfig
from tools.benchmark import DEFAULT_MODEL, daemon_fps
from tools.make_demo_video import make_video


@dataclass
class LoadResult:
    load: float
    frames_offered: int  # in the videos, all streams
    frames_accounted: int  # published + counted as dropped: equal to frames_offered when nothing is lost
    offered_fps: float
    read_fps: float  # below offered when the readers could not keep up with the paced files (CPU-bound)
    classified_fps: float
    dropped_share: float
    dropped: dict[str, float]
    latency_ms_p50: float
    latency_ms_p90: float
    latency_ms_p99: float
    inference_ms_p50: float  # one batch's inference time, as the frames saw it
    rss_mb: float  # resident memory once the daemon was ready
    rss_growth_mb: float  # from then to the end of the run
    reloads: int  # with churn: reloads during the run (each adds or removes the extra stream)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def _sample_memory(daemon: Daemon, stop: threading.Event, into: list[float], ready_at: list[float]) -> None:
    daemon.ready.wait()
    ready_at.append(time.perf_counter())
    while not stop.is_set():
        into.append(_resident_mb())
        stop.wait(0.25)


class Timing(NamedTuple):
    """What the figures need of one label message (the whole message would make the daemon's process, which
    this benchmark shares, grow by kilobytes a frame and hide the daemon's own memory growth)."""

    stream_id: str
    total_ms: float
    inference_ms: float


def _collect(endpoint: str, stop: threading.Event, into: list[Timing]) -> None:
    context = zmq.Context.instance()
    subscriber = context.socket(zmq.SUB)
    subscriber.setsockopt(zmq.RCVHWM, 0)
    subscriber.setsockopt(zmq.LINGER, 0)
    subscriber.setsockopt_string(zmq.SUBSCRIBE, "")
    subscriber.connect(endpoint)
    while not stop.is_set() or subscriber.poll(200):
        if subscriber.poll(100):
            message = json.loads(subscriber.recv_multipart()[1])
            if message["type"] == "label":
                latency = message["latency_ms"]
                into.append(Timing(message["stream_id"], latency["total"], latency["inference"]))
    subscriber.close()


CHURN_ID = "churn"  # the stream added and removed during a run with churn


def _churn(daemon: Daemon, every_s: float, stop: threading.Event, reloads: list[int]) -> None:
    """Every ``every_s``: a SIGHUP, which adds the extra stream or removes it again (see ``run_load``)."""
    daemon.ready.wait()
    while not stop.wait(every_s):
        reloads.append(1)  # first: the reload reads how many there were
        daemon.request_stop(signal.SIGHUP)


def run_load(model: Path, engine: EngineConfig, video: Path, frames: int, streams: int, load: float,
             offered_fps: float, port: int, churn: tuple[Path, float] | None = None) -> LoadResult:
    """One load's run; ``churn``: a video to add as a stream and remove again every so many seconds."""
    steady = [{"id": f"cam{i}", "path": str(video), "pace": True} for i in range(streams)]
    configs = [DaemonConfig.model_validate({
        "model": {"path": str(model)},
        "engine": engine.model_dump(mode="json"),
        "sources": sources,
        "publish": {"zmq": {"endpoint": f"tcp://127.0.0.1:{port}", "wait_for_subscribers": 1}},
        "metrics": {"enabled": False},
        "pipeline": {"exit_when_sources_end": True},
        "logging": {"level": "warning"},
    }) for sources in (steady, [*steady, {"id": CHURN_ID, "path": str(churn[0] if churn else video), "pace": True}])]
    reloaded: list[int] = []
    messages: list[Timing] = []
    stop = threading.Event()
    collector = threading.Thread(target=_collect, args=(f"tcp://127.0.0.1:{port}", stop, messages))
    collector.start()
    daemon = Daemon(configs[0], reload=lambda: configs[len(reloaded) % 2])
    memory: list[float] = []
    ready_at: list[float] = []
    sampler = threading.Thread(target=_sample_memory, args=(daemon, stop, memory, ready_at), daemon=True)
    sampler.start()
    if churn:
        threading.Thread(target=_churn, args=(daemon, churn[1], stop, reloaded), daemon=True).start()
    code = daemon.run()
    elapsed = time.perf_counter() - ready_at[0]
    stop.set()
    collector.join()
    sampler.join(timeout=1)
    if code != 0:
        raise RuntimeError(f"the daemon exited with {code}")
    dropped: dict[str, float] = {}
    for metric in daemon.metrics.dropped.collect():  # one sample per (stream, cause): add the streams up
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels["stream"] != CHURN_ID:
                dropped[sample.labels["cause"]] = dropped.get(sample.labels["cause"], 0.0) + sample.value
    messages = [m for m in messages if m.stream_id != CHURN_ID]
    totals = np.array([m.total_ms for m in messages])
    inference = np.array([m.inference_ms for m in messages])
    read = len(messages) + sum(dropped.values())
    return LoadResult(
        load=load, frames_offered=frames * streams, frames_accounted=round(read),
        offered_fps=round(offered_fps, 1), read_fps=round(read / elapsed, 1),
        classified_fps=round(len(messages) / elapsed, 1),
        dropped_share=round(sum(dropped.values()) / max(read, 1), 3),
        dropped={cause: count for cause, count in dropped.items() if count},
        latency_ms_p50=round(float(np.percentile(totals, 50)), 1),
        latency_ms_p90=round(float(np.percentile(totals, 90)), 1),
        latency_ms_p99=round(float(np.percentile(totals, 99)), 1),
        inference_ms_p50=round(float(np.percentile(inference, 50)), 1),
        rss_mb=round(memory[0], 1) if memory else 0.0,
        rss_growth_mb=round(memory[-1] - memory[0], 1) if memory else 0.0,
        reloads=len(reloaded),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nfnet-latency-bench", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--engine", choices=["auto", "migraphx", "onnxruntime"], default="auto")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--intra-op-threads", type=int, default=0,
                        help="ONNX Runtime's intra-op threads (0: its default, one per core)")
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--loads", default="0.5,1,3", help="comma-separated multiples of the capacity")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each load's run")
    parser.add_argument("--size", default="640x480", help="frame WIDTHxHEIGHT")
    parser.add_argument("--churn-every", type=float, metavar="S",
                        help="add and remove one more stream every S seconds (by reload) during each run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    engine = EngineConfig(type=args.engine, batch_size=args.batch_size,
                          onnxruntime={"intra_op_threads": args.intra_op_threads})
    width, height = (int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as scratch:
        probe = Path(scratch) / "capacity.mp4"
        make_video(probe, 200, 10, (height, width), 30.0, seed=1)
        capacity = daemon_fps(args.model, engine, probe, 200)
        results = []
        for load in (float(v) for v in args.loads.split(",")):
            # MPEG-4 timebases cannot express arbitrary rates: one decimal is plenty.
            per_stream_fps = round(load * capacity / args.streams, 1)
            video = Path(scratch) / f"load-{load}.mp4"
            frames = max(10, round(per_stream_fps * args.seconds))
            make_video(video, frames, 10, (height, width), per_stream_fps, seed=2)
            churn = None
            if args.churn_every:
                churn_fps = max(1.0, round(per_stream_fps / 5, 1))
                churn = (Path(scratch) / f"churn-{load}.mp4", args.churn_every)
                make_video(churn[0], max(10, round(churn_fps * args.seconds)), 10, (height, width), churn_fps, seed=3)
            results.append(run_load(args.model, engine, video, frames, args.streams, load,
                                    per_stream_fps * args.streams, free_port(), churn))
    if args.json:
        print(json.dumps({"capacity_fps": capacity, "streams": args.streams, "results": [asdict(r) for r in results]}))
        return 0
    churn = f", one more added and removed every {args.churn_every:g}s" if args.churn_every else ""
    print(f"capacity {capacity:.1f} frames/s ({args.model.name}, {args.streams} stream(s){churn}, {width}x{height})")
    print(f"{'load':>5} {'offered':>8} {'read':>6} {'classified':>10} {'dropped':>8} {'p50 ms':>7} {'p90 ms':>7} "
          f"{'p99 ms':>7} {'infer ms':>8} {'p99/inf':>7} {'RSS MB':>7} {'growth':>7}")
    for r in results:
        print(f"{r.load:5.1f} {r.offered_fps:8.1f} {r.read_fps:6.1f} {r.classified_fps:10.1f} {r.dropped_share:8.1%} "
              f"{r.latency_ms_p50:7.1f} {r.latency_ms_p90:7.1f} {r.latency_ms_p99:7.1f} {r.inference_ms_p50:8.1f} "
              f"{r.latency_ms_p99 / max(r.inference_ms_p50, 1e-9):7.1f} {r.rss_mb:7.0f} {r.rss_growth_mb:+7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
