"""Export timm NFNet-family classifiers to ONNX for the daemon, with their preprocessing and labels.

Pipeline: build the model with exactly one weight source (pretrained tag, checkpoint, or seeded random
init) → fold weight standardization and 'same' padding (:mod:`tools.ws_fold`) → export with the
dynamo-based ``torch.onnx`` exporter (input ``input``, output ``logits``; fp16 keeps float32 I/O) →
embed :class:`~pipelines.model_info.ModelInfo` in ``metadata_props`` → save (weights over 1.5 GiB in a
sidecar) → ``onnx.checker`` and graph checks → parity check of ONNX Runtime (CPU) against the *unfolded*
PyTorch model → move into place, replacing a previous export only now.

Library functions raise :class:`ExportError`; only :func:`main` turns that into one ``error:`` line.
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import getproxies

import numpy as np
import onnx
import onnx_ir as ir
import timm
import torch
from huggingface_hub import constants, try_to_load_from_cache
from timm.data import ImageNetInfo, infer_imagenet_subset, resolve_data_config
from timm.models import get_pretrained_cfg, list_pretrained, load_state_dict
from torch import nn

from pipelines.model_info import (
    ModelInfo,
    ModelMetadataError,
    Precision,
    WeightSource,
    file_sha256,
    model_files,
    read_model_info,
)
from tools.ws_fold import FoldError, fold_weight_standardization

DEFAULT_OPSET = 18  # broadly supported by EPs; GELU exports as its exact Erf form below opset 20
# Verification tolerance on max|onnx - torch| / the spread of PyTorch's logits (max - min), per precision: a
# scale that holds for the small logits of a random init as for a trained model's. Measured on ten family
# members at 64x64 (--random-init): fp32 differs only in the order of sums, at most 9e-7 of the spread, and
# 1e-4 leaves room for larger inputs and trained weights. fp16 errs by 4e-4 to 2.3e-3 of the spread, growing
# with depth (dm_nfnet_f3 the most); 1e-2 is four times that, while a badly wrong output errs by a good part
# of the spread, and even dropping one residual branch moves the logits by 1.4e-2 of it or more (the weakest
# of dm_nfnet_f3's 48; the median branch 4e-2 to 1e-1).
DEFAULT_TOLERANCE: dict[Precision, float] = {"fp32": 1e-4, "fp16": 1e-2}
# Of PyTorch's top 5 classes, ONNX Runtime's top 5 must hold this many on every sample: two near-equal
# classes at the edge of the top 5 may swap.
TOP5_SHARED = 4
# Weights above this many bytes go to a sidecar file: protobuf cannot write a message over 2 GiB, and the
# graph needs room beside its weights (torch's exporter draws the line at the same size). Read at each export.
EXTERNAL_DATA_THRESHOLD = 1536 * 2**20
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
SUPPORTED_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area")
SUPPORTED_CROP_MODES = ("center", "squash")


class ExportError(RuntimeError):
    """The model cannot be built, exported or verified; the message says why and what to do."""


@dataclass(frozen=True)
class VerifyReport:
    """ONNX Runtime vs PyTorch on random inputs.

    A sample's top-1 may differ only on a near-tie: PyTorch's two best classes closer than twice the
    tolerated error, which may swap them (with the error within tolerance, nothing else can differ; the
    check says so in the terms a user sees).
    """

    samples: int
    max_abs_error: float
    spread: float  # max - min of PyTorch's logits over all samples
    tolerance: float  # on max_abs_error / spread
    top1_agreed: int
    top1_near_ties: int  # samples whose top-1 differs on a near-tie
    top5_min_shared: int  # the fewest of PyTorch's top 5 in ONNX Runtime's top 5, over the samples
    top5_required: int  # TOP5_SHARED, or the class count if smaller

    @property
    def scaled_error(self) -> float:
        """Max abs error relative to the spread of the logits."""
        return self.max_abs_error / self.spread

    @property
    def passed(self) -> bool:
        return (
            self.scaled_error <= self.tolerance
            and self.top1_agreed + self.top1_near_ties == self.samples
            and self.top5_min_shared >= self.top5_required
        )

    def describe(self) -> str:
        ties = f" ({self.top1_near_ties} more on near-ties)" if self.top1_near_ties else ""
        return (
            f"{self.samples} samples: max abs error {self.max_abs_error:.3g} ({self.scaled_error:.3g} of the "
            f"logits' spread {self.spread:.3g}, tolerance {self.tolerance:g}), top-1 agreement "
            f"{self.top1_agreed}/{self.samples}{ties}, top 5 sharing at least {self.top5_min_shared} of 5 "
            f"(required {self.top5_required})"
        )


def progress(message: str) -> None:
    """One plain progress line on stderr."""
    print(f"[nfnet-export] {message}", file=sys.stderr, flush=True)


@contextmanager
def step(what: str) -> Iterator[None]:
    """Report the start and duration of a long step."""
    progress(f"{what} ...")
    start = time.perf_counter()
    yield
    progress(f"{what}: done in {time.perf_counter() - start:.1f} s")


# ---------------------------------------------------------------------------------------------- weights


def pretrained_model(name: str, tag: str = "") -> tuple[nn.Module, WeightSource]:
    """timm hub weights for ``name`` (optionally ``tag``); never falls back to random weights."""
    _require_model(name)
    full_name = f"{name}.{tag}" if tag else name
    try:
        cfg = get_pretrained_cfg(full_name)
    except RuntimeError:  # unknown tag
        cfg = None
    if cfg is None or not (cfg.url or cfg.hf_hub_id or cfg.file):
        arch = full_name.split(".")[0]
        known = ", ".join(list_pretrained(f"{arch}.*")) or "none"
        raise ExportError(f"timm has no pretrained weights {full_name} (pretrained tags for {arch}: {known})")
    ref = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    _fail_fast_if_hub_unreachable(ref, cfg.hf_hub_id, cfg.hf_hub_filename)
    try:
        model = timm.create_model(full_name, pretrained=True)
    except Exception as exc:  # hub, network and file errors come in many types
        raise ExportError(
            f"could not load pretrained weights {ref}: {_first_line(exc)}; "
            "offline? download them elsewhere and pass --checkpoint PATH"
        ) from exc
    return model, WeightSource("pretrained", ref, detail=cfg.hf_hub_id or cfg.url or "")


def checkpoint_model(name: str, path: Path, num_classes: int | None = None) -> tuple[nn.Module, WeightSource]:
    """``name`` with weights from a .pth/.pt/.safetensors checkpoint (possibly fine-tuned, own classes).

    Nested ``state_dict``/``model``/``state_dict_ema`` and DDP prefixes are handled by timm's loader
    (EMA weights preferred when present, as timm does). The class count comes from the checkpoint's
    classifier weight; ``num_classes``, if given, must agree.
    """
    if not path.is_file():
        raise ExportError(f"checkpoint not found: {path}")
    model = _create(name)
    try:
        state_dict = load_state_dict(str(path))
    except Exception as exc:  # torch.load / safetensors raise many types on a bad file
        raise ExportError(f"{path}: cannot read checkpoint: {_first_line(exc)}") from exc
    classifier = f"{model.pretrained_cfg.get('classifier', 'head.fc')}.weight"
    if not isinstance(state_dict.get(classifier), torch.Tensor):
        raise ExportError(f"{path}: no classifier weight {classifier!r}; is this a {name} checkpoint?")
    found = int(state_dict[classifier].shape[0])
    if num_classes is not None and num_classes != found:
        raise ExportError(f"--num-classes {num_classes} does not match the checkpoint's classifier ({found} classes)")
    if found != model.num_classes:
        model.reset_classifier(found)
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ExportError(f"{path}: does not fit {name}: {_first_error_detail(exc)}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise ExportError(
            f"{path}: does not fit {name}: {len(result.missing_keys)} missing keys "
            f"{result.missing_keys[:3]}, {len(result.unexpected_keys)} unexpected keys "
            f"{result.unexpected_keys[:3]}"
        )
    return model, WeightSource("checkpoint", file_sha256(path), detail=path.name)


def random_model(name: str, seed: int, num_classes: int | None = None) -> tuple[nn.Module, WeightSource]:
    """``name`` with seeded random weights (for tests, benchmarks): timm's own initialisation under
    ``torch.manual_seed(seed)``, then :func:`randomise_gains` with ``seed``."""
    torch.manual_seed(seed)
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    return randomise_gains(_create(name, **kwargs), seed), WeightSource("random", str(seed))


def randomise_gains(model: nn.Module, seed: int) -> nn.Module:
    """Draw every NFNet gain from U(0.5, 1.5), seeded, so that every residual branch shows in the logits.

    timm starts each residual branch at zero (``skipinit_gain`` 0, or a gain of 0 on the branch's last
    conv): such a model computes only the stem, the shortcuts and the head, so a verification of its export
    checks nothing else, and a compiler may drop the dead branches from a benchmark. The per-channel gains
    of the other convs (1 in timm) are drawn too, so that folding them is checked. Returns ``model`` in
    eval mode.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("skipinit_gain", ".gain")):
                param.copy_(torch.rand(param.shape, generator=generator) + 0.5)
    return model.eval()


def _require_model(name: str) -> None:
    if not timm.is_model(name):
        raise ExportError(f"unknown timm model {name!r}")


def _create(name: str, **kwargs: Any) -> nn.Module:
    """A randomly initialised ``name`` (timm's init)."""
    _require_model(name)
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as exc:  # e.g. an unknown pretrained tag
        raise ExportError(f"cannot create {name}: {_first_line(exc)}") from exc


def _fail_fast_if_hub_unreachable(ref: str, hf_hub_id: str | None, filename: str | None) -> None:
    """Offline, the hub client retries for ~45 s before failing; find out in a second instead."""
    if not hf_hub_id or constants.HF_HUB_OFFLINE or getproxies().get("https"):
        return  # nothing to fetch from the hub, or a proxy a direct connection test would not see
    repo_id = hf_hub_id.split("@")[0]
    candidates = [filename] if filename else ["model.safetensors", "pytorch_model.bin"]
    if any(isinstance(try_to_load_from_cache(repo_id, f), str) for f in candidates):
        return
    endpoint = urlparse(constants.ENDPOINT)
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        raise ExportError(
            f"cannot reach {host} to download {ref} ({exc.strerror or exc}); "
            "offline? download the weights elsewhere and pass --checkpoint PATH"
        ) from exc


# ------------------------------------------------------------------------------------- labels and info


def read_labels(path: Path) -> tuple[str, ...]:
    """Class names from a text file, one per line (blank lines ignored)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ExportError(f"cannot read labels file {path}: {exc.strerror or exc}") from exc
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def resolve_labels(model: nn.Module, labels_file: Path | None) -> tuple[str, ...]:
    """Labels from ``labels_file`` (count must match), else timm's ImageNet names for ImageNet heads."""
    num_classes = int(model.num_classes)
    if labels_file is not None:
        labels = read_labels(labels_file)
        if len(labels) != num_classes:
            raise ExportError(f"{labels_file} has {len(labels)} labels but the model has {num_classes} classes")
        return labels
    subset = infer_imagenet_subset(model)
    if subset is None:
        raise ExportError(f"the model has {num_classes} classes, not an ImageNet head: pass --labels FILE")
    return tuple(ImageNetInfo(subset).label_descriptions())


def data_config_for(model: nn.Module, input_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """timm's test-time data config (test size and test crop_pct), optionally at another input size."""
    args = {} if input_size is None else {"input_size": (3, *input_size)}
    return resolve_data_config(args, model=model, use_test_size=True)


def model_info(
    name: str,
    data_config: dict[str, Any],
    *,
    labels: Sequence[str],
    weights: WeightSource,
    batch: int | None,
    precision: Precision = "fp32",
) -> ModelInfo:
    """:class:`ModelInfo` from a timm data config, refusing preprocessing the daemon cannot reproduce."""
    crop_mode = data_config.get("crop_mode", "center")
    if crop_mode not in SUPPORTED_CROP_MODES:
        raise ExportError(f"crop_mode {crop_mode!r} is not supported by the daemon ({', '.join(SUPPORTED_CROP_MODES)})")
    interpolation = data_config["interpolation"]
    if interpolation not in SUPPORTED_INTERPOLATIONS:
        raise ExportError(
            f"interpolation {interpolation!r} is not supported by the daemon ({', '.join(SUPPORTED_INTERPOLATIONS)})"
        )
    try:
        return ModelInfo(
            name=name,
            input_size=tuple(int(v) for v in data_config["input_size"]),  # type: ignore[arg-type]
            mean=tuple(float(v) for v in data_config["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in data_config["std"]),  # type: ignore[arg-type]
            interpolation=interpolation,
            crop_pct=float(data_config["crop_pct"]),
            crop_mode=crop_mode,
            labels=tuple(labels),
            weights=weights,
            batch=batch,
            precision=precision,
        )
    except ModelMetadataError as exc:
        raise ExportError(str(exc)) from exc


# ------------------------------------------------------------------------------------ export and check


class _Float16Model(nn.Module):
    """Runs ``model`` in fp16 behind float32 input and output, so the daemon always feeds float32."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(torch.float16)).to(torch.float32)


def export_model(model: nn.Module, info: ModelInfo, out_path: str | Path, *, opset: int = DEFAULT_OPSET) -> Path:
    """Fold, export and check ``model`` as described by ``info`` (input size, batch, precision).

    ``model`` is left in eval mode and otherwise untouched. The ONNX file carries ``info`` in its
    ``metadata_props``; a large model's weights go to a sidecar beside it (:func:`save_onnx`). Raises
    :class:`ExportError` if it fails ``onnx.checker`` or :func:`check_graph`.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    with step(f"folding weight standardization at {info.height}x{info.width}"):
        try:
            folded = fold_weight_standardization(model, (info.height, info.width))
        except (FoldError, RuntimeError) as exc:
            raise ExportError(f"cannot prepare {info.name} at {info.height}x{info.width}: {_first_line(exc)}") from exc
    exported = _Float16Model(folded).eval() if info.precision == "fp16" else folded
    example = torch.randn(info.batch or 2, *info.input_size)  # batch 2: torch.export specialises 0 and 1
    dynamic_shapes = None if info.batch else ({0: torch.export.Dim("batch")},)
    with step(f"exporting to ONNX (opset {opset}, {info.precision}, batch {info.batch or 'dynamic'})"):
        try:
            program = torch.onnx.export(
                exported,
                (example,),
                dynamo=True,
                verbose=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=dynamic_shapes,
            )
        except Exception as exc:  # the exporter wraps many error types
            raise ExportError(f"torch.onnx.export failed: {_first_line(exc)}") from exc
        program.model.metadata_props.update(info.to_metadata_props())
        try:
            save_onnx(program.model, out_path)
        except OSError as exc:
            raise ExportError(f"cannot write {out_path}: {exc.strerror or exc}") from exc
    try:
        onnx.checker.check_model(str(out_path))
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{out_path}: onnx.checker: {_first_line(exc)}") from exc
    check_graph(onnx.load(str(out_path), load_external_data=False))
    return out_path


def save_onnx(model: ir.Model, path: Path) -> None:
    """Write ``model`` to ``path``: its weights inline, or, above :data:`EXTERNAL_DATA_THRESHOLD` bytes, in
    one sidecar beside it named after the graph and the sidecar's content, ``<graph name>.<sha12>.data``
    (:func:`sidecar_name`; :func:`export_and_verify` says why)."""
    weight_bytes = sum(value.const_value.nbytes for value in model.graph.initializers.values()
                       if value.const_value is not None)
    if weight_bytes <= EXTERNAL_DATA_THRESHOLD:
        ir.save(model, path)
        return
    unnamed = path.with_name(f"{path.name}.partial.data")
    ir.save(model, path, external_data=unnamed.name)
    sidecar = path.with_name(sidecar_name(path.name, file_sha256(unnamed)))
    unnamed.replace(sidecar)
    graph = onnx.load(str(path), load_external_data=False)
    for tensor in graph.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = sidecar.name
    onnx.save(graph, str(path))


def sidecar_name(graph_name: str, sha256: str) -> str:
    """The name of the weights file of the graph ``graph_name`` whose content has this sha256."""
    return f"{graph_name}.{sha256[:12]}.data"


def _stale_sidecars(graph: Path) -> list[Path]:
    """The sidecars beside ``graph`` named for it (:func:`sidecar_name`) that it does not use."""
    pattern = re.compile(re.escape(graph.name) + r"\.[0-9a-f]{12}\.data")
    used = set(model_files(graph))
    return sorted(path for path in graph.parent.iterdir() if pattern.fullmatch(path.name) and path not in used)


def export_and_verify(
    model: nn.Module,
    info: ModelInfo,
    out_path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    batches: int = 3,
    tolerance: float | None = None,
) -> tuple[Path, VerifyReport]:
    """:func:`export_model` then :func:`verify_export`, replacing ``out_path`` only once both pass.

    The model is written and verified in a folder beside ``out_path`` (``<name>.partial``), then moved in:
    its sidecar first, if it has one, then the graph by one atomic rename. Until that rename the previous
    graph and its weights are untouched and valid, and from it on the new pair is, because a sidecar is
    named after its content (:func:`save_onnx`): the new one cannot overwrite the weights of the previous
    graph unless they are the same bytes. With a fixed name (``X.onnx.data``), the previous graph would
    read the new weights for a moment, or for good after a crash between the renames. Once the new graph
    is in place, the sidecars of earlier exports to ``out_path`` are removed. A failed export removes
    its folder and touches nothing else.
    """
    out_path = Path(out_path)
    staging = out_path.with_name(f"{out_path.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)  # left by an export that was killed
    try:
        staged = export_model(model, info, staging / out_path.name, opset=opset)
        with step("verifying with ONNX Runtime"):
            report = verify_export(model, staged, batches=batches, tolerance=tolerance)
        try:
            for file in reversed(model_files(staged)):  # the sidecar first, the graph last
                file.replace(out_path.with_name(file.name))
        except OSError as exc:
            raise ExportError(f"cannot write {out_path}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for stale in _stale_sidecars(out_path):
        stale.unlink(missing_ok=True)
    return out_path, report


def check_graph(onnx_model: onnx.ModelProto) -> None:
    """Raise :class:`ExportError` on nodes that break inference EPs.

    Forbidden: any BatchNormalization (unfolded weight standardization), any node with a non-zero
    ``training_mode`` attribute, and any Pad whose pads are computed at run time (e.g. from Shape)
    rather than a constant or initializer (dynamic 'same' padding).
    """
    graph = onnx_model.graph
    constants = {init.name for init in graph.initializer}
    constants.update(out for node in graph.node if node.op_type == "Constant" for out in node.output)
    problems: list[str] = []
    for node in graph.node:
        label = f"{node.op_type} {node.name or '(unnamed)'}"
        if node.op_type == "BatchNormalization":
            problems.append(f"{label}: BatchNormalization left in the graph")
        if any(attr.name == "training_mode" and attr.i != 0 for attr in node.attribute):
            problems.append(f"{label}: training_mode is set")
        if node.op_type == "Pad" and len(node.input) > 1 and node.input[1] not in constants:
            problems.append(f"{label}: pads computed at run time ({node.input[1]!r})")
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ExportError(f"graph check failed: {'; '.join(problems[:3])}{more}")


def verify_export(
    model: nn.Module,
    onnx_path: str | Path,
    *,
    batches: int = 3,
    tolerance: float | None = None,
    seed: int = 0,
) -> VerifyReport:
    """Compare ONNX Runtime (CPU) with ``model`` (float32, eval) on ``batches`` random input batches.

    Dynamic-batch models are run with varying batch sizes. Raises :class:`ExportError` if the metadata
    is unreadable, the I/O does not match the contract, or the outputs differ (:func:`compare_logits`, with
    ``tolerance`` or else :data:`DEFAULT_TOLERANCE` for the model's precision; :attr:`VerifyReport.passed`).
    """
    import onnxruntime as ort

    try:
        info = read_model_info(onnx_path)
    except ModelMetadataError as exc:
        raise ExportError(str(exc)) from exc
    tolerance = DEFAULT_TOLERANCE[info.precision] if tolerance is None else tolerance
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    io_names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    if io_names != ([INPUT_NAME], [OUTPUT_NAME]):
        raise ExportError(f"{onnx_path}: graph I/O is {io_names}, expected ([{INPUT_NAME!r}], [{OUTPUT_NAME!r}])")
    model = model.eval()
    param = next(model.parameters())
    generator = torch.Generator().manual_seed(seed)
    references, actuals = [], []
    for index in range(batches):
        size = info.batch or (1 + index % 3)
        x = torch.randn(size, *info.input_size, generator=generator)
        with torch.no_grad():
            references.append(model(x.to(device=param.device, dtype=torch.float32)).float().cpu().numpy())
        (actual,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
        if actual.shape != (size, info.num_classes):
            raise ExportError(f"{onnx_path}: output shape {actual.shape}, expected {(size, info.num_classes)}")
        actuals.append(actual)
    report = compare_logits(np.concatenate(references), np.concatenate(actuals), tolerance)
    if not report.passed:
        raise ExportError(f"ONNX Runtime does not match PyTorch: {report.describe()}")
    return report


def compare_logits(reference: np.ndarray, actual: np.ndarray, tolerance: float) -> VerifyReport:
    """:class:`VerifyReport` of ``actual`` against ``reference`` logits, both (samples, classes)."""
    spread = float(reference.max() - reference.min())
    if not spread > 0:
        raise ExportError(f"PyTorch's logits are all {reference.flat[0]:g}: no comparison can tell a good export "
                          "from a bad one")
    top5 = min(5, reference.shape[1])
    ranked = np.argsort(-reference, axis=1, kind="stable")
    ranked_actual = np.argsort(-actual, axis=1, kind="stable")
    rows = np.arange(len(reference))
    agreed = ranked_actual[:, 0] == ranked[:, 0]
    lead = reference[rows, ranked[:, 0]] - reference[rows, ranked[:, 1]] if reference.shape[1] > 1 else np.inf
    near_tie = ~agreed & (lead <= 2 * tolerance * spread)
    shared = [len(set(mine[:top5]) & set(theirs[:top5])) for mine, theirs in zip(ranked_actual, ranked, strict=True)]
    return VerifyReport(
        samples=len(reference),
        max_abs_error=float(np.abs(actual - reference).max()),
        spread=spread,
        tolerance=tolerance,
        top1_agreed=int(agreed.sum()),
        top1_near_ties=int(near_tie.sum()),
        top5_min_shared=min(shared),
        top5_required=min(TOP5_SHARED, top5),
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _first_error_detail(exc: BaseException) -> str:
    """torch's load_state_dict error puts the useful part on the second line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[1] if len(lines) > 1 else _first_line(exc)


# ------------------------------------------------------------------------------------------------- CLI


CLI_EXAMPLES = """\
examples (the model name goes first: --pretrained takes an optional TAG):
  nfnet-export dm_nfnet_f0 --pretrained --out dm_nfnet_f0.onnx
  nfnet-export eca_nfnet_l0 --pretrained ra2_in1k --dynamic-batch --fp16 --out eca_l0_fp16.onnx
  nfnet-export dm_nfnet_f0 --checkpoint finetuned.safetensors --labels classes.txt --out mine.onnx
  nfnet-export nf_regnet_b1 --random-init --seed 1 --input-size 128 --batch 8 --out bench.onnx
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nfnet-export",
        description="Export a timm NFNet-family classifier to ONNX for the daemon (weight standardization "
        "folded, static padding, preprocessing and labels in the metadata), then verify it "
        "against PyTorch with ONNX Runtime.",
        epilog=CLI_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="timm model name, optionally with a pretrained tag (dm_nfnet_f0.dm_in1k)")
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument(
        "--pretrained",
        nargs="?",
        const="",
        metavar="TAG",
        help="timm hub weights (needs internet or a warm cache), optionally of TAG",
    )
    weights.add_argument(
        "--checkpoint",
        type=Path,
        metavar="PATH",
        help=".pth/.pt/.safetensors checkpoint, e.g. fine-tuned on your own classes",
    )
    weights.add_argument(
        "--random-init",
        action="store_true",
        help="seeded random weights (tests, benchmarks): timm's init with every gain drawn from U(0.5, 1.5), so "
        "that the residual branches timm starts at zero are live and verified",
    )
    parser.add_argument("--seed", type=int, help="seed for --random-init (default 0)")
    parser.add_argument("--num-classes", type=int, help="class count (checked against a checkpoint's classifier)")
    parser.add_argument("--labels", type=Path, metavar="FILE", help="class names, one per line")
    parser.add_argument(
        "--input-size",
        type=int,
        nargs="+",
        metavar="N",
        help="H [W] (or 3 H W); default: the model's test size",
    )
    batch = parser.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=int, default=1, help="static batch size (default 1)")
    batch.add_argument("--dynamic-batch", action="store_true", help="dynamic batch axis")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--fp16", action="store_true", help="fp16 weights and compute, float32 input/output")
    parser.add_argument(
        "--tolerance",
        type=float,
        help="max |onnx-torch| / (max - min of the PyTorch logits) (default: "
        + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_TOLERANCE.items())
        + ")",
    )
    parser.add_argument("--verify-batches", type=int, default=3, help="random batches to verify (default 3)")
    parser.add_argument("--out", type=Path, required=True, metavar="PATH", help="output .onnx file")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0 ok, 1 export/verify failure, 2 usage error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed the usage error (or the help)
        return int(exc.code or 0)
    try:
        input_size = _parse_input_size(args.input_size)
        if args.seed is not None and not args.random_init:
            raise ExportError("--seed only applies to --random-init")
        if args.num_classes is not None and args.pretrained is not None:
            raise ExportError("--num-classes cannot be used with --pretrained (the head would be random)")
        if args.batch < 1 or args.verify_batches < 1:
            raise ExportError("--batch and --verify-batches must be at least 1")
        with step(f"building {args.model}"):
            if args.pretrained is not None:
                model, weights = pretrained_model(args.model, args.pretrained)
            elif args.checkpoint is not None:
                model, weights = checkpoint_model(args.model, args.checkpoint, args.num_classes)
            else:
                model, weights = random_model(args.model, args.seed or 0, args.num_classes)
        info = model_info(
            args.model.split(".")[0],
            data_config_for(model, input_size),
            labels=resolve_labels(model, args.labels),
            weights=weights,
            batch=None if args.dynamic_batch else args.batch,
            precision="fp16" if args.fp16 else "fp32",
        )
        out, report = export_and_verify(
            model, info, args.out, opset=args.opset, batches=args.verify_batches, tolerance=args.tolerance
        )
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    files = " + ".join(f"{file} ({file.stat().st_size / 1e6:.1f} MB)" for file in model_files(out))
    print(
        f"wrote {files}: {info.name} {info.height}x{info.width} "
        f"{info.precision} batch {info.batch or 'dynamic'}, {info.num_classes} classes, "
        f"weights {info.weights.describe()}"
    )
    print(
        f"preprocessing: {info.interpolation} resize, crop {info.crop_mode} {info.crop_pct:g}, "
        f"mean {info.mean}, std {info.std}"
    )
    print(f"verified: {report.describe()}")
    return 0


def _parse_input_size(values: list[int] | None) -> tuple[int, int] | None:
    if values is None:
        return None
    if len(values) == 3 and values[0] == 3:
        values = values[1:]
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 16:
        raise ExportError("--input-size takes H [W] (or 3 H W), each at least 16")
    return values[0], values[1]


if __name__ == "__main__":
    sys.exit(main())
