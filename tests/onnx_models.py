"""Small ONNX models built in the tests with onnx.helper: real models with known answers.

``colour_model`` classifies a frame by its mean colour: logits = W · mean_rgb(normalised input). With
ImageNet normalisation, a pure red/green/blue frame gets its colour's class by a wide margin, so any
BGR/RGB swap or normalisation error shows up as a wrong label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pipelines.model_info import ModelInfo, WeightSource

COLOUR_LABELS = ("red", "green", "blue")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def colour_model_info(input_hw: tuple[int, int] = (32, 32), batch: int | None = None) -> ModelInfo:
    return ModelInfo(
        name="colour_mean",
        input_size=(3, *input_hw),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        interpolation="bilinear",
        crop_pct=1.0,
        crop_mode="center",
        labels=COLOUR_LABELS,
        weights=WeightSource("random", "0", detail="hand-set colour weights in tests/onnx_models.py"),
        batch=batch,
    )


def colour_model(path: Path, info: ModelInfo | None = None, with_metadata: bool = True,
                 shape_derived_pad: bool = False, half_input: bool = False) -> Path:
    """Write the colour classifier to ``path`` and return it.

    ``shape_derived_pad`` adds a zero Pad whose pads are computed from the input's Shape: harmless for
    ONNX Runtime, refused by MIGraphX's parser (pads must be constant), as an unfolded timm export was.
    ``half_input`` declares the input float16 (cast to float32 inside), as a model exported for fp16 I/O.
    """
    info = info or colour_model_info()
    batch_dim: int | str = info.batch if info.batch is not None else "batch"
    # Each class scores its own channel and penalises the other two.
    weights = (np.eye(3, dtype=np.float32) * 3.0 - 1.0).T
    pad_nodes = [
        helper.make_node("Shape", ["input"], ["shape"]),
        helper.make_node("Mul", ["shape", "zero"], ["zeros4"]),
        helper.make_node("Concat", ["zeros4", "zeros4"], ["pads"], axis=0),
        helper.make_node("Pad", ["input", "pads"], ["padded"]),
    ] if shape_derived_pad else []
    cast_nodes = [helper.make_node("Cast", ["input"], ["input_float"], to=TensorProto.FLOAT)] if half_input else []
    image = "padded" if shape_derived_pad else "input_float" if half_input else "input"
    graph = helper.make_graph(
        [
            *pad_nodes,
            *cast_nodes,
            helper.make_node("GlobalAveragePool", [image], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "weights"], ["logits"]),
        ],
        "colour_mean",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT16 if half_input else TensorProto.FLOAT,
                                       [batch_dim, *info.input_size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch_dim, 3])],
        initializer=[numpy_helper.from_array(weights, "weights"),
                     *([numpy_helper.from_array(np.array(0, dtype=np.int64), "zero")] if shape_derived_pad else [])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if with_metadata:
        helper.set_model_props(model, info.to_metadata_props())
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def sidecar_twins(folder: Path) -> tuple[Path, Path]:
    """Two colour models, ``folder/a/colour.onnx`` and ``folder/b/colour.onnx``, whose graphs are the same bytes
    and whose weights, in the sidecar ``colour.onnx.data`` beside each, differ: b's swap red and green."""
    models = []
    for name, order in (("a", [0, 1, 2]), ("b", [1, 0, 2])):
        (folder / name).mkdir(parents=True)
        path = colour_model(folder / name / "colour.onnx")
        model = onnx.load(str(path))
        (weights,) = model.graph.initializer
        weights.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weights)[:, order], "weights"))
        onnx.save_model(model, str(path), save_as_external_data=True, location="colour.onnx.data", size_threshold=0)
        models.append(path)
    return models[0], models[1]
