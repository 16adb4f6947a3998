"""The NFNet → ONNX exporter: weight-standardization folding, graph hygiene, parity, metadata, CLI."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import safetensors.torch
import timm
import torch
from onnx import TensorProto, helper
from timm.layers import ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d, StdConv2dSame
from timm.layers.pool2d_same import AvgPool2dSame, MaxPool2dSame
from timm.models.nfnet import NfCfg, NormFreeBlock, NormFreeNet
from torch import nn

import tools.export_onnx as export_onnx
from pipelines.model_info import ModelInfo, WeightSource, model_files, read_model_info
from tests.nfnet_models import exercise_all_branches, random_biases_and_large_logits
from tools.export_onnx import (
    ExportError,
    check_graph,
    compare_logits,
    data_config_for,
    export_model,
    main,
    model_info,
    random_model,
    resolve_labels,
    verify_export,
)
from tools.ws_fold import STD_CONV_TYPES, fold_weight_standardization

TINY_SAME_CFG = NfCfg(  # dm_nfnet-style (same padding, gamma in act, skipinit, SE), but tiny
    depths=(1, 1, 1, 1),
    channels=(16, 24, 32, 48),
    stem_type="deep_quad",
    stem_chs=16,
    group_size=8,
    extra_conv=True,
    gamma_in_act=True,
    same_padding=True,
    skipinit=True,
    num_features=64,
    act_layer="gelu",
    attn_layer="se",
    attn_kwargs={"rd_ratio": 0.5},
)


def op_types(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}


def assert_inference_friendly(path: Path) -> None:
    """Independent of check_graph: no batch norm, no training_mode, every Pad's pads a constant."""
    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {init.name for init in graph.initializer}
    constants |= {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    for node in graph.node:
        assert node.op_type != "BatchNormalization", node.name
        assert "training_mode" not in {attr.name for attr in node.attribute}, node.name
        if node.op_type == "Pad":
            assert node.input[1] in constants, f"{node.name}: pads from {node.input[1]}"


# ------------------------------------------------------------------------------------------- folding


@pytest.mark.parametrize("input_hw", [(64, 64), (72, 88), (67, 53)])
def test_fold_matches_same_padded_nfnet_exactly(input_hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = exercise_all_branches(NormFreeNet(TINY_SAME_CFG, num_classes=10))
    assert any(isinstance(m, ScaledStdConv2dSame) and m.same_pad for m in model.modules())
    folded = fold_weight_standardization(model, input_hw)

    assert not any(isinstance(m, STD_CONV_TYPES) for m in folded.modules())
    assert any(isinstance(m, ScaledStdConv2dSame) for m in model.modules()), "the original must be untouched"
    x = torch.randn(3, 3, *input_hw)
    with torch.no_grad():
        expected, actual = model(x), folded(x)
    assert expected.abs().max() > 0.1, "the test model must produce non-trivial logits"
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_fold_makes_dilated_same_avg_pool_static() -> None:
    """output_stride=8 turns stride into dilation, and NFNet's downsampling into AvgPool2dSame."""
    torch.manual_seed(1)
    model = exercise_all_branches(NormFreeNet(TINY_SAME_CFG, num_classes=5, output_stride=8))
    assert any(isinstance(m, AvgPool2dSame) for m in model.modules())
    folded = fold_weight_standardization(model, (45, 50))
    assert not any(isinstance(m, AvgPool2dSame) for m in folded.modules())
    x = torch.randn(2, 3, 45, 50)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("input_hw", [(31, 32), (40, 41)])
def test_fold_handles_plain_std_convs_and_same_max_pool(input_hw: tuple[int, int]) -> None:
    torch.manual_seed(2)
    model = nn.Sequential(
        MaxPool2dSame(3, stride=2),
        StdConv2d(3, 8, 3, stride=2),
        StdConv2dSame(8, 8, 3, stride=2, bias=True),
        ScaledStdConv2d(8, 4, 1, gain_init=0.7),
    ).eval()
    folded = fold_weight_standardization(model, input_hw)
    assert not any(isinstance(m, (*STD_CONV_TYPES, MaxPool2dSame)) for m in folded.modules())
    x = torch.randn(2, 3, *input_hw) - 3.0  # all but negative: padding the max pool with zeros would show
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------- graph checks


def _graph_with(nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
        initializer=initializers,
    )
    return helper.make_model(graph)


def test_check_graph_accepts_constant_pads() -> None:
    pads = helper.make_tensor("pads", TensorProto.INT64, [8], [0, 0, 0, 0, 0, 0, 1, 1])
    check_graph(_graph_with([helper.make_node("Pad", ["input", "pads"], ["logits"])], [pads]))


def test_check_graph_rejects_shape_derived_pads() -> None:
    nodes = [
        helper.make_node("Shape", ["input"], ["shape"]),
        helper.make_node("Concat", ["shape", "shape"], ["pads"], axis=0),
        helper.make_node("Pad", ["input", "pads"], ["logits"], name="same_pad"),
    ]
    with pytest.raises(ExportError, match="same_pad: pads computed at run time"):
        check_graph(_graph_with(nodes, []))


def test_check_graph_rejects_batch_norm_in_training_mode() -> None:
    params = [helper.make_tensor(n, TensorProto.FLOAT, [3], [1.0, 1.0, 1.0]) for n in ("s", "b", "m", "v")]
    node = helper.make_node("BatchNormalization", ["input", "s", "b", "m", "v"], ["logits"], training_mode=1)
    with pytest.raises(ExportError, match=r"BatchNormalization left in the graph; .*training_mode is set"):
        check_graph(_graph_with([node], params))


def test_unfolded_weight_standardization_fails_the_graph_check(tmp_path: Path) -> None:
    """Why folding exists: exported as is, a std conv becomes a training-mode BatchNormalization
    (the exporter's constant folding only hides it for tiny weights)."""
    model = nn.Sequential(ScaledStdConv2d(32, 64, 3)).eval()
    torch.onnx.export(model, (torch.randn(1, 32, 8, 8),), tmp_path / "raw.onnx", dynamo=True, verbose=False)
    with pytest.raises(ExportError, match="BatchNormalization"):
        check_graph(onnx.load(str(tmp_path / "raw.onnx")))


# ----------------------------------------------------------------------- family members, end to end


@dataclass
class Exported:
    model: nn.Module
    info: ModelInfo
    path: Path
    report: export_onnx.VerifyReport


FAMILY = [  # name, (H, W), batch: odd sizes give asymmetric 'same' pads and ceil-mode avg pools
    ("dm_nfnet_f0", (72, 88), None),
    ("eca_nfnet_l0", (64, 64), 2),
    ("nf_resnet50", (72, 72), 1),
    ("nf_regnet_b1", (80, 64), 1),
]


@pytest.fixture(scope="module", params=FAMILY, ids=[name for name, _, _ in FAMILY])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    name, input_hw, batch = request.param
    model, weights = random_model(name, seed=0)
    random_biases_and_large_logits(model)
    info = model_info(
        name, data_config_for(model, input_hw), labels=resolve_labels(model, None), weights=weights, batch=batch
    )
    path = export_model(model, info, tmp_path_factory.mktemp(name) / f"{name}.onnx")
    return Exported(model, info, path, verify_export(model, path, batches=3))


def test_family_member_matches_pytorch(exported: Exported) -> None:
    report = exported.report
    print(f"{exported.info.name}: {report.describe()}")
    assert report.spread > 1.0, "logits must be non-trivial for the comparison to mean anything"
    assert report.scaled_error < 1e-5
    assert report.top1_agreed == report.samples and report.top5_min_shared == 5


def test_family_member_graph_is_inference_friendly(exported: Exported) -> None:
    assert_inference_friendly(exported.path)
    assert "Conv" in op_types(exported.path)
    onnx.checker.check_model(str(exported.path))


def test_family_member_metadata_round_trips(exported: Exported) -> None:
    info = read_model_info(exported.path)
    assert info == exported.info
    assert len(info.labels) == 1000 and info.labels[0].startswith("tench")
    assert info.weights == WeightSource("random", "0")


def test_family_member_batch_axis(exported: Exported) -> None:
    session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    (graph_input,), (graph_output,) = session.get_inputs(), session.get_outputs()
    assert (graph_input.name, graph_input.type, graph_output.name) == ("input", "tensor(float)", "logits")
    assert graph_input.shape[1:] == [3, exported.info.height, exported.info.width]
    batch = exported.info.batch
    if batch is None:
        assert isinstance(graph_input.shape[0], str)
        for size in (1, 5):
            x = np.random.default_rng(size).standard_normal((size, *exported.info.input_size), np.float32)
            assert session.run(None, {"input": x})[0].shape == (size, 1000)
    else:
        assert graph_input.shape[0] == batch
        x = np.zeros((batch + 1, *exported.info.input_size), np.float32)
        with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument):
            session.run(None, {"input": x})


def test_default_input_size_is_the_test_size() -> None:
    model = timm.create_model("dm_nfnet_f0")
    config = data_config_for(model)
    assert config["input_size"] == (3, 256, 256)
    assert (config["crop_mode"], config["crop_pct"]) == ("squash", 0.9)
    eca = data_config_for(timm.create_model("eca_nfnet_l0"))
    assert (eca["input_size"], eca["crop_pct"]) == ((3, 288, 288), 1.0)  # test_crop_pct, not crop_pct


def test_unsupported_crop_mode_is_refused() -> None:
    config = {**data_config_for(timm.create_model("test_nfnet")), "crop_mode": "border"}
    with pytest.raises(ExportError, match="crop_mode 'border'"):
        model_info("test_nfnet", config, labels=["a"], weights=WeightSource("random", "0"), batch=1)


# ---------------------------------------------------------------------------------------- random init


def branch_gates(model: nn.Module) -> list[torch.Tensor]:
    """The parameter that turns each residual branch on or off: its skipinit gain, else its last conv's gain."""
    return [block.skipinit_gain if block.skipinit_gain is not None else block.conv3.gain
            for block in model.modules() if isinstance(block, NormFreeBlock)]


@pytest.mark.parametrize("name", ["dm_nfnet_f0", "nf_regnet_b0", "nf_resnet26"])  # skipinit, and last-conv gains
def test_random_init_makes_every_residual_branch_count(name: str) -> None:
    """timm starts every residual branch at zero, so a check of its init sees only the stem, the shortcuts and
    the head; under --random-init, turning off any one branch moves the logits."""
    assert all(not gate.any() for gate in branch_gates(timm.create_model(name))), "timm's init: all branches off"
    model, _ = random_model(name, seed=0)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(x)
        spread = float(reference.max() - reference.min())
        for index, gate in enumerate(branch_gates(model)):
            kept = gate.clone()
            gate.zero_()
            moved = float((model(x) - reference).abs().max())
            gate.copy_(kept)
            assert moved > 1e-3 * spread, f"branch {index} of {name} does not show in the logits"


def test_random_init_is_seeded() -> None:
    first, second, other = (random_model("test_nfnet", seed)[0].state_dict() for seed in (5, 5, 6))
    assert all(torch.equal(first[key], second[key]) for key in first)
    gains = [key for key in first if key.endswith(".gain")]
    assert gains and not any(torch.equal(first[key], other[key]) for key in gains)


def test_verification_sees_every_branch(tmp_path: Path) -> None:
    """An export that lost any one residual branch fails the check (fp32 tolerance)."""
    model, weights = random_model("test_nfnet", seed=0)
    info = model_info("test_nfnet", data_config_for(model, (64, 64)), labels=resolve_labels(model, None),
                      weights=weights, batch=None)
    path = export_model(model, info, tmp_path / "m.onnx")
    verify_export(model, path)
    with torch.no_grad():
        for gate in branch_gates(model):
            kept = gate.clone()
            gate.zero_()
            with pytest.raises(ExportError, match="does not match PyTorch"):
                verify_export(model, path)
            gate.copy_(kept)


# -------------------------------------------------------------------------------------- verification

# Logits as small as those of timm's random init (0.06 to 0.28 in the survey of issue 14).
SMALL_LOGITS = np.random.default_rng(0).uniform(0.06, 0.28, size=(3, 1000)).astype(np.float32)


def test_small_logits_badly_wrong_fail_the_fp16_check() -> None:
    """An absolute 0.05 (the old fp16 tolerance below |logit| 1) is a fifth of these logits' spread."""
    wrong = SMALL_LOGITS + np.random.default_rng(1).uniform(-0.045, 0.045, SMALL_LOGITS.shape).astype(np.float32)
    report = compare_logits(SMALL_LOGITS, wrong, export_onnx.DEFAULT_TOLERANCE["fp16"])
    assert not report.passed and report.scaled_error > 0.1


def test_fp16_sized_errors_pass_and_near_ties_are_not_failures() -> None:
    reference = SMALL_LOGITS.copy()
    reference[1, 3] = reference[1].max() + 0.001
    reference[1, 4] = reference[1, 3] - 0.0005  # a near-tie for the top
    actual = reference + 0.0002
    actual[1, 4] += 0.0006  # an fp16-sized error that swaps it
    report = compare_logits(reference, actual, export_onnx.DEFAULT_TOLERANCE["fp16"])
    assert report.passed, report.describe()
    assert (report.top1_agreed, report.top1_near_ties, report.top5_min_shared) == (2, 1, 5)
    assert "top-1 agreement 2/3 (1 more on near-ties)" in report.describe()


def test_top1_and_top5_are_required() -> None:
    tolerance = export_onnx.DEFAULT_TOLERANCE["fp16"]
    reference = SMALL_LOGITS.copy()
    top = reference.argsort(axis=1)[:, ::-1]
    reference[0, top[0, 0]] += 0.05  # a clear winner
    swapped = reference.copy()
    swapped[0, [top[0, 0], top[0, 9]]] = swapped[0, [top[0, 9], top[0, 0]]]  # ... swaps with the 10th
    report = compare_logits(reference, swapped, tolerance)
    assert not report.passed and report.top1_agreed == 2 and report.top1_near_ties == 0

    edge = reference.copy()  # ranks 3 to 6 nearly equal: an error within tolerance may reorder them
    edge[0, top[0, 3:7]] = edge[0, top[0, 2]] - [0.0001, 0.0002, 0.0003, 0.0004]
    reordered = edge.copy()
    reordered[0, top[0, 3:7]] = edge[0, top[0, 2]] - [0.0004, 0.0003, 0.0002, 0.0001]
    report = compare_logits(edge, reordered, tolerance)
    assert report.scaled_error <= tolerance and report.top5_min_shared == 3 and not report.passed


def test_constant_logits_cannot_be_verified() -> None:
    with pytest.raises(ExportError, match="logits are all 0: no comparison"):
        compare_logits(np.zeros((2, 10), np.float32), np.zeros((2, 10), np.float32), 1e-4)


# ---------------------------------------------------------------------------------------------- fp16


def test_fp16_export_keeps_float32_io_within_tolerance(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = exercise_all_branches(NormFreeNet(TINY_SAME_CFG, num_classes=10))
    weights = WeightSource("random", "3")
    info = model_info(
        "tiny",
        data_config_for(model, (64, 64)),
        labels=[str(i) for i in range(10)],
        weights=weights,
        batch=None,
        precision="fp16",
    )
    path = export_model(model, info, tmp_path / "fp16.onnx")

    proto = onnx.load(str(path))
    assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert proto.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    conv_weights = [i for i in proto.graph.initializer if len(i.dims) == 4]
    assert conv_weights and all(i.data_type == TensorProto.FLOAT16 for i in conv_weights)
    assert read_model_info(path).precision == "fp16"
    assert_inference_friendly(path)

    report = verify_export(model, path)  # default fp16 tolerance
    assert report.tolerance == export_onnx.DEFAULT_TOLERANCE["fp16"]
    assert report.max_abs_error > 0, "fp16 compute must differ from fp32 at least a little"
    with pytest.raises(ExportError, match="does not match PyTorch"):
        verify_export(model, path, tolerance=report.scaled_error / 2)


# ----------------------------------------------------------------------------------------------- CLI


def run_cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_error_line(err: str, *fragments: str) -> str:
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in errors[0]
    return errors[0]


def test_cli_random_init_static_batch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.onnx"
    code, stdout, err = run_cli(
        capsys, "test_nfnet", "--random-init", "--seed", 7, "--input-size", 64, "--batch", 3, "--out", out
    )
    assert code == 0, err
    assert "verified:" in stdout and "top-1 agreement 9/9," in stdout  # 3 batches of 3
    assert "exporting to ONNX" in err  # progress lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"], "weights inline below the threshold"
    assert f"wrote {out} (" in stdout and " + " not in stdout
    info = read_model_info(out)
    assert (info.batch, info.input_size, info.weights) == (3, (3, 64, 64), WeightSource("random", "7"))
    assert (info.mean, info.crop_pct, info.interpolation) == ((0.5, 0.5, 0.5), 0.95, "bicubic")


def test_cli_failed_verification_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous good model")
    code, _, err = run_cli(
        capsys, "test_nfnet", "--random-init", "--input-size", 64, "--fp16", "--tolerance", 1e-9, "--out", out
    )
    assert code == 1
    assert_one_error_line(err, "ONNX Runtime does not match PyTorch", "tolerance 1e-09")
    assert out.read_bytes() == b"previous good model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def sidecar_locations(graph: Path) -> set[str]:
    return {entry.value for tensor in onnx.load(str(graph), load_external_data=False).graph.initializer
            for entry in tensor.external_data if entry.key == "location"}


def ort_logits(graph: Path) -> np.ndarray:
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64), np.float32)
    return session.run(None, {"input": x})[0]


def test_cli_sidecar_is_named_for_the_graph_and_replaced_only_by_a_verified_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Weights over the threshold (0 here, 1.5 GiB for real) go to a sidecar named after the final graph and
    its content; until a new export is verified, the previous pair is left as it was."""
    monkeypatch.setattr(export_onnx, "EXTERNAL_DATA_THRESHOLD", 0)
    out = tmp_path / "m.onnx"
    export = ("test_nfnet", "--random-init", "--input-size", 64, "--out", out)
    code, stdout, err = run_cli(capsys, *export, "--seed", 1)
    assert code == 0, err
    (sidecar,) = (p for p in tmp_path.iterdir() if p != out)
    assert sidecar.name == f"m.onnx.{hashlib.sha256(sidecar.read_bytes()).hexdigest()[:12]}.data"
    assert sidecar_locations(out) == {sidecar.name}
    inline = [t.name for t in onnx.load(str(out), load_external_data=False).graph.initializer if len(t.raw_data) > 256]
    assert not inline, "the weights are in the sidecar"
    assert f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) + {sidecar} ({sidecar.stat().st_size / 1e6:.1f} MB):" \
        in stdout
    good = {p.name: p.read_bytes() for p in (out, sidecar)}
    logits = ort_logits(out)

    code, _, err = run_cli(capsys, *export, "--seed", 2, "--tolerance", 1e-12)  # new weights, fails to verify
    assert code == 1
    assert_one_error_line(err, "ONNX Runtime does not match PyTorch")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == good

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("killed during verification")

    monkeypatch.setattr(export_onnx, "verify_export", crash)  # the same weights: the same sidecar name
    with pytest.raises(RuntimeError, match="killed during verification"):
        run_cli(capsys, *export, "--seed", 1)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == good
    monkeypatch.undo()

    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for name in good:
        (tmp_path / name).rename(moved / name)
    assert read_model_info(moved / "m.onnx").weights == WeightSource("random", "1")
    np.testing.assert_array_equal(ort_logits(moved / "m.onnx"), logits)

    monkeypatch.setattr(export_onnx, "EXTERNAL_DATA_THRESHOLD", 0)
    for name in good:
        (moved / name).rename(tmp_path / name)
    code, _, err = run_cli(capsys, *export, "--seed", 2)
    assert code == 0, err
    (new_sidecar,) = (p for p in tmp_path.iterdir() if p not in (out, moved))
    assert new_sidecar.name != sidecar.name and sidecar_locations(out) == {new_sidecar.name}, \
        "the previous export's sidecar is removed once the new graph is in place"
    assert not np.array_equal(ort_logits(out), logits)


# Every member of the family timm registers, as a new user would export it, and the fp16 and dynamic-batch
# variants of three: about 20 minutes on two cores, up to 9 GiB and two minutes a model (README: the family's status).
EVERY_EXPORT = [
    *(pytest.param(name, (), id=name) for name in timm.list_models("*nfnet*") + timm.list_models("nf_*")),
    *(pytest.param(name, ("--fp16", "--dynamic-batch"), id=f"{name}-fp16-dynamic")
      for name in ("dm_nfnet_f0", "eca_nfnet_l0", "nf_regnet_b1")),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "options"), EVERY_EXPORT)
def test_every_family_member_exports_and_verifies(
    name: str, options: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / f"{name}.onnx"
    code, stdout, err = run_cli(capsys, name, "--random-init", "--seed", 0, "--input-size", 64, *options, "--out", out)
    assert code == 0, err
    print(stdout)
    files = model_files(out)
    assert sorted(tmp_path.iterdir()) == sorted(files), "nothing else left behind"
    with_sidecar = sum(file.stat().st_size for file in files) > export_onnx.EXTERNAL_DATA_THRESHOLD
    assert len(files) == 1 + with_sidecar


def test_cli_without_weights_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "dm_nfnet_f0", "--out", tmp_path / "m.onnx")
    assert code == 2
    assert "one of the arguments --pretrained --checkpoint --random-init is required" in err
    assert not (tmp_path / "m.onnx").exists()


def test_cli_offline_pretrained_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(*args: object, **kwargs: object) -> None:
        raise OSError(-2, "Name or service not known")

    monkeypatch.setattr(export_onnx.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(export_onnx, "getproxies", dict)
    monkeypatch.setattr(export_onnx, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(export_onnx.socket, "create_connection", unreachable)
    code, _, err = run_cli(capsys, "dm_nfnet_f0", "--pretrained", "--out", tmp_path / "m.onnx")
    assert code == 1
    line = assert_one_error_line(err, "dm_nfnet_f0.dm_in1k", "Name or service not known", "--checkpoint PATH")
    assert len(line) < 200


def test_cli_pretrained_without_hub_weights_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "nf_resnet26", "--pretrained", "--out", tmp_path / "m.onnx")
    assert code == 1
    assert_one_error_line(err, "no pretrained weights nf_resnet26")


# ----------------------------------------------------------------------------------------- checkpoints


NUM_FINETUNED = 5


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path, Path, Path]:
    """A test_nfnet 'fine-tuned' on 5 classes, saved nested + DDP-prefixed (.pth) and flat (.safetensors)."""
    directory = tmp_path_factory.mktemp("finetuned")
    torch.manual_seed(4)
    model = exercise_all_branches(timm.create_model("test_nfnet", num_classes=NUM_FINETUNED), seed=4)
    state = model.state_dict()
    pth = directory / "finetuned.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, pth)
    safetensors_path = directory / "finetuned.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, safetensors_path)
    labels = directory / "labels.txt"
    labels.write_text("".join(f"part {i}\n" for i in range(NUM_FINETUNED)))
    return model, pth, safetensors_path, labels


@pytest.mark.parametrize("kind", ["pth", "safetensors"])
def test_cli_exports_finetuned_checkpoint(
    kind: str, finetuned: tuple[nn.Module, Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, pth, safetensors_path, labels = finetuned
    checkpoint = pth if kind == "pth" else safetensors_path
    out = tmp_path / "ft.onnx"
    code, _, err = run_cli(
        capsys,
        "test_nfnet",
        "--checkpoint",
        checkpoint,
        "--labels",
        labels,
        "--input-size",
        64,
        "--dynamic-batch",
        "--out",
        out,
    )
    assert code == 0, err
    info = read_model_info(out)
    assert info.labels == tuple(f"part {i}" for i in range(NUM_FINETUNED))
    assert info.weights.kind == "checkpoint"
    assert info.weights.ref == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    # The exported weights are the checkpoint's, not a fresh init.
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x).numpy()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--num-classes", "7"], ["--num-classes 7", "(5 classes)"]),
        (["--labels", "FOUR"], ["has 4 labels but the model has 5 classes"]),
        ([], ["5 classes", "pass --labels FILE"]),
    ],
    ids=["num-classes", "labels-count", "labels-missing"],
)
def test_cli_checkpoint_class_mismatches(
    extra: list[str],
    fragments: list[str],
    finetuned: tuple[nn.Module, Path, Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    four = tmp_path / "four.txt"
    four.write_text("a\nb\nc\nd\n")
    args = [four if a == "FOUR" else a for a in extra]
    code, _, err = run_cli(capsys, "test_nfnet", "--checkpoint", finetuned[1], *args, "--out", tmp_path / "m.onnx")
    assert code == 1
    assert_one_error_line(err, *fragments)
    assert not (tmp_path / "m.onnx").exists()


def test_cli_checkpoint_of_another_architecture(
    finetuned: tuple[nn.Module, Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, pth, _, labels = finetuned
    code, _, err = run_cli(
        capsys, "nf_regnet_b1", "--checkpoint", pth, "--labels", labels, "--out", tmp_path / "m.onnx"
    )
    assert code == 1
    assert_one_error_line(err, "does not fit nf_regnet_b1")


def test_cli_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "test_nfnet", "--checkpoint", tmp_path / "nope.pth", "--out", tmp_path / "m.onnx")
    assert code == 1
    assert_one_error_line(err, "checkpoint not found")
