"""Train the tiny NFNet behind ``tests/assets/shapes_nfnet.onnx`` on synthetic shapes, then export it.

The model is a timm ``NormFreeNet`` (ScaledStdConv2dSame, TF 'same' padding, gamma-in-activation like
``dm_nfnet_*``), so it goes through exactly the fold + export path of the real family. Training and
evaluation images go through timm's own eval transform on PIL images, *not* the daemon's
preprocessing: a daemon that swaps BGR/RGB or normalises differently gets wrong labels from it.

Frames are JPEG round-tripped or blurred at random so the model tolerates the artefacts of the lossy
video files (mp4v) the daemon's tests write. Everything is seeded and runs with a fixed thread count
and deterministic algorithms; a few minutes on 2 CPU cores.

    python -m tools.train_shapes --out tests/assets/shapes_nfnet.onnx [--seed N]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import safetensors.torch
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from timm.models.nfnet import NfCfg, NormFreeNet
from torch import nn

from pipelines.model_info import ModelInfo, WeightSource
from tools.export_onnx import ExportError, export_and_verify, model_info, progress, step
from tools.synthetic_shapes import LABELS, render_frame

MODEL_NAME = "shapes_nfnet"
DATA_CONFIG: dict[str, Any] = {
    "input_size": (3, 64, 64),
    "interpolation": "bilinear",
    "mean": IMAGENET_DEFAULT_MEAN,
    "std": IMAGENET_DEFAULT_STD,
    "crop_pct": 1.0,  # a smaller centre crop could cut the shape
    "crop_mode": "center",
}
MODEL_CFG = NfCfg(
    depths=(1, 1, 1, 1),
    channels=(16, 32, 64, 96),
    stem_type="3x3",
    bottle_ratio=0.5,
    num_features=128,
    attn_layer="se",
    attn_kwargs={"rd_ratio": 0.25},
    gamma_in_act=True,
    same_padding=True,
    act_layer="silu",
)
FRAME_SIDES = (64, 320)  # frame height and width are drawn from this range
TRAIN_FRAMES = 10000
HELD_OUT_FRAMES = 1600
EPOCHS = 12
BATCH_SIZE = 64
LEARNING_RATE = 3e-3
MIN_ACCURACY = 0.99
MAX_SWAPPED_KEPT = 0.05  # BGR-swapped red/blue/yellow frames must (nearly) all get another label
THREADS = 2

Transform = Callable[[Image.Image], torch.Tensor]


def build_model() -> NormFreeNet:
    """The small NormFreeNet, randomly initialised (seed with ``torch.manual_seed`` first)."""
    return NormFreeNet(MODEL_CFG, num_classes=len(LABELS))


def reference_transform(data_config: Mapping[str, Any]) -> Transform:
    """timm's eval transform (PIL RGB image → normalised CHW tensor) for a data config."""
    keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
    return create_transform(**{key: data_config[key] for key in keys}, is_training=False)


def data_config_of(info: ModelInfo) -> dict[str, Any]:
    """The timm data config an exported model's metadata describes."""
    return {
        "input_size": info.input_size,
        "interpolation": info.interpolation,
        "mean": info.mean,
        "std": info.std,
        "crop_pct": info.crop_pct,
        "crop_mode": info.crop_mode,
    }


def render_dataset(
    count: int, seed: int, transform: Transform, *, degrade: bool, swap_channels: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` frames of random sizes, classes balanced, as (images, labels) after ``transform``.

    ``degrade`` applies the training-time JPEG/blur artefacts; ``swap_channels`` feeds BGR frames as if
    they were RGB (the bug the colours are there to catch).
    """
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(count) % len(LABELS))
    images = []
    for label in labels:
        height, width = (int(v) for v in rng.integers(FRAME_SIDES[0], FRAME_SIDES[1] + 1, 2))
        frame = render_frame(int(label), rng, height, width)
        if degrade:
            frame = _degrade(frame, rng)
        if swap_channels:
            frame = np.ascontiguousarray(frame[..., ::-1])
        images.append(transform(Image.fromarray(frame)))
    return torch.stack(images), torch.from_numpy(labels)


def _degrade(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lossy-video-like artefacts: JPEG round trip (with chroma subsampling) and/or a slight blur."""
    if rng.random() < 0.5:
        quality = int(rng.integers(20, 91))
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        frame = cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    if rng.random() < 0.2:
        frame = cv2.GaussianBlur(frame, (3, 3), 0)
    return frame


def train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, seed: int) -> None:
    """AdamW with one-cycle LR; horizontal/vertical flips as free label-preserving augmentation."""
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = len(images) // BATCH_SIZE
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=LEARNING_RATE, total_steps=EPOCHS * steps_per_epoch, pct_start=0.2
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    model.train()
    for epoch in range(EPOCHS):
        start, total_loss = time.perf_counter(), 0.0
        order = torch.randperm(len(images), generator=generator)
        for index in range(steps_per_epoch):
            batch = order[index * BATCH_SIZE : (index + 1) * BATCH_SIZE]
            x = images[batch]
            flips = [dim for dim in (2, 3) if torch.rand(1, generator=generator).item() < 0.5]
            if flips:
                x = x.flip(flips)
            loss = loss_fn(model(x), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item()
        progress(
            f"epoch {epoch + 1}/{EPOCHS}: loss {total_loss / steps_per_epoch:.4f} ({time.perf_counter() - start:.1f} s)"
        )
    model.eval()


def predict_torch(model: nn.Module, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([model(chunk).argmax(1) for chunk in images.split(256)]).numpy()


def predict_onnx(path: Path, images: torch.Tensor) -> np.ndarray:
    """Class indices from ONNX Runtime (CPU) for preprocessed images."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"input": chunk.numpy()})[0].argmax(1) for chunk in images.split(256)])


def state_dict_sha256(model: nn.Module) -> tuple[str, bytes]:
    """The state dict as safetensors bytes (deterministic, unlike torch.save) and their sha256."""
    data = safetensors.torch.save({k: v.contiguous() for k, v in model.state_dict().items()})
    return hashlib.sha256(data).hexdigest(), data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train and export the synthetic-shapes NFNet test model.")
    parser.add_argument("--out", type=Path, required=True, help="output .onnx (tests/assets/shapes_nfnet.onnx)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (held-out data uses seed + 1000)")
    parser.add_argument(
        "--save-checkpoint",
        type=Path,
        metavar="PATH",
        help="also write the trained state dict (.safetensors) whose sha256 the metadata records",
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    transform = reference_transform(DATA_CONFIG)
    started = time.perf_counter()
    with step(f"rendering {TRAIN_FRAMES} training and {HELD_OUT_FRAMES} held-out frames"):
        train_images, train_labels = render_dataset(TRAIN_FRAMES, args.seed, transform, degrade=True)
        test_images, test_labels = render_dataset(HELD_OUT_FRAMES, args.seed + 1000, transform, degrade=True)
        swapped_images, _ = render_dataset(
            HELD_OUT_FRAMES, args.seed + 1000, transform, degrade=True, swap_channels=True
        )
    model = build_model()
    with step(f"training ({sum(p.numel() for p in model.parameters())} parameters)"):
        train(model, train_images, train_labels, args.seed)
    train_seconds = time.perf_counter() - started

    digest, data = state_dict_sha256(model)
    if args.save_checkpoint:
        args.save_checkpoint.write_bytes(data)
    info = model_info(
        MODEL_NAME,
        DATA_CONFIG,
        labels=LABELS,
        weights=WeightSource("checkpoint", digest, detail=f"trained by tools/train_shapes.py seed {args.seed}"),
        batch=None,
    )
    try:
        out, report = export_and_verify(model, info, args.out)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    labels = test_labels.numpy()
    torch_accuracy = float(np.mean(predict_torch(model, test_images) == labels))
    onnx_accuracy = float(np.mean(predict_onnx(out, test_images) == labels))
    swapped = predict_onnx(out, swapped_images)
    sensitive = np.array([not label.startswith("green") for label in LABELS])[labels]
    kept = float(np.mean(swapped[sensitive] == labels[sensitive]))
    print(f"trained in {train_seconds:.0f} s; wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    print(
        f"held-out accuracy ({HELD_OUT_FRAMES} frames, seed {args.seed + 1000}): "
        f"PyTorch {torch_accuracy:.2%}, ONNX Runtime {onnx_accuracy:.2%}"
    )
    print(f"BGR-swapped red/blue/yellow frames still given their true label: {kept:.2%}")
    print(f"export check: {report.describe()}")
    if min(torch_accuracy, onnx_accuracy) < MIN_ACCURACY:
        print(f"error: held-out accuracy below {MIN_ACCURACY:.0%}", file=sys.stderr)
        return 1
    if kept > MAX_SWAPPED_KEPT:
        print(
            f"error: the model ignores colour order (over {MAX_SWAPPED_KEPT:.0%} of swapped frames kept)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
