"""The contract between an exported model and the daemon: what lives in the ONNX ``metadata_props``.

The exporter (``tools/export_onnx.py``) writes these keys; the daemon reads them and derives its
preprocessing from them alone, so a model and the preprocessing it was trained with cannot disagree.
Every value is a JSON document stored as a string under a key prefixed with ``nfnet_stream.``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipelines.paths import file_problem

METADATA_PREFIX = "nfnet_stream."
METADATA_VERSION = 1

Interpolation = Literal["nearest", "bilinear", "bicubic", "area"]
CropMode = Literal["center", "squash"]
Precision = Literal["fp32", "fp16"]
WeightKind = Literal["pretrained", "checkpoint", "random"]


class ModelMetadataError(ValueError):
    """The model file lacks the metadata the daemon needs, or holds values that make no sense."""


@dataclass(frozen=True)
class WeightSource:
    """Where the weights came from, so a published label can be traced to exact weights.

    ``ref`` is the timm pretrained tag for ``pretrained``, the checkpoint's sha256 for ``checkpoint``,
    and the seed (as a string) for ``random``.
    """

    kind: WeightKind
    ref: str
    detail: str = ""

    def describe(self) -> str:
        text = f"{self.kind}:{self.ref}"
        return f"{text} ({self.detail})" if self.detail else text


@dataclass(frozen=True)
class ModelInfo:
    """Everything the daemon needs to know about an exported classifier."""

    name: str
    input_size: tuple[int, int, int]  # (channels, height, width)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: Interpolation
    crop_pct: float
    crop_mode: CropMode
    labels: tuple[str, ...]
    weights: WeightSource
    batch: int | None  # None: dynamic batch axis
    precision: Precision = "fp32"

    def __post_init__(self) -> None:
        _check(len(self.input_size) == 3 and self.input_size[0] == 3, "input_size must be [3, H, W]")
        _check(all(int(v) > 0 for v in self.input_size), "input_size entries must be positive")
        _check(len(self.mean) == 3 and len(self.std) == 3, "mean and std need three values (R, G, B)")
        _check(all(math.isfinite(v) for v in (*self.mean, *self.std)),
               f"mean and std must be finite numbers, got mean {list(self.mean)}, std {list(self.std)}")
        _check(all(s > 0 for s in self.std), "std values must be positive")
        _check(0.0 < self.crop_pct <= 1.0, f"crop_pct must be in (0, 1], got {self.crop_pct}")
        _check(self.interpolation in ("nearest", "bilinear", "bicubic", "area"),
               f"unsupported interpolation {self.interpolation!r}")
        _check(self.crop_mode in ("center", "squash"), f"unsupported crop_mode {self.crop_mode!r}")
        _check(len(self.labels) > 0, "labels must not be empty")
        _check(self.batch is None or self.batch > 0, "batch must be positive or dynamic")
        _check(self.precision in ("fp32", "fp16"), f"unsupported precision {self.precision!r}")

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def height(self) -> int:
        return self.input_size[1]

    @property
    def width(self) -> int:
        return self.input_size[2]

    def to_metadata_props(self) -> dict[str, str]:
        """Serialise to ``metadata_props`` entries (key → JSON string)."""
        values: dict[str, Any] = {
            "version": METADATA_VERSION,
            "name": self.name,
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "crop_mode": self.crop_mode,
            "labels": list(self.labels),
            "weights": {"kind": self.weights.kind, "ref": self.weights.ref, "detail": self.weights.detail},
            "batch": self.batch,
            "precision": self.precision,
        }
        return {METADATA_PREFIX + key: json.dumps(value) for key, value in values.items()}

    @classmethod
    def from_metadata_props(cls, props: dict[str, str], source: str = "model") -> ModelInfo:
        """Parse ``metadata_props``; raise :class:`ModelMetadataError` naming what is missing or bad."""
        values: dict[str, Any] = {}
        for key, raw in props.items():
            if key.startswith(METADATA_PREFIX):
                try:
                    values[key.removeprefix(METADATA_PREFIX)] = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise ModelMetadataError(f"{source}: metadata {key!r} is not valid JSON: {exc}") from exc
        if not values:
            raise ModelMetadataError(
                f"{source}: no '{METADATA_PREFIX}*' metadata; export the model with nfnet-export "
                "so that its preprocessing and labels travel with it"
            )
        version = values.get("version")
        if version != METADATA_VERSION:
            raise ModelMetadataError(
                f"{source}: metadata version {version!r} is not supported (expected {METADATA_VERSION})"
            )
        required = ("name", "input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode",
                    "labels", "weights", "batch")
        missing = [key for key in required if key not in values]
        if missing:
            raise ModelMetadataError(f"{source}: metadata lacks {', '.join(METADATA_PREFIX + k for k in missing)}")
        try:
            weights = values["weights"]
            return cls(
                name=str(values["name"]),
                input_size=tuple(int(v) for v in values["input_size"]),  # type: ignore[arg-type]
                mean=tuple(float(v) for v in values["mean"]),  # type: ignore[arg-type]
                std=tuple(float(v) for v in values["std"]),  # type: ignore[arg-type]
                interpolation=values["interpolation"],
                crop_pct=float(values["crop_pct"]),
                crop_mode=values["crop_mode"],
                labels=tuple(str(v) for v in values["labels"]),
                weights=WeightSource(kind=weights["kind"], ref=str(weights["ref"]),
                                     detail=str(weights.get("detail", ""))),
                batch=None if values["batch"] is None else int(values["batch"]),
                precision=values.get("precision", "fp32"),
            )
        except ModelMetadataError as exc:
            raise ModelMetadataError(f"{source}: {exc}") from exc
        except (TypeError, KeyError, ValueError) as exc:
            raise ModelMetadataError(f"{source}: malformed metadata: {exc}") from exc


def read_model_info(path: str | Path) -> ModelInfo:
    """Read :class:`ModelInfo` from an ONNX file without loading external weight data."""
    import onnx

    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise ModelMetadataError(f"model {problem}")
    if path.stat().st_size == 0:
        raise ModelMetadataError(f"model {path} is empty (0 bytes): not an ONNX model")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several unrelated types on a corrupt file
        raise ModelMetadataError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    props = {entry.key: entry.value for entry in model.metadata_props}
    return ModelInfo.from_metadata_props(props, source=str(path))


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ModelMetadataError(message)


def file_sha256(path: str | Path) -> str:
    """The file's sha256, read once per version of the file (model id and compile cache both need it,
    and a large NFNet is gigabytes)."""
    stat = Path(path).stat()
    return _sha256_of(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_files(path: str | Path) -> list[Path]:
    """The ONNX file and the external data files its initializers name (relative to its folder, as ONNX
    and MIGraphX resolve them), in a stable order; a missing data file is a :class:`ModelMetadataError`."""
    import onnx

    path = Path(path)
    graph = onnx.load(str(path), load_external_data=False).graph
    locations = sorted({entry.value for tensor in graph.initializer
                        if tensor.data_location == onnx.TensorProto.EXTERNAL
                        for entry in tensor.external_data if entry.key == "location"})
    files = [path.parent / location for location in locations]
    missing = [str(file) for file in files if not file.is_file()]
    if missing:
        raise ModelMetadataError(f"{path}: external weight data not found: {', '.join(missing)}")
    return [path, *files]


def model_sha256(path: str | Path) -> str:
    """What the model is made of, hashed: the ONNX file's sha256 when it holds its weights; with weights in
    external data files, a sha256 over every file's name and sha256 (two models whose graphs are the same
    bytes but whose weights differ must not share an id or a compiled program)."""
    files = model_files(path)
    if len(files) == 1:
        return file_sha256(path)
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()


def model_id(path: str | Path, info: ModelInfo) -> str:
    """``name:sha12``: the model's name and the first 12 hex digits of :func:`model_sha256`."""
    return f"{info.name}:{model_sha256(path)[:12]}"
