"""Make a video of synthetic shapes whose true class changes every few frames, with its truth file.

The truth file has one label per line, frame by frame, so that a demo run or a test can count how
many published labels are right. ``python -m tools.make_demo_video`` writes the bundled demo video.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tools.synthetic_shapes import LABELS, render_frame
from tools.video_files import write_video


def class_sequence(frames: int, frames_per_class: int, seed: int) -> list[int]:
    """Classes for ``frames`` frames: runs of ``frames_per_class``, each class in a shuffled cycle."""
    rng = np.random.default_rng(seed)
    sequence: list[int] = []
    while len(sequence) < frames:
        for cls in rng.permutation(len(LABELS)):
            sequence.extend([int(cls)] * frames_per_class)
    return sequence[:frames]


def shape_frames(classes: list[int], size_hw: tuple[int, int], seed: int) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    for cls in classes:
        yield render_frame(cls, rng, *size_hw)


def make_video(out: Path, frames: int, frames_per_class: int, size_hw: tuple[int, int], fps: float,
               seed: int) -> list[str]:
    """Write the video to ``out`` and its truth to ``out`` + ``.labels.txt``; return the truth."""
    classes = class_sequence(frames, frames_per_class, seed)
    write_video(out, shape_frames(classes, size_hw, seed), fps=fps)
    truth = [LABELS[c] for c in classes]
    truth_path(out).write_text("\n".join(truth) + "\n")
    return truth


def truth_path(video: Path) -> Path:
    return video.with_name(video.name + ".labels.txt")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tests/assets/demo_shapes.mp4"))
    parser.add_argument("--frames", type=int, default=240)
    parser.add_argument("--frames-per-class", type=int, default=10)
    parser.add_argument("--size", default="160x120", help="WIDTHxHEIGHT")
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    make_video(args.out, args.frames, args.frames_per_class, (height, width), args.fps, args.seed)
    print(f"wrote {args.out} ({args.frames} frames, {width}x{height}) and {truth_path(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
