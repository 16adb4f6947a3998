"""A test double of the ``migraphx`` Python module (MIGraphX 2.15, GPU build), on ONNX Runtime (CPU).

Importable as ``migraphx`` when ``tests/doubles`` is on ``sys.path``. The ``gpu`` target runs on the
simulated device of ``tests/doubles/device.py`` (shared with the HIP runtime double); ``ref`` runs on
the host. Numerics come from ONNX Runtime on the same ONNX file.

Sources: upstream AMDMIGraphX ``src/py/migraphx_py.cpp`` (the bindings; the revision read has
``run_async``), ``src/program.cpp`` (``generic_eval``, ``program::eval``, ``program::compile``),
``src/targets/gpu/hip.cpp``, ``src/targets/gpu/sync_device.cpp``, ``src/onnx/onnx.cpp``, the gpu
``context.hpp`` (``wait_for``/``finish_on``), and ``/work/shared/MIGRAPHX_FACTS.md`` ("FACTS" below).
Each strict rule names its source where it is implemented. Where the double is stricter than the
real module it says so: it raises where the real module would crash, corrupt, or read garbage.

The GIL: the real bindings never release it (FACTS), so ``parse_onnx``, ``compile`` and ``load`` hold
it for their whole duration here too, by sleeping in C through ``ctypes.PyDLL`` (which keeps the GIL):
for ``MIGRAPHX_DOUBLE_PARSE_S``, ``MIGRAPHX_DOUBLE_COMPILE_S`` and ``MIGRAPHX_DOUBLE_LOAD_S`` seconds
(environment; parse and compile default to 0, load to the file's size at the rate a real MIGraphX
loads). ``MIGRAPHX_DOUBLE_COMPILE_CRASH=<text>`` makes ``compile`` print the text to stderr and abort
the process, as a failed assertion inside MIGraphX does. ``MIGRAPHX_PROBLEM_CACHE`` is read when a
compile starts and written when it finishes.

A gpu program holds device memory for its weights and scratch from compile (or load) until the program
object is destroyed (owner ``"migraphx"`` in ``DEVICE.leaks``), and records the ISA (gcnArchName) of the
device current on the calling thread: loading it on a device of another ISA fails, as loading code objects
built for other features does (FACTS).

Not modelled: dynamic shapes, ``quantize_int8``/``quantize_bf16``, ``ins_names`` other than
``["all"]``, the ``cpu`` target (``get_target("cpu")`` fails as in a build without it), sub-graph ops'
fp16 rounding, the buffer protocol on ``argument`` (``np.array``/``np.asarray`` work through
``__array__``; ``memoryview(arg)`` does not), and the GIL during ``run()``: here it only holds a lock
that other ``migraphx`` calls need, and other Python threads keep running.
"""

from __future__ import annotations

import base64
import ctypes
import enum
import json
import os
import struct
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

try:  # one device per process, whichever way the doubles were imported (see device.py)
    from tests.doubles.device import DEVICE, DataRace, Mark, MemoryKind, OutOfDeviceMemory, Stream, error_string
except ImportError:
    from device import (  # type: ignore[no-redef]
        DEVICE,
        DataRace,
        Mark,
        MemoryKind,
        OutOfDeviceMemory,
        Stream,
        error_string,
    )

__version__ = "2.15.0-double"

# Stands in for the GIL, which the real bindings hold for a whole call (FACTS, "Compiling and running").
_BINDINGS_LOCK = threading.RLock()


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_LIBC_HOLDING_THE_GIL = ctypes.PyDLL(None)  # PyDLL: calls keep the GIL, as the bindings' C++ code does
_LIBC_HOLDING_THE_GIL.nanosleep.argtypes = [ctypes.POINTER(_Timespec), ctypes.c_void_p]


# A real MIGraphX 2.15 (ref target) loads a saved dm_nfnet_f0 at 256 px (286 MB) in 0.35-0.55 s, and no
# other Python thread runs meanwhile: the double's load holds the GIL at that rate unless told otherwise.
_LOAD_BYTES_PER_S = 700e6


def _load_problem_cache() -> dict[str, Any] | None:
    """``MIGRAPHX_PROBLEM_CACHE`` (AMDMIGraphX's documented environment variables): the JSON file is loaded when a
    compile starts, if it exists (a file that is not JSON throws, as ``from_json_string`` does); None when
    the variable is unset."""
    path = os.environ.get("MIGRAPHX_PROBLEM_CACHE")
    if not path:
        return None
    try:
        with open(path) as file:
            text = file.read()
    except FileNotFoundError:
        return {}
    try:
        return json.loads(text)
    except ValueError as exc:
        raise RuntimeError(f"migraphx double: problem cache {path} is not JSON: {exc}") from None


def _save_problem_cache(problems: dict[str, Any] | None, model: Any) -> None:
    """...and written back when compilation finishes, with this compile's tuning (here: one entry per graph
    compiled; a compile that aborts first writes nothing)."""
    if problems is None:
        return
    problems[model.graph.name or "main"] = {"solution": "tuned"}
    with open(os.environ["MIGRAPHX_PROBLEM_CACHE"], "w") as file:
        file.write(json.dumps(problems))


def _busy_in_cpp(variable: str, default_s: float = 0.0) -> None:
    """Spend ``$variable`` (else ``default_s``) seconds inside C while holding the GIL: no other Python
    thread runs meanwhile and no signal handler either (CPython runs them between bytecodes of the main
    thread)."""
    seconds = float(os.environ.get(variable) or default_s)
    if seconds > 0:
        whole = int(seconds)
        _LIBC_HOLDING_THE_GIL.nanosleep(ctypes.byref(_Timespec(whole, int((seconds - whole) * 1e9))), None)
_OUTPUT_PARAMETER = "main:#output_{}"
# A program whose weights and scratch fell back to host memory runs many times slower (its kernels read them
# over PCIe): each run takes this many times its own compute on top, and at least _HOST_MEMORY_MIN_RUN_S.
_HOST_MEMORY_SLOWDOWN = 20
_HOST_MEMORY_MIN_RUN_S = 0.05
_PROGRAM_FILE_VERSION = 7  # program_file_version in src/program.cpp
_MIGRAPHX_VERSION = "2.15.0"

# ---------------------------------------------------------------------------------------------------------
# shapes

# shape::type_t, in MIGRAPHX_SHAPE_VISIT_TYPES order (src/include/migraphx/shape.hpp).
_TYPES: tuple[tuple[str, str, type[np.generic]], ...] = (
    ("bool_type", "bool", np.bool_),
    ("half_type", "half", np.float16),
    ("float_type", "float", np.float32),
    ("double_type", "double", np.float64),
    ("uint8_type", "uint8_t", np.uint8),
    ("int8_type", "int8_t", np.int8),
    ("uint16_type", "uint16_t", np.uint16),
    ("int16_type", "int16_t", np.int16),
    ("int32_type", "int32_t", np.int32),
    ("int64_type", "int64_t", np.int64),
    ("uint32_type", "uint32_t", np.uint32),
    ("uint64_type", "uint64_t", np.uint64),
)
_type_t = enum.Enum("type_t", [(name, index) for index, (name, _, _) in enumerate(_TYPES)])  # type: ignore[misc]
_DTYPES = {_type_t[name]: np.dtype(dtype) for name, _, dtype in _TYPES}
_BY_NAME = {alias: _type_t[name] for name, c_name, _ in _TYPES for alias in (name, name.removesuffix("_type"), c_name)}


class _DynamicDimension:
    """``shape.dynamic_dimension(min, max, optimals)``; only so that parse_onnx can check its options."""

    def __init__(self, min: int = 0, max: int = 0, optimals: Sequence[int] = ()) -> None:
        self.min, self.max, self.optimals = min, max, set(optimals)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _DynamicDimension) and self._key() == other._key()

    def _key(self) -> tuple[int, int, set[int]]:
        return self.min, self.max, self.optimals

    def is_fixed(self) -> bool:
        return self.min == self.max


def _standard_strides(lens: Sequence[int]) -> tuple[int, ...]:
    strides, step = [], 1
    for length in reversed(lens):
        strides.append(step)
        step *= max(length, 1)
    return tuple(reversed(strides))


class shape:
    """``migraphx.shape(type="float_type", lens=[...], strides=[...])`` (migraphx_py.cpp, shape __init__)."""

    type_t = _type_t
    dynamic_dimension = _DynamicDimension

    def __init__(self, **kwargs: Any) -> None:
        if "dyn_dims" in kwargs:
            raise NotImplementedError("the migraphx double does not model dynamic shapes")
        unknown = set(kwargs) - {"type", "lens", "strides"}
        if unknown:
            raise TypeError(f"shape(): unexpected keywords {sorted(unknown)}")
        type_name = kwargs.get("type", "float")
        if type_name not in _BY_NAME:
            raise RuntimeError(f"Unknown type: {type_name}")
        self._type = _BY_NAME[type_name]
        self._lens = tuple(int(n) for n in kwargs.get("lens", [1]))
        strides = kwargs.get("strides")
        self._strides = tuple(int(n) for n in strides) if strides is not None else _standard_strides(self._lens)

    @classmethod
    def _of_array(cls, array: np.ndarray) -> shape:
        """The shape ``to_shape`` (migraphx_py.cpp) gives a buffer: its type, lens and element strides."""
        matches = [t for t, dtype in _DTYPES.items() if dtype == array.dtype]
        if not matches or not array.dtype.isnative:
            raise RuntimeError(f"MIGRAPHX PYTHON: Unsupported data type {array.dtype.char}")
        itemsize = array.dtype.itemsize
        return cls(type=matches[0].name, lens=array.shape, strides=[s // itemsize for s in array.strides])

    def type(self) -> Any:
        return self._type

    def type_string(self) -> str:
        return self._type.name

    def lens(self) -> list[int]:
        return list(self._lens)

    def strides(self) -> list[int]:
        return list(self._strides)

    def ndim(self) -> int:
        return len(self._lens)

    def elements(self) -> int:
        return int(np.prod(self._lens, dtype=np.int64))

    def type_size(self) -> int:
        return _DTYPES[self._type].itemsize

    def bytes(self) -> int:
        """Bytes spanned: (element space) x (type size), as shape::bytes."""
        if self.elements() == 0:
            return 0
        return (1 + sum((n - 1) * s for n, s in zip(self._lens, self._strides, strict=True))) * self.type_size()

    def standard(self) -> bool:
        return self._strides == _standard_strides(self._lens)

    @property
    def _dtype(self) -> np.dtype:
        return _DTYPES[self._type]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, shape) and self._key() == other._key()

    def _key(self) -> tuple[Any, tuple[int, ...], tuple[int, ...]]:
        return self._type, self._lens, self._strides

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:  # to_string(shape), as in the "Incorrect shape" message
        def braces(values: Sequence[int]) -> str:
            return "{" + ", ".join(map(str, values)) + "}"

        return f"{self._type.name}, {braces(self._lens)}, {braces(self._strides)}"


# ---------------------------------------------------------------------------------------------------------
# arguments


def _owner(array: np.ndarray) -> weakref.ref | None:
    """A weak reference to the object owning ``array``'s memory, to tell when it has been freed."""
    owner: Any = array
    while isinstance(owner, np.ndarray) and owner.base is not None:
        owner = owner.base
    try:
        return weakref.ref(owner)
    except TypeError:
        return None


class argument:
    """Data with a shape, wrapped without copying (migraphx_py.cpp: ``argument(to_shape(info), info.ptr)``).

    Like the real one it does NOT keep the wrapped buffer alive (FACTS, "Compiling and running").
    Stricter than real: using an argument whose host buffer has been freed raises instead of reading
    freed memory, and ``np.asarray`` on an argument in device memory raises instead of handing numpy a
    device pointer.
    """

    def __init__(self, buffer: Any) -> None:
        try:
            memoryview(buffer)
        except TypeError:
            raise TypeError(f"argument(): incompatible constructor arguments: {type(buffer)} is not a buffer") from None
        array = np.asarray(buffer)
        self._shape = shape._of_array(array)
        self._address = int(array.__array_interface__["data"][0])
        self._source = _owner(array)
        self._keepalive: Any = None

    @classmethod
    def _wrap(cls, s: shape, address: int, keepalive: Any = None) -> argument:
        arg = cls.__new__(cls)
        arg._shape, arg._address, arg._source, arg._keepalive = s, address, None, keepalive
        return arg

    def get_shape(self) -> shape:
        return self._shape

    def data_ptr(self) -> int:
        return self._address

    def tolist(self) -> list[Any]:
        return np.asarray(self).ravel().tolist()

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        region = DEVICE.region(self._address, self._shape.bytes())
        if region is None or region.kind is MemoryKind.DEVICE:
            where = "device memory" if region else "memory that is not allocated"
            raise RuntimeError(
                f"migraphx double: this argument is in {where}; copy it to the host first (hipMemcpyAsync, "
                "migraphx.from_gpu). The real module hands numpy the raw pointer, and reading it crashes."
            )
        self._check_alive()
        view = self._view()
        view = view.astype(dtype, copy=False) if dtype is not None else view
        return view.copy() if copy else view

    def __repr__(self) -> str:
        return f"<migraphx.argument {self._shape!r} at {self._address:#x}>"

    def _check_alive(self) -> None:
        if self._source is not None and self._source() is None:
            raise RuntimeError(
                "migraphx double: the buffer behind this argument has been freed; migraphx.argument wraps "
                "memory without keeping it alive (migraphx_py.cpp, argument __init__): keep the array alive"
            )

    def _view(self) -> np.ndarray:
        """The live data (not a copy), with this argument's shape and strides."""
        if isinstance(self._keepalive, np.ndarray):
            memory = memoryview(self._keepalive).cast("B")  # the view then keeps the owner alive
        else:
            memory = DEVICE.memory(self._address, self._shape.bytes())
        s = self._shape
        flat = np.frombuffer(memory, dtype=s._dtype, count=s.bytes() // s.type_size())
        return np.lib.stride_tricks.as_strided(flat, s.lens(), [n * s.type_size() for n in s.strides()])

    def _read(self) -> np.ndarray:
        """A copy of the current contents (what a kernel reads when it runs)."""
        return self._view().copy()

    def _write(self, values: np.ndarray) -> None:
        self._view()[...] = values


def argument_from_pointer(shape: shape, address: int) -> argument:
    """Wrap ``address`` without copying or checking it (migraphx_py.cpp: ``int64_t address``)."""
    if isinstance(address, bool) or not isinstance(address, int) or not -(2**63) <= address < 2**63:
        raise TypeError("argument_from_pointer(): incompatible function arguments (address must fit int64_t)")
    return argument._wrap(shape, address)


def _memory_kind(arg: argument) -> MemoryKind | None:
    """Where the argument's bytes are; None if that is not valid memory."""
    region = DEVICE.region(arg.data_ptr(), arg.get_shape().bytes())
    return region.kind if region else None


def _as_argument(value: Any) -> argument:
    """What ``run`` does with each parameter value: ``x.second.cast<py::buffer>()``, then wrap it."""
    if isinstance(value, argument):
        return value
    try:
        return argument(value)
    except TypeError:
        message = f"Unable to cast Python instance of type {type(value)} to C++ type 'pybind11::buffer'"
        raise RuntimeError(message) from None


# ---------------------------------------------------------------------------------------------------------
# targets


class target:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return f"<migraphx.target {self._name}>"


def get_target(name: str) -> target:
    """``ref`` and ``gpu``; any other raises as in a build without that target (FACTS, "Compiling and running")."""
    if name not in ("ref", "gpu"):
        raise RuntimeError(f"register_target: could not load target '{name}': cannot open libmigraphx_{name}.so")
    return target(name)


def _require_device() -> None:
    """Creating a gpu context needs a visible device."""
    if DEVICE.device_count == 0:
        raise RuntimeError(f"Error setting device: {error_string(100)}")


# ---------------------------------------------------------------------------------------------------------
# the model behind a program


def _set_input_dims(model: onnx.ModelProto, default_dim_value: int, map_input_dims: dict[str, Sequence[int]]) -> None:
    """Fix every input's dims: ``map_input_dims`` first (it overrides fixed dims too), else symbolic dims
    become ``default_dim_value``, or 1 (FACTS, "Parsing")."""
    initializers = {i.name for i in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        if value.name in map_input_dims:
            del dims[:]
            for n in map_input_dims[value.name]:
                dims.add().dim_value = int(n)
            continue
        for dim in dims:
            if not dim.HasField("dim_value") or dim.dim_value <= 0:
                dim.dim_value = default_dim_value or 1


def _check_pads_constant(model: onnx.ModelProto) -> None:
    """FACTS, "Parsing": a Pad whose pads are not constant at parse time fails."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {out for node in model.graph.node if node.op_type == "Constant" for out in node.output}
    for node in model.graph.node:
        if node.op_type == "Pad" and len(node.input) > 1 and node.input[1] not in constants:
            raise RuntimeError("PARSE_PAD: `pads` input must be constant")


def _signature(model: onnx.ModelProto) -> tuple[dict[str, shape], list[shape]]:
    """Input shapes (in graph order) and output shapes (by ONNX shape inference on the fixed inputs)."""

    def shape_of(value: onnx.ValueInfoProto) -> shape:
        tensor = value.type.tensor_type
        if any(not d.HasField("dim_value") for d in tensor.shape.dim):
            raise RuntimeError(f"migraphx double: cannot infer a static shape for '{value.name}'")
        dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        type_name = next(t.name for t, d in _DTYPES.items() if d == dtype)
        return shape(type=type_name, lens=[d.dim_value for d in tensor.shape.dim])

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for value in probe.graph.output:
        value.type.tensor_type.ClearField("shape")
    del probe.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(probe, strict_mode=True, data_prop=True)
    initializers = {i.name for i in model.graph.initializer}
    inputs = {v.name: shape_of(v) for v in model.graph.input if v.name not in initializers}
    return inputs, [shape_of(v) for v in inferred.graph.output]


# MIGraphX's half (generic_float<10, 5>, src/include/migraphx/generic_float.hpp) converts from float by
# dropping the low mantissa bits: every conversion truncates toward zero. A product of two halves is a
# float truncated to half (MIGRAPHX_GENERIC_FLOAT_BINARY_OP); truncated, a product p becomes on average
# p * (1 - MU) with an rms spread of SIGMA * |p| around that (measured over products of normal values).
_TRUNCATION_MU = 0.7214 * 2.0**-11
_TRUNCATION_SIGMA = 0.4476 * 2.0**-11
_PRODUCT_OPS = ("Conv", "Gemm", "MatMul")
_HALF_MANTISSA_BITS = 10
_HALF_MIN_EXPONENT = -14  # below 2**-14 halves are subnormal: a fixed spacing of 2**-24


def _truncate_to_half(array: np.ndarray) -> np.ndarray:
    """float32 values truncated toward zero to the nearest half (as float32), as generic_float converts."""
    values = np.asarray(array, dtype=np.float32)
    truncated = (values.view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)  # 23 - 10 mantissa bits
    spacing = 2.0 ** (_HALF_MIN_EXPONENT - _HALF_MANTISSA_BITS)
    subnormal = np.sign(values) * np.floor(np.abs(values) / spacing) * spacing
    return np.where(np.abs(values) < 2.0**_HALF_MIN_EXPONENT, subnormal, truncated).astype(np.float32)


def _truncation_nodes(source: str, target: str) -> list[onnx.NodeProto]:
    """ONNX nodes computing ``target = _truncate_to_half(source)`` (ONNX has no bit cast: through the
    exponent, floor(log2|x|), corrected where the logarithm rounds across a power of two)."""
    n = f"{target}/truncate"
    node = helper.make_node
    return [
        node("Abs", [source], [f"{n}/abs"]),
        node("Max", [f"{n}/abs", "half/tiny"], [f"{n}/positive"]),
        node("Log", [f"{n}/positive"], [f"{n}/log"]),
        node("Div", [f"{n}/log", "half/ln2"], [f"{n}/log2"]),
        node("Floor", [f"{n}/log2"], [f"{n}/e0"]),
        node("Pow", ["half/two", f"{n}/e0"], [f"{n}/p0"]),
        node("Less", [f"{n}/abs", f"{n}/p0"], [f"{n}/below"]),
        node("Mul", [f"{n}/p0", "half/two"], [f"{n}/p1"]),
        node("GreaterOrEqual", [f"{n}/abs", f"{n}/p1"], [f"{n}/above"]),
        node("Cast", [f"{n}/below"], [f"{n}/down"], to=TensorProto.FLOAT),
        node("Cast", [f"{n}/above"], [f"{n}/up"], to=TensorProto.FLOAT),
        node("Sub", [f"{n}/e0", f"{n}/down"], [f"{n}/e1"]),
        node("Add", [f"{n}/e1", f"{n}/up"], [f"{n}/e2"]),
        node("Max", [f"{n}/e2", "half/min_exponent"], [f"{n}/e"]),
        node("Sub", [f"{n}/e", "half/mantissa_bits"], [f"{n}/ulp_exponent"]),
        node("Pow", ["half/two", f"{n}/ulp_exponent"], [f"{n}/ulp"]),
        node("Div", [f"{n}/abs", f"{n}/ulp"], [f"{n}/ulps"]),
        node("Floor", [f"{n}/ulps"], [f"{n}/whole_ulps"]),
        node("Mul", [f"{n}/whole_ulps", f"{n}/ulp"], [f"{n}/magnitude"]),
        node("Sign", [source], [f"{n}/sign"]),
        node("Mul", [f"{n}/sign", f"{n}/magnitude"], [target]),
    ]


_HALF_CONSTANTS = {"half/tiny": 2.0**-30, "half/ln2": float(np.log(2.0)), "half/two": 2.0,
                   "half/min_exponent": float(_HALF_MIN_EXPONENT), "half/mantissa_bits": float(_HALF_MANTISSA_BITS),
                   "half/keep": 1.0 - _TRUNCATION_MU}


def _fp16_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """The numerics of ``quantize_fp16`` on the reference target: fp16 storage and fp16 arithmetic, as
    MIGraphX's own half type does them.

    Storage: the input, every float weight and every float activation is truncated toward zero to a half
    (not rounded to nearest: ``generic_float::from_float`` drops the low bits), after each node.
    Arithmetic: the reference kernels multiply halves as halves, truncating every product, and sum in
    double (``convolution.hpp``: ``double acc``). For Conv, Gemm and MatMul with constant weights that is
    modelled by its statistics: their exact sum (without the bias, which MIGraphX adds as a separate op) is
    scaled by ``1 - MU`` and gets ``SIGMA * sqrt(op(x**2, w**2)) * e``, where ``e`` is fixed pseudo-random
    normal noise (a seed per node: the same program gives the same outputs).

    Truncation biases every value toward zero, and the bias compounds through the layers: on the bundled
    model and a random-init NFNet this gives scaled errors of a few 1e-2, as the real ref target does (2.6e-2
    and 4.0e-2), where rounding to nearest gives about 2e-3. Inputs and outputs stay float32 (FACTS).
    """
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.value_info[:]  # as exported, for another batch
    inferred = onnx.shape_inference.infer_shapes(probe, strict_mode=True).graph
    values = {v.name: v.type.tensor_type for v in (*inferred.value_info, *inferred.output, *inferred.input)}
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    for i, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT:
            truncated = _truncate_to_half(numpy_helper.to_array(init))
            graph.initializer[i].CopyFrom(numpy_helper.from_array(truncated, init.name))
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    graph.initializer.extend(numpy_helper.from_array(np.array(value, np.float32), name)
                             for name, value in _HALF_CONSTANTS.items())

    def is_float(name: str) -> bool:
        return name in values and values[name].elem_type == TensorProto.FLOAT

    def products(index: int, node: onnx.NodeProto, output: str) -> list[onnx.NodeProto]:
        """``node`` (its sum of products only, the bias left out) with the products truncated; the bias, if
        any, added after a truncation, as MIGraphX's separate add does. Ends in ``output/summed``."""
        x, weight, *bias = node.input
        shape = [d.dim_value for d in values[output].shape.dim]
        noise = np.random.default_rng(index).standard_normal(shape).astype(np.float32) * _TRUNCATION_SIGMA
        n = f"{output}/products"
        graph.initializer.extend([numpy_helper.from_array(np.square(weights[weight]), f"{n}/w2"),
                                  numpy_helper.from_array(noise, f"{n}/noise")])
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name != "beta"}
        squares = dict(attributes, alpha=attributes["alpha"] ** 2) if "alpha" in attributes else attributes
        beta = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "beta"), 1.0)
        summed = f"{n}/truncated" if bias else f"{output}/summed"
        nodes = [
            helper.make_node(node.op_type, [x, weight], [f"{n}/exact"], **attributes),
            helper.make_node("Mul", [f"{n}/exact", "half/keep"], [f"{n}/biased"]),
            helper.make_node("Mul", [x, x], [f"{n}/x2"]),
            helper.make_node(node.op_type, [f"{n}/x2", f"{n}/w2"], [f"{n}/sum2"], **squares),
            helper.make_node("Sqrt", [f"{n}/sum2"], [f"{n}/rms"]),
            helper.make_node("Mul", [f"{n}/rms", f"{n}/noise"], [f"{n}/spread"]),
            helper.make_node("Add", [f"{n}/biased", f"{n}/spread"], [summed if not bias else f"{n}/sum"]),
        ]
        if bias:
            graph.initializer.append(numpy_helper.from_array(
                _truncate_to_half(weights[bias[0]] * beta).reshape((-1, *[1] * (len(shape) - 2))), f"{n}/bias"))
            nodes += _truncation_nodes(f"{n}/sum", summed)
            nodes.append(helper.make_node("Add", [summed, f"{n}/bias"], [f"{output}/summed"]))
        return nodes

    initializers = set(weights)
    renamed: dict[str, str] = {}
    nodes: list[onnx.NodeProto] = []
    for value in graph.input:
        if value.name not in initializers and value.type.tensor_type.elem_type == TensorProto.FLOAT:
            renamed[value.name] = f"{value.name}/truncated"
            nodes += _truncation_nodes(value.name, renamed[value.name])
    for index, node in enumerate(list(graph.node)):
        for i, name in enumerate(node.input):
            node.input[i] = renamed.get(name, name)
        output = node.output[0]
        if node.op_type in _PRODUCT_OPS and len(node.input) > 1 and node.input[1] in weights and is_float(output):
            nodes += products(index, node, output)
            nodes += _truncation_nodes(f"{output}/summed", output)
            continue
        nodes.append(node)
        for i, name in enumerate(node.output):
            if is_float(name):
                node.output[i] = f"{name}/fp32"
                nodes += _truncation_nodes(node.output[i], name)
    del graph.node[:]
    graph.node.extend(nodes)
    return result


def _device_bytes(model: onnx.ModelProto) -> int:
    """What a compiled gpu program keeps on the device: its weights (literals) and a scratch buffer for
    the activations (here their sum, an upper bound of what MIGraphX's memory colouring needs)."""
    weights = sum(numpy_helper.to_array(init).nbytes for init in model.graph.initializer)
    inferred = onnx.shape_inference.infer_shapes(model).graph
    activations = 0
    for value in (*inferred.value_info, *inferred.output):
        tensor = value.type.tensor_type
        if tensor.elem_type and all(d.HasField("dim_value") for d in tensor.shape.dim):
            itemsize = helper.tensor_dtype_to_np_dtype(tensor.elem_type).itemsize
            activations += itemsize * int(np.prod([d.dim_value for d in tensor.shape.dim], dtype=np.int64))
    return max(1, weights + activations)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------------------------------------------
# programs


class program:
    """A parsed (then compiled) model."""

    def __init__(self) -> None:
        self._model: onnx.ModelProto | None = None
        self._inputs: dict[str, shape] = {}
        self._outputs: list[shape] = []
        self._fp16 = False
        self._target: str | None = None
        self._offload_copy = True
        self._session: ort.InferenceSession | None = None
        self._scratch: list[np.ndarray] = []
        self._stream_handle = 0
        self._last_run: Mark | None = None
        self._arch: str | None = None  # the ISA a gpu program's code objects were built for
        self._in_host_memory = False  # its weights and scratch fell back to hipHostMalloc: every run is slow

    @classmethod
    def _from_model(cls, model: onnx.ModelProto) -> program:
        prog = cls()
        prog._model = model
        prog._inputs, prog._outputs = _signature(model)
        return prog

    # -- introspection ----------------------------------------------------------------------------------

    def is_compiled(self) -> bool:
        return self._target is not None

    def get_parameter_shapes(self) -> dict[str, shape]:
        """Inputs, plus ``main:#output_N`` for a gpu program compiled with offload_copy=False (FACTS)."""
        return dict(self._parameters())

    def get_parameter_names(self) -> list[str]:
        return list(self._parameters())

    def get_output_shapes(self) -> list[shape]:
        return list(self._outputs)

    @property
    def _device_outputs(self) -> bool:
        return self._target == "gpu" and not self._offload_copy

    def _parameters(self) -> dict[str, shape]:
        outputs = {_OUTPUT_PARAMETER.format(i): s for i, s in enumerate(self._outputs)} if self._device_outputs else {}
        return {**self._inputs, **outputs}

    # -- compiling --------------------------------------------------------------------------------------

    def compile(
        self, t: target, offload_copy: bool = True, fast_math: bool = True, exhaustive_tune: bool = False
    ) -> None:
        if not isinstance(t, target):
            raise TypeError("compile(): incompatible function arguments")
        # program::compile only asserts `not this->is_compiled()` (src/program.cpp); stricter: refuse.
        if self.is_compiled():
            raise RuntimeError("migraphx double: program is already compiled")
        if self._model is None:
            raise RuntimeError("migraphx double: compiling an empty program is not modelled")
        problems = _load_problem_cache()
        _busy_in_cpp("MIGRAPHX_DOUBLE_COMPILE_S")
        crash = os.environ.get("MIGRAPHX_DOUBLE_COMPILE_CRASH")
        if crash:
            print(crash, file=sys.stderr, flush=True)
            os.abort()
        arch = DEVICE.settings.arch_of(DEVICE.current()) if t._name == "gpu" else None
        self._finish_compile(t._name, bool(offload_copy), arch)
        _save_problem_cache(problems, self._model)

    def _finish_compile(self, target_name: str, offload_copy: bool, arch: str | None) -> None:
        """Compile (or, for a loaded program, finalize) for ``target_name``; options are baked in (FACTS).

        On gpu: the code objects are for ``arch`` (loading them on a device of another ISA fails in
        finalize, FACTS), and the weights and scratch take device memory until the program is destroyed.
        """
        assert self._model is not None
        if target_name == "gpu":
            _require_device()
            device_arch = DEVICE.settings.arch_of(DEVICE.current())
            if arch != device_arch:
                raise RuntimeError(f"migraphx double: Failed to load module: code objects for {arch}, device "
                                   f"{DEVICE.current()} is {device_arch} (hipErrorNoBinaryForGpu)")
            kind, memory = _allocate_gpu_memory(_device_bytes(self._model))
            weakref.finalize(self, DEVICE.free, kind, memory)
            self._in_host_memory = kind is MemoryKind.PINNED
            self._stream_handle = DEVICE.create_stream(0, "migraphx").handle  # the gpu context's own stream
            weakref.finalize(self, DEVICE.destroy_stream, self._stream_handle)
            self._arch = arch
        self._session = _session(_fp16_model(self._model) if self._fp16 else self._model)
        self._scratch = [np.full(s.lens(), np.nan, dtype=s._dtype) for s in self._outputs]
        self._target, self._offload_copy = target_name, offload_copy

    # -- running ----------------------------------------------------------------------------------------

    def run(self, params: dict[str, Any]) -> list[argument]:
        """Evaluate. On gpu it runs on the program's own stream; with offload_copy=True it then waits for
        the whole device (sync_device.cpp adds hip::sync_device, i.e. hipDeviceSynchronize, when the
        outputs are copied back); with offload_copy=False it returns while the work is queued."""
        with _BINDINGS_LOCK:
            bound = self._bind(params)
            if self._target != "gpu":
                self._execution(bound, staged={})()
                return self._results(bound)
            stream = DEVICE.stream(self._stream_handle)
            if stream is None:
                raise RuntimeError("migraphx double: this program's gpu context is gone (device reset)")
            self._launch(bound, stream)
            if not self._device_outputs:
                gpu_sync()
            return self._results(bound)

    def run_async(self, params: dict[str, Any], stream: int, stream_name: str) -> list[argument]:
        """Queue an evaluation on the caller's HIP stream and return at once (FACTS: all three arguments
        required, ``stream_name`` ``"ihipStream_t"``, no synchronisation). Results are not ready until
        the stream has reached them."""
        stream_is_uintptr = isinstance(stream, int) and not isinstance(stream, bool) and 0 <= stream < 2**64
        if not stream_is_uintptr or not isinstance(stream_name, str):
            raise TypeError("run_async(): incompatible function arguments (stream: int handle, stream_name: str)")
        with _BINDINGS_LOCK:
            bound = self._bind(params)
            if self._target != "gpu":  # a host context's wait_for/finish_on are no-ops (context.hpp defaults)
                self._execution(bound, staged={})()
                return self._results(bound)
            # context::wait_for does queue.get<hipStream_t>(), which checks the any_ptr's type name.
            if stream_name != "ihipStream_t":
                raise RuntimeError(f"any_ptr: type mismatch: expected ihipStream_t, got {stream_name!r}")
            if stream == 0:
                raise NotImplementedError("the migraphx double does not model the null stream")
            caller = DEVICE.stream(stream)
            if caller is None:  # context::wait_for: hipEventRecord on the caller's queue fails
                raise RuntimeError(f"Failed to record: {error_string(400)}")
            self._launch(bound, caller)
            return self._results(bound)

    def _bind(self, params: dict[str, Any]) -> dict[str, argument]:
        if not self.is_compiled():
            raise RuntimeError("migraphx double: running a program that is not compiled is not modelled")
        if not isinstance(params, dict):
            raise TypeError("run(): incompatible function arguments (params must be a dict)")
        given = {}
        for key, value in params.items():
            if not isinstance(key, str):
                raise RuntimeError(f"Unable to cast Python instance of type {type(key)} to C++ type 'std::string'")
            given[key] = _as_argument(value)
        bound = {}
        # generic_eval, "@param" (src/program.cpp): every parameter must be given, with exactly the
        # parameter's shape: type, lens and strides. No conversion (FACTS): float64, a wrong batch or a
        # non-C-contiguous array fails here. Extra entries are ignored, as there.
        for name, expected in self._parameters().items():
            if name not in given:
                raise RuntimeError(f"Parameter not found: {name}")
            arg = given[name]
            if arg.get_shape() != expected:
                got = arg.get_shape()
                raise RuntimeError(f"Incorrect shape {{{got!r}}} for parameter: {name} should be: {expected!r}")
            self._check_memory(name, arg)
            bound[name] = arg
        return bound

    def _check_memory(self, name: str, arg: argument) -> None:
        """Where each parameter must live for this program to read (or write) it."""
        kind = _memory_kind(arg)
        if self._device_outputs:
            # offload_copy=False: the GPU reads and writes the parameters directly (FACTS: the caller
            # supplies device buffers). Pinned memory is device-accessible (HIP docs, hipHostMalloc).
            # Stricter than real, which faults on the GPU or reads garbage: refuse anything else.
            if kind not in (MemoryKind.DEVICE, MemoryKind.PINNED):
                where = "unallocated (freed?) memory" if kind is None else "pageable host memory"
                raise RuntimeError(
                    f"migraphx double: parameter {name} is in {where}, but this program was compiled with "
                    "offload_copy=False and reads it on the GPU: pass argument_from_pointer(shape, <hipMalloc address>)"
                )
        elif kind not in (MemoryKind.PINNED, MemoryKind.PAGEABLE):
            if self._target == "gpu":  # hip_async_copy (hip.cpp): hipMemcpyAsync host->device rejects it
                raise RuntimeError(f"Gpu copy failed: {error_string(1)}")
            raise RuntimeError(f"migraphx double: parameter {name} is not host memory; ref would crash on it")
        if kind is MemoryKind.PAGEABLE:
            arg._check_alive()

    def _launch(self, bound: dict[str, argument], stream: Stream) -> None:
        """Queue one execution on ``stream``, after checking that it cannot overlap the previous one."""
        if DEVICE.sticky_error:
            raise RuntimeError(f"Failed to record: {error_string(DEVICE.sticky_error)}")
        # FACTS: "One scratch buffer per program: only one execution per program object may be in
        # flight." The real module does not check, and two unordered executions (e.g. run_async on two
        # streams without an event between them) silently corrupt each other's scratch and outputs:
        # where the gpu context runs kernels on its own stream between wait_for/finish_on events
        # (context.hpp), they are serialised there but share the output buffers; where it submits to
        # the caller's queue, they overlap outright. The double runs them on the caller's stream.
        # Stricter: refuse, unless the previous execution is ordered before this one (same stream, a
        # hipStreamWaitEvent on an event recorded after it, or the host having synchronised with it).
        if self._last_run is not None and not DEVICE.ordered_before(self._last_run, stream):
            raise RuntimeError(
                "migraphx double: this program's previous execution may still be running on another stream; "
                "only one execution per program may be in flight (MIGRAPHX_FACTS.md). Order them with an "
                "event (hipEventRecord + hipStreamWaitEvent) or synchronise first."
            )
        # hipMemcpyAsync from pageable memory is staged at the call (HIP docs); pinned memory is read
        # when the copy executes. With offload_copy=True the inputs are copied that way (hip.cpp).
        staged = {
            name: arg._read()
            for name, arg in bound.items()
            if name in self._inputs and _memory_kind(arg) is MemoryKind.PAGEABLE
        }
        # The kernels read the inputs and write the outputs where they are: a copy into an input that a
        # kernel on another stream may still read (or out of an output not yet written) raises DataRace.
        ranges = {name: (arg.data_ptr(), arg.get_shape().bytes()) for name, arg in bound.items()}
        try:
            self._last_run = DEVICE.enqueue(
                stream, self._execution(bound, staged), "a migraphx program run",
                reads=[r for name, r in ranges.items() if name in self._inputs],
                writes=[r for name, r in ranges.items() if name not in self._inputs])
        except DataRace as exc:
            raise RuntimeError(f"migraphx double: {exc}") from None

    def _execution(self, bound: dict[str, argument], staged: dict[str, np.ndarray]) -> Callable[[], None]:
        """The kernel: read inputs from the caller's memory now (inputs are not copied at the call,
        FACTS), compute, and write the outputs (device buffers, or the program's scratch)."""
        session = self._session
        assert session is not None
        inputs = {name: arg for name, arg in bound.items() if name in self._inputs}
        destinations = self._results(bound)

        in_host_memory = self._in_host_memory

        def execute() -> None:
            started = time.perf_counter()
            feeds = {name: staged[name] if name in staged else arg._read() for name, arg in inputs.items()}
            for value, destination in zip(session.run(None, feeds), destinations, strict=True):
                destination._write(value)
            if in_host_memory:  # every kernel reads its weights and scratch over PCIe
                time.sleep(max(_HOST_MEMORY_SLOWDOWN * (time.perf_counter() - started), _HOST_MEMORY_MIN_RUN_S))

        return execute

    def _scratch_arguments(self) -> list[argument]:
        # FACTS: on the host targets the outputs live in the program's scratch, which the next run
        # overwrites. The double applies this to every target (the stricter choice).
        scratch = zip(self._outputs, self._scratch, strict=True)
        return [argument._wrap(s, int(a.ctypes.data), keepalive=a) for s, a in scratch]

    def _results(self, bound: dict[str, argument]) -> list[argument]:
        if self._device_outputs:
            return [bound[_OUTPUT_PARAMETER.format(i)] for i in range(len(self._outputs))]
        return self._scratch_arguments()

    def __repr__(self) -> str:
        return f"<migraphx.program inputs={self._inputs} outputs={self._outputs} target={self._target}>"


# ---------------------------------------------------------------------------------------------------------
# module functions


def parse_onnx(
    filename: str,
    *,
    default_dim_value: int = 0,
    default_dyn_dim_value: _DynamicDimension | None = None,
    dim_params: dict[str, Any] | None = None,
    map_input_dims: dict[str, Sequence[int]] | None = None,
    map_dyn_input_dims: dict[str, Any] | None = None,
    skip_unknown_operators: bool = False,
    print_program_on_error: bool = False,
    max_loop_iterations: int = 10,
    limit_max_iterations: int = 65535,
) -> program:
    """Parse an ONNX file (migraphx_py.cpp parse_onnx). Options after ``filename`` are keyword-only here
    (stricter: their positional order differs between releases)."""
    default_dyn_dim_value = default_dyn_dim_value or _DynamicDimension(1, 1)
    # parse_onnx_from (src/onnx/onnx.cpp): the conflicting-options errors, verbatim.
    if default_dim_value != 0 and default_dyn_dim_value != _DynamicDimension(1, 1):
        raise RuntimeError("PARSE_ONNX_FROM: both default_dim_value and default_dyn_dim_valueset to non-default value")
    if map_input_dims and map_dyn_input_dims:
        raise RuntimeError(
            "PARSE_ONNX_FROM: both map_input_dims and map_dyn_input_dims non-empty, onlyone should be used"
        )
    if default_dyn_dim_value != _DynamicDimension(1, 1) or map_dyn_input_dims or dim_params:
        raise NotImplementedError("the migraphx double does not model dynamic shapes")
    _busy_in_cpp("MIGRAPHX_DOUBLE_PARSE_S")
    try:
        model = onnx.load(filename)  # external data is read relative to the model's folder (FACTS)
    except Exception as exc:
        raise RuntimeError(f"PARSE_ONNX: cannot read {filename}: {exc}") from exc
    _check_pads_constant(model)
    _set_input_dims(model, default_dim_value, map_input_dims or {})
    return program._from_model(model)


def quantize_fp16(prog: program, ins_names: Sequence[str] = ("all",)) -> None:
    """Make ``prog`` compute in fp16, in place, before compile (FACTS); see ``_fp16_model``."""
    if not isinstance(prog, program):
        raise TypeError("quantize_fp16(): incompatible function arguments")
    if list(ins_names) != ["all"]:
        raise NotImplementedError("the migraphx double models quantize_fp16(prog, ins_names=['all']) only")
    if prog.is_compiled():
        raise RuntimeError("migraphx double: quantize_fp16 after compile is not modelled (quantize before compile)")
    prog._fp16 = True


_MSGPACK_MAGIC = b"\xdeMXR-double-msgpack\x00"


def save(p: program, filename: str, format: str = "msgpack") -> None:
    """Write the program with its compile options baked in (FACTS). The double's files are its own: a
    JSON document for ``json``, a framed binary for ``msgpack``, so each fails to load as the other."""
    if not isinstance(p, program) or p._model is None:
        raise TypeError("save(): incompatible function arguments")
    payload = json.dumps(
        {
            "version": _PROGRAM_FILE_VERSION,
            "migraphx_version": _MIGRAPHX_VERSION,
            "target": p._target,
            "arch": p._arch,
            "offload_copy": p._offload_copy,
            "fp16": p._fp16,
            "model": base64.b64encode(p._model.SerializeToString()).decode(),
        }
    ).encode()
    if format == "json":
        data = payload
    elif format == "msgpack":
        data = _MSGPACK_MAGIC + struct.pack("<Q", len(payload)) + payload
    else:
        raise RuntimeError(f"Unknown format: {format}")  # src/load_save.cpp
    with open(filename, "wb") as file:
        file.write(data)


def load(filename: str, format: str = "msgpack") -> program:
    """Read a saved program; a compiled one runs without compiling again (FACTS). A different format than
    it was saved with, or a truncated or corrupt file, raises RuntimeError."""
    if format not in ("json", "msgpack"):
        raise RuntimeError(f"Unknown format: {format}")
    _busy_in_cpp("MIGRAPHX_DOUBLE_LOAD_S", os.path.getsize(filename) / _LOAD_BYTES_PER_S)
    with open(filename, "rb") as file:
        data = file.read()
    try:
        if format == "msgpack":
            start = len(_MSGPACK_MAGIC)
            magic, size, data = data[:start], data[start : start + 8], data[start + 8 :]
            if magic != _MSGPACK_MAGIC or len(size) != 8 or struct.unpack("<Q", size)[0] != len(data):
                raise ValueError("not a complete msgpack program file")
        saved = json.loads(data)
        if saved["version"] != _PROGRAM_FILE_VERSION:
            raise ValueError(f"program file version {saved['version']}, expected {_PROGRAM_FILE_VERSION}")
        prog = program._from_model(onnx.load_from_string(base64.b64decode(saved["model"], validate=True)))
    except Exception as exc:
        raise RuntimeError(f"migraphx double: cannot load {filename} as {format}: {exc}") from exc
    prog._fp16 = bool(saved["fp16"])
    if saved["target"] is not None:
        prog._finish_compile(saved["target"], bool(saved["offload_copy"]), saved["arch"])
    return prog


# ---------------------------------------------------------------------------------------------------------
# GPU helpers (GPU builds only; all synchronous: FACTS, "GPU helpers")


class _GpuBuffer:
    """Owns a helper's allocation: it is freed when the last argument using it is collected."""


def _allocate_gpu_memory(nbytes: int, host: bool = False) -> tuple[MemoryKind, int]:
    """allocate_gpu (src/targets/gpu/hip.cpp, rocm-7.2.4): hipMalloc, and when that fails, silently
    hipHostMalloc instead (MIGRAPHX_FACTS.md: the free-memory check and its "Memory not available to
    allocate buffer" were removed before rocm-7.0.0, upstream #4114). No error: the buffer is in host
    memory, and whatever reads it runs over PCIe."""
    if not host:
        try:
            return MemoryKind.DEVICE, DEVICE.allocate(MemoryKind.DEVICE, nbytes, "migraphx")
        except OutOfDeviceMemory:
            pass
    return MemoryKind.PINNED, DEVICE.allocate(MemoryKind.PINNED, nbytes, "migraphx")


def _allocate(nbytes: int, host: bool) -> tuple[int, _GpuBuffer]:
    """allocate_gpu for the helpers; returns the address and an object that frees it when collected."""
    _require_device()
    kind, address = _allocate_gpu_memory(nbytes, host)
    owner = _GpuBuffer()
    weakref.finalize(owner, DEVICE.free, kind, address)
    return address, owner


def allocate_gpu(s: shape, host: bool = False) -> argument:
    address, owner = _allocate(s.bytes() + 1, host)  # hip.cpp allocates s.bytes() + 1
    return argument._wrap(s, address, keepalive=owner)


def to_gpu(arg: argument, host: bool = False) -> argument:
    """Synchronise the device, allocate, copy (hip.cpp write_to_gpu)."""
    gpu_sync()
    if _memory_kind(arg) not in (MemoryKind.PINNED, MemoryKind.PAGEABLE):
        raise RuntimeError(f"Copy to gpu failed: {error_string(1)}")
    result = allocate_gpu(arg.get_shape(), host)
    result._write(arg._read())
    return result


def from_gpu(arg: argument) -> argument:
    """Synchronise the device and copy to a new host buffer (hip.cpp read_from_gpu)."""
    gpu_sync()
    if _memory_kind(arg) is not MemoryKind.DEVICE:
        raise RuntimeError("read_from_gpu() requires Src buffer to be on the GPU, Copy from gpu failed\n")
    host = arg._read()
    return argument._wrap(arg.get_shape(), int(host.ctypes.data), keepalive=host)


def gpu_sync() -> None:
    """hipDeviceSynchronize (hip.cpp gpu_sync)."""
    _require_device()
    DEVICE.synchronize()
    if DEVICE.sticky_error:
        raise RuntimeError(f"hip device synchronization failed: {error_string(DEVICE.sticky_error)}")
