"""Writing real video files from RGB frames (demo video, tests, benchmarks)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np


def write_video(path: Path, frames_rgb: Iterable[np.ndarray], fps: float = 25.0, fourcc: str = "mp4v") -> int:
    """Encode RGB uint8 frames with OpenCV's FFmpeg writer; return how many were written."""
    writer: cv2.VideoWriter | None = None
    count = 0
    try:
        for frame in frames_rgb:
            if writer is None:
                height, width = frame.shape[:2]
                writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
                if not writer.isOpened():
                    raise OSError(f"OpenCV cannot write {fourcc} video to {path}")
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            count += 1
    finally:
        if writer is not None:
            writer.release()
    if count == 0:
        raise ValueError(f"no frames to write to {path}")
    return count
