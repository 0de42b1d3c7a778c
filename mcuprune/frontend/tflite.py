"""TensorFlow Lite flatbuffers <-> the IR, bit-exact with TFLite Micro.

Three layers, top to bottom of this file:

1. **The file as plain Python** (``TfliteGraph``, ``Tensor``, ``Operator``, ``TensorQuant``;
   ``read_tflite`` / ``write_tflite``). The schema object API shipped in the ``tflite-micro``
   wheel (``ModelT``, ``TensorT``, ...) is complete but awkward: enums are bare integers, option
   tables are classes with camelCase fields, constant data lives in a separate buffer list. Here
   options are snake_case dicts with enum *names* (``"SAME"``, ``"RELU6"``), constants sit on
   their tensor as numpy arrays, and every malformed file is a one-line ``UserError``.
2. **import_tflite**: a fully integer-quantized .tflite becomes a ``QuantModel`` as it is: int8
   weights, int32 biases, float32 scales and zero points kept exactly; the integers the kernels
   run on (multipliers, shifts, clamps) derived from those float32 scales with ``int8_params``,
   exactly as TFLM derives them in Prepare. The numpy reference on the result is TFLM, element
   for element (tests/test_tflite_frontend.py checks every intermediate of the MLPerf Tiny models).
3. **export_tflite**: the inverse. Every integer the layer holds must be what TFLM will derive
   from the scales written to the file; the exporter checks that instead of trusting it, and
   refuses (``UserError``) what TFLite cannot express, so TFLM on the exported bytes equals the
   numpy reference on the model.

What the importer normalises, and why:

* Batch 1 is dropped (IR shapes have no batch axis; the reference batches on its own).
* Per-tensor weights become per-channel arrays with the scale repeated: TFLM's conv is always
  per-channel, and its per-tensor fully connected derives the same multiplier. A per-tensor FC
  weight zero point other than 0 is refused: TFLM's per-tensor FC applies it, which the IR's
  symmetric weights cannot express. (Conv and per-channel FC kernels ignore weight zero points,
  so the IR ignores them too.)
* Depthwise weights [1, k_h, k_w, C*M] become the IR's [C*M, k_h, k_w, 1].
* INT4 weights (two per byte, the first in the low nibble, over the whole flattened tensor) become
  their integers in the IR's int8 array, the layer's ``weight_bits`` 4 (CONV_2D, DEPTHWISE_CONV_2D,
  and FULLY_CONNECTED with per-tensor weights, all that TFLM runs).
* A missing bias becomes zeros (same arithmetic).
* SAME padding becomes explicit (top, bottom, left, right), the odd extra at the bottom/right.
* A PAD (H and W only, same input and output quantization) whose only reader is a convolution
  is folded into the convolution's padding: TFLM pads with the PAD's output zero point, which is
  the convolution's input zero point, and a convolution skipping out-of-image taps is the same as
  reading that zero point. The exporter writes such padding back as PAD + VALID, so
  ``import_tflite(export_tflite(m))`` gives ``m`` back.
* QUANTIZE at a float input and DEQUANTIZE at a float output are stripped: the model is int8 end
  to end, ``meta["float_input"]`` / ``meta["float_output"]`` say the file had them (and
  ``meta["float_input_q"]`` / ``["float_output_q"]`` record their int8 side, which is
  ``model.input_q`` / ``model.output_q``), and ``reference.quantize_input`` /
  ``dequantize_output`` with those reproduce them exactly. The exporter writes them back.
* SQUEEZE is a RESHAPE (same bytes).
* Layer names are ``<op>_<k>``: the k-th layer of that op in execution order. The file's tensor
  names (often long TensorFlow scopes) are kept in ``meta["tflite_tensors"]`` (IR tensor name ->
  file tensor name, the input included), which is how the tests find TFLM's intermediates.

Refused, each with a one-line UserError naming the operator, its output tensor, the problem and
what to do: float or dynamic-range models, int16 or uint8 activations, operators outside
SUPPORTED_OPERATORS, fused activations other than NONE/RELU/RELU6/RELU_N1_TO_1, per-tensor FC
weights with a zero point, grouped convolution, broadcasting ADD, MEAN over other axes than H and
W, PAD on the batch or channel axis (or PADV2 with a value other than a real 0), QUANTIZE/DEQUANTIZE inside
the graph, several subgraphs, inputs or outputs, batch sizes other than 1. (A depthwise
convolution without a bias is imported with zeros, but note that the TFLM wheel crashes on such a
file; the exporter always writes a bias.)
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import flatbuffers
import numpy as np
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as _fb

from mcuprune.errors import UserError
from mcuprune.model.formats import pack_nibbles, unpack_nibbles
from mcuprune.model.int8_params import (
    FUSED_ACTIVATIONS,
    INT8_MAX,
    INT8_MIN,
    SOFTMAX_OUTPUT_Q,
    activation_range,
    add_multipliers,
    conv_multipliers,
    fc_bias_scale_ok,
    mean_multiplier,
    pool_quantization_ok,
    softmax_multiplier,
)
from mcuprune.model.ir import (
    INPUT,
    GraphError,
    Op,
    QParams,
    QuantLayer,
    QuantModel,
    same_padding,
    shape_product,
    verify,
)

FILE_IDENTIFIER = b"TFL3"
_SCHEMA_VERSION = 3
_BUFFER_ALIGNMENT = 16  # bytes: TFLM reads int32 biases and float data through typed pointers
INT4 = "int4"  # the tensor type whose data Tensor holds as int8 integers in [-8, 7], packed in the file


def _enum_names(enum_cls: type) -> dict[int, str]:
    """Integer value -> member name of a generated flatbuffer enum class."""
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


_OP_NAMES = _enum_names(_fb.BuiltinOperator)
_OP_CODES = {v: k for k, v in _OP_NAMES.items()}
_TYPE_NAMES = {code: name.lower() for code, name in _enum_names(_fb.TensorType).items()}
_TYPE_CODES = {v: k for k, v in _TYPE_NAMES.items()}
_OPTION_NAMES = _enum_names(_fb.BuiltinOptions)
_OPTION_CODES = {v: k for k, v in _OPTION_NAMES.items()}

# numpy dtype of each tensor type whose constant data this module reads or writes.
_NUMPY_DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype("<f4"), "float16": np.dtype("<f2"), "float64": np.dtype("<f8"),
    "int8": np.dtype("i1"), "uint8": np.dtype("u1"), "int16": np.dtype("<i2"), "uint16": np.dtype("<u2"),
    "int32": np.dtype("<i4"), "uint32": np.dtype("<u4"), "int64": np.dtype("<i8"), "uint64": np.dtype("<u8"),
    "bool": np.dtype("?"),
}

# Option fields holding a schema enum: shown as the member name in the plain dicts.
_ENUM_FIELDS: dict[str, type] = {
    "padding": _fb.Padding,
    "fusedActivationFunction": _fb.ActivationFunctionType,
    "weightsFormat": _fb.FullyConnectedOptionsWeightsFormat,
    "quantizedBiasType": _fb.TensorType,
    "outputType": _fb.TensorType,
}
_ENUM_FIELD_NAMES = {k: _enum_names(v) for k, v in _ENUM_FIELDS.items()}

# The options table each operator this module writes uses.
_OPTIONS_TYPE: dict[str, str] = {
    "ADD": "AddOptions", "CONV_2D": "Conv2DOptions", "DEPTHWISE_CONV_2D": "DepthwiseConv2DOptions",
    "FULLY_CONNECTED": "FullyConnectedOptions", "AVERAGE_POOL_2D": "Pool2DOptions", "MAX_POOL_2D": "Pool2DOptions",
    "SOFTMAX": "SoftmaxOptions", "RESHAPE": "ReshapeOptions", "SQUEEZE": "SqueezeOptions", "MEAN": "ReducerOptions",
    "PAD": "PadOptions", "PADV2": "PadV2Options", "QUANTIZE": "QuantizeOptions", "DEQUANTIZE": "DequantizeOptions",
    "TANH": "TanhOptions", "MUL": "MulOptions", "CONCATENATION": "ConcatenationOptions",
}


# --- 1. the file as plain Python --------------------------------------------------------------------


@dataclass
class TensorQuant:
    """Affine quantization of one tensor, ``real = scale * (q - zero_point)``; one entry per slice
    along ``quantized_dimension`` for per-channel tensors. Scales are float32: all a file holds."""

    scale: np.ndarray
    zero_point: np.ndarray
    quantized_dimension: int = 0

    def __post_init__(self) -> None:
        self.scale = np.atleast_1d(np.asarray(self.scale, dtype=np.float32))
        self.zero_point = np.atleast_1d(np.asarray(self.zero_point, dtype=np.int64))
        if self.zero_point.size == 1 and self.scale.size > 1:
            self.zero_point = np.repeat(self.zero_point, self.scale.size)

    @classmethod
    def of(cls, q: QParams) -> TensorQuant:
        return cls(np.float32(q.scale), q.zero_point)

    def qparams(self) -> QParams:
        """The per-tensor QParams (the scale stays the file's float32 value, as a Python float)."""
        return QParams(scale=float(self.scale[0]), zero_point=int(self.zero_point[0]))


@dataclass
class Tensor:
    """One tensor; ``data`` is set for constants (weights, bias, shapes, paddings). An int4 tensor's
    data is its integers in an int8 array of the tensor's shape; the file packs them two per byte
    (TFLite's order: over the flattened tensor, the first of two in the low nibble)."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # lower-case schema name: "int8", "float32", ...
    quant: TensorQuant | None = None
    data: np.ndarray | None = None


@dataclass
class Operator:
    """One operator; ``inputs`` holds -1 for an omitted optional input (e.g. no bias)."""

    op: str  # builtin operator name: "CONV_2D", ...
    inputs: list[int]
    outputs: list[int]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TfliteGraph:
    """The (single) subgraph of a .tflite file, operators in execution order."""

    tensors: list[Tensor]
    operators: list[Operator]
    inputs: list[int]
    outputs: list[int]
    name: str = ""

    def tensor_index(self, name: str) -> int:
        for i, t in enumerate(self.tensors):
            if t.name == name:
                return i
        raise KeyError(name)


def _camel_to_snake(name: str) -> str:
    """``dilationWFactor`` -> ``dilation_w_factor``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _decode(s: Any) -> str:
    if s is None:
        return ""
    return bytes(s).decode("utf-8", errors="replace") if isinstance(s, bytes | bytearray) else str(s)


def _options_dict(options: Any) -> dict[str, Any]:
    """A generated ``...OptionsT`` object as a snake_case dict, enums by name."""
    out: dict[str, Any] = {}
    for key, value in vars(options).items():
        if key in _ENUM_FIELD_NAMES and isinstance(value, int | np.integer):
            value = _ENUM_FIELD_NAMES[key].get(int(value), int(value))
        elif isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, np.generic):
            value = value.item()
        out[_camel_to_snake(key)] = value
    return out


def _unpack(data: bytes, what: str) -> Any:
    """The generated object tree of a .tflite, every failure a one-line UserError."""
    hint = "export it again with the TFLite converter"
    if len(data) < 8:
        raise UserError(f"{what}: only {len(data)} bytes, not a .tflite flatbuffer; {hint}")
    root = int.from_bytes(data[0:4], "little")
    if data[4:8] != FILE_IDENTIFIER:
        raise UserError(f"{what}: file identifier {bytes(data[4:8])!r} is not {FILE_IDENTIFIER!r}, so this is "
                        f"not a .tflite flatbuffer; {hint}")
    if root < 8 or root + 4 > len(data):
        raise UserError(f"{what}: the root table lies outside the {len(data)}-byte file (truncated?); {hint}")
    try:
        return _fb.ModelT.InitFromObj(_fb.Model.GetRootAsModel(data, 0))
    except Exception as exc:  # noqa: BLE001 - the generated reader raises struct.error, IndexError, ...
        reason = _one_line(str(exc))[:100] or type(exc).__name__
        raise UserError(f"{what}: corrupt or truncated .tflite flatbuffer ({reason}); {hint}") from None


def _buffer_bytes(buf: Any, data: bytes, what: str) -> bytes | None:
    """Bytes of one buffer: inline, or stored after the flatbuffer (offset/size, files over 2 GB)."""
    if buf is None:
        return None
    if buf.data is not None and len(buf.data):
        return np.asarray(buf.data, dtype=np.uint8).tobytes()
    if buf.offset and buf.offset > 1:
        if buf.offset + buf.size > len(data):
            raise UserError(f"{what}: a constant buffer lies past the end of the file (truncated?); export it again")
        return bytes(data[buf.offset : buf.offset + buf.size])
    return None


def _read_quant(q: Any) -> TensorQuant | None:
    if q is None or q.scale is None or len(q.scale) == 0:
        return None
    zp = q.zeroPoint if q.zeroPoint is not None and len(q.zeroPoint) else np.zeros(len(q.scale), np.int64)
    return TensorQuant(np.asarray(q.scale, np.float32), np.asarray(zp, np.int64), int(q.quantizedDimension))


def read_tflite(data: bytes, what: str = "model") -> TfliteGraph:
    """Parse .tflite bytes (a single subgraph). Anything malformed -- not a flatbuffer, truncated,
    several subgraphs, constant data that does not fit its tensor -- is a one-line UserError that
    starts with `what`."""
    data = bytes(data)
    fb = _unpack(data, what)
    subgraphs = fb.subgraphs or []
    if len(subgraphs) != 1:
        raise UserError(f"{what}: {len(subgraphs)} subgraphs; mcuprune reads single-subgraph models (no control "
                        "flow such as WHILE or IF): convert the model without them")
    sg, buffers, codes = subgraphs[0], fb.buffers or [], fb.operatorCodes or []
    tensors: list[Tensor] = []
    for i, t in enumerate(sg.tensors or []):
        dtype = _TYPE_NAMES.get(int(t.type), f"type{t.type}")
        name = _decode(t.name)
        shape = tuple(int(d) for d in t.shape) if t.shape is not None else ()
        if not 0 <= t.buffer < max(len(buffers), 1):
            raise UserError(f"{what}: tensor {i} ({name!r}) refers to buffer {t.buffer} of {len(buffers)}; "
                            "the file is corrupt, export it again")
        raw = _buffer_bytes(buffers[t.buffer], data, what) if buffers else None
        array = None
        if raw is not None and dtype == INT4:
            count = shape_product(shape) if shape else 1
            if len(raw) != (count + 1) // 2:
                raise UserError(f"{what}: tensor {i} ({name!r}) holds {len(raw)} bytes, its shape {shape} int4 "
                                f"needs {(count + 1) // 2}; the file is corrupt, export it again")
            array = unpack_nibbles(np.frombuffer(raw, np.uint8), count).reshape(shape)
        elif raw is not None:
            np_dtype = _NUMPY_DTYPES.get(dtype)
            if np_dtype is None:
                array = np.frombuffer(raw, np.uint8).copy()  # strings, other packed types: kept as raw bytes
            else:
                count = shape_product(shape) if shape else 1
                if len(raw) != count * np_dtype.itemsize:
                    raise UserError(f"{what}: tensor {i} ({name!r}) holds {len(raw)} bytes, its shape {shape} "
                                    f"{dtype} needs {count * np_dtype.itemsize}; the file is corrupt, export it again")
                array = np.frombuffer(raw, np_dtype).reshape(shape).copy()
        tensors.append(Tensor(name, shape, dtype, _read_quant(t.quantization), array))
    operators: list[Operator] = []
    for k, op in enumerate(sg.operators or []):
        if not 0 <= op.opcodeIndex < len(codes):
            raise UserError(f"{what}: operator {k} uses opcode {op.opcodeIndex} of {len(codes)}; the file is "
                            "corrupt, export it again")
        code = codes[op.opcodeIndex]
        builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
        name = _decode(code.customCode) if builtin == _fb.BuiltinOperator.CUSTOM else _OP_NAMES.get(builtin)
        options = _options_dict(op.builtinOptions) if op.builtinOptions is not None else {}
        ins = [int(v) for v in (op.inputs if op.inputs is not None else [])]
        outs = [int(v) for v in (op.outputs if op.outputs is not None else [])]
        if any(not -1 <= v < len(tensors) for v in ins + outs):
            raise UserError(f"{what}: operator {k} refers to a tensor outside the {len(tensors)} tensors; the file "
                            "is corrupt, export it again")
        operators.append(Operator(name or f"BUILTIN_{builtin}", ins, outs, options))
    ios = [int(v) for v in (sg.inputs if sg.inputs is not None else [])], \
        [int(v) for v in (sg.outputs if sg.outputs is not None else [])]
    if any(not 0 <= v < len(tensors) for v in ios[0] + ios[1]):
        raise UserError(f"{what}: a model input or output is not a tensor; the file is corrupt, export it again")
    return TfliteGraph(tensors, operators, ios[0], ios[1], _decode(sg.name))


class _AlignedBufferT(_fb.BufferT):
    """A BufferT whose data starts on a 16-byte boundary of the file (the stock Pack aligns to 4)."""

    def __init__(self, raw: bytes | None) -> None:
        super().__init__()
        self._raw = raw

    def Pack(self, builder: flatbuffers.Builder) -> int:  # noqa: N802 - the generated API's name
        vec = None
        if self._raw:
            n = len(self._raw)
            builder.StartVector(1, n, _BUFFER_ALIGNMENT)
            builder.head = builder.head - n
            builder.Bytes[builder.head : builder.head + n] = self._raw
            vec = builder.EndVector()
        _fb.BufferStart(builder)
        if vec is not None:
            _fb.BufferAddData(builder, vec)
        return _fb.BufferEnd(builder)


def _options_object(options_type: str, options: dict[str, Any]) -> Any:
    """A generated ``...OptionsT`` object from a snake_case dict (enum fields by name)."""
    obj = getattr(_fb, options_type + "T")()
    by_snake = {_camel_to_snake(k): k for k in vars(obj)}
    for key, value in options.items():
        attr = by_snake.get(key)
        if attr is None:
            raise ValueError(f"{options_type} has no field {key!r} (fields: {sorted(by_snake)})")
        if isinstance(value, str) and attr in _ENUM_FIELDS:
            value = getattr(_ENUM_FIELDS[attr], value)
        elif isinstance(value, np.generic):
            value = value.item()
        elif isinstance(value, tuple | np.ndarray):
            value = [int(v) for v in np.asarray(value).ravel()]
        setattr(obj, attr, value)
    return obj


def _quant_object(q: TensorQuant | None) -> Any:
    if q is None:
        return None
    out = _fb.QuantizationParametersT()
    out.scale = [float(s) for s in q.scale]
    out.zeroPoint = [int(z) for z in q.zero_point]
    out.quantizedDimension = int(q.quantized_dimension)
    return out


def write_tflite(graph: TfliteGraph) -> bytes:
    """Serialise a TfliteGraph to .tflite bytes TFLM loads.

    Buffer 0 is the empty sentinel the schema reserves (every non-constant tensor points at it);
    each constant gets its own 16-byte-aligned buffer. Operator codes are shared per operator.
    """
    buffers: list[Any] = [_AlignedBufferT(None)]
    fb_tensors = []
    for i, t in enumerate(graph.tensors):
        ft = _fb.TensorT()
        ft.name, ft.shape, ft.type = t.name, [int(d) for d in t.shape], _TYPE_CODES[t.dtype]
        ft.quantization, ft.buffer = _quant_object(t.quant), 0
        if t.data is not None:
            array = np.asarray(t.data)
            if array.size != (shape_product(t.shape) if t.shape else 1):
                raise ValueError(f"tensor {i} ({t.name!r}) has {array.size} values for shape {t.shape}")
            ft.buffer = len(buffers)
            if t.dtype == INT4:
                if array.size and (array.min() < -8 or array.max() > 7):
                    raise ValueError(f"tensor {i} ({t.name!r}) is int4 but holds values outside [-8, 7]")
                raw = pack_nibbles(array).tobytes()
            else:
                raw = np.ascontiguousarray(array.astype(_NUMPY_DTYPES[t.dtype])).tobytes()
            buffers.append(_AlignedBufferT(raw))
        fb_tensors.append(ft)
    codes: list[Any] = []
    code_index: dict[str, int] = {}
    fb_ops = []
    for op in graph.operators:
        if op.op not in code_index:
            oc = _fb.OperatorCodeT()
            oc.builtinCode = _OP_CODES[op.op]
            oc.deprecatedBuiltinCode = min(oc.builtinCode, _fb.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
            oc.version = 1  # TFLM does not check operator versions
            code_index[op.op] = len(codes)
            codes.append(oc)
        fo = _fb.OperatorT()
        fo.opcodeIndex = code_index[op.op]
        fo.inputs, fo.outputs = [int(v) for v in op.inputs], [int(v) for v in op.outputs]
        if op.options:
            options_type = _OPTIONS_TYPE[op.op]
            fo.builtinOptionsType = _OPTION_CODES[options_type]
            fo.builtinOptions = _options_object(options_type, op.options)
        fb_ops.append(fo)
    sg = _fb.SubGraphT()
    sg.tensors, sg.operators = fb_tensors, fb_ops
    sg.inputs, sg.outputs = [int(v) for v in graph.inputs], [int(v) for v in graph.outputs]
    sg.name = graph.name or None
    model = _fb.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = _SCHEMA_VERSION, codes, [sg], buffers
    model.description = "mcuprune"
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


# --- 2. import --------------------------------------------------------------------------------------

SUPPORTED_OPERATORS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D", "AVERAGE_POOL_2D", "ADD",
                       "MEAN", "PAD", "PADV2", "RESHAPE", "SQUEEZE", "SOFTMAX",
                       "QUANTIZE (float model input only)", "DEQUANTIZE (float model output only)")
_CONVERT_INT8 = ("convert it with full-integer quantization (TFLiteConverter with a representative dataset and "
                 "TFLITE_BUILTINS_INT8)")


def _one_line(s: str) -> str:
    return " ".join(s.split())


class _Importer:
    """One import: the file, the model's name (for messages), and the layers built so far."""

    def __init__(self, graph: TfliteGraph, name: str) -> None:
        self.g, self.name = graph, name
        self.producer: dict[int, int] = {}  # tensor index -> index of the operator writing it
        self.readers: dict[int, list[int]] = {}  # tensor index -> operators reading it
        for k, op in enumerate(graph.operators):
            for t in op.outputs:
                self.producer[t] = k
            for t in op.inputs:
                if t >= 0:
                    self.readers.setdefault(t, []).append(k)
        self.k = -1  # the operator being imported, for messages
        self.ir_name: dict[int, str] = {}  # tensor index -> IR tensor name (INPUT or a layer's name)

    # messages ---------------------------------------------------------------------------------------

    def where(self, k: int | None = None) -> str:
        k = self.k if k is None else k
        if k < 0:  # the model boundary, before any operator
            return self.name
        op = self.g.operators[k]
        out = self.g.tensors[op.outputs[0]].name if op.outputs else "?"
        return _one_line(f"{self.name}: operator {k} ({op.op}, output tensor {out!r})")

    def fail(self, problem: str, todo: str) -> UserError:
        return UserError(_one_line(f"{self.where()}: {problem}; {todo}"))

    # tensors ----------------------------------------------------------------------------------------

    def tensor(self, i: int) -> Tensor:
        return self.g.tensors[i]

    def check_activation(self, i: int, k: int | None = None) -> None:
        """An activation (non-constant) tensor must be int8: say what else it is and what to do."""
        t = self.tensor(i)
        if t.dtype == "int8":
            return
        where = self.where(k)
        if t.dtype == "float32":
            raise UserError(_one_line(f"{where}: tensor {t.name!r} is float32, so this is a float model, not an "
                                      f"integer-quantized one; {_CONVERT_INT8}"))
        if t.dtype == "int16":
            raise UserError(_one_line(f"{where}: tensor {t.name!r} has int16 activations (16x8 quantization), "
                                      "which mcuprune does not support; convert with int8 activations"))
        raise UserError(_one_line(f"{where}: tensor {t.name!r} is {t.dtype}; mcuprune needs int8 activations "
                                  f"(uint8 is the legacy scheme): {_CONVERT_INT8}"))

    def qparams(self, i: int) -> QParams:
        t = self.tensor(i)
        if t.quant is None:
            raise self.fail(f"tensor {t.name!r} has no quantization", _CONVERT_INT8)
        if t.quant.scale.size != 1:
            raise self.fail(f"activation tensor {t.name!r} is quantized per channel", _CONVERT_INT8)
        self.check_scales(t)
        return t.quant.qparams()

    def check_scales(self, t: Tensor) -> None:
        scales = t.quant.scale
        if not (np.isfinite(scales).all() and (scales > 0).all()):
            raise self.fail(f"tensor {t.name!r} has a scale that is not a positive finite number",
                            "the file is corrupt or was quantized wrongly; export it again")

    def shape(self, i: int) -> tuple[int, ...]:
        """An activation's shape without its batch axis, which must be 1."""
        t = self.tensor(i)
        if len(t.shape) < 2 or t.shape[0] != 1:
            raise self.fail(f"tensor {t.name!r} has shape {t.shape}, not a batch of 1",
                            "convert the model with batch size 1")
        return tuple(int(d) for d in t.shape[1:])

    def constant(self, i: int, what: str, dtype: str | tuple[str, ...] | None = None) -> np.ndarray:
        t = self.tensor(i) if i >= 0 else None
        if t is None or t.data is None:
            raise self.fail(f"its {what} is not a constant tensor", "freeze the model so it is stored in the file")
        dtypes = (dtype,) if isinstance(dtype, str) else dtype
        if dtypes is not None and t.dtype not in dtypes:
            raise self.fail(f"its {what} {t.name!r} is {t.dtype}, not {' or '.join(dtypes)}", _CONVERT_INT8)
        return t.data

    def weights(self, op: Operator) -> tuple[np.ndarray, int]:
        """The op's int8 or int4 weights (int4 ones as their integers in an int8 array) and their width."""
        w = self.constant(op.inputs[1], "weights", ("int8", INT4))
        return w, 4 if self.tensor(op.inputs[1]).dtype == INT4 else 8

    def activation_input(self, op: Operator, n: int) -> int:
        i = op.inputs[n]
        if i < 0 or self.tensor(i).data is not None:
            raise self.fail(f"input {n} is a constant", "mcuprune takes operands that are computed by the model")
        if i not in self.ir_name:
            raise self.fail(f"it reads tensor {self.tensor(i).name!r}, which nothing before it computes",
                            "export the model again")
        return i

    def fused_clamp(self, op: Operator, out_q: QParams) -> dict[str, Any]:
        """The layer fields of the op's fused activation: its real clamp and TFLM's int8 act_min/act_max."""
        act = str(op.options.get("fused_activation_function", "NONE"))
        if act not in FUSED_ACTIVATIONS:
            raise self.fail(f"fused activation {act} is not supported (only {', '.join(FUSED_ACTIVATIONS)})",
                            "convert the model with a separate activation or one of those")
        try:
            act_min, act_max = activation_range(FUSED_ACTIVATIONS[act], out_q)
        except ValueError as exc:
            raise self.fail(str(exc), "check the output scale") from None
        return {"clamp": FUSED_ACTIVATIONS[act], "act_min": act_min, "act_max": act_max}

    def stride(self, op: Operator) -> tuple[int, int]:
        return int(op.options.get("stride_h", 1)), int(op.options.get("stride_w", 1))

    def window_padding(self, op: Operator, hw: tuple[int, ...], k: tuple[int, int], stride: tuple[int, int],
                       dilation: tuple[int, int]) -> tuple[int, int, int, int]:
        mode = op.options.get("padding", "VALID")
        if mode == "SAME":
            return same_padding(hw[0], hw[1], k[0], k[1], stride, dilation)
        if mode == "VALID":
            return (0, 0, 0, 0)
        raise self.fail(f"padding {mode} is not SAME or VALID", "export the model again")

    # operators --------------------------------------------------------------------------------------

    def layer(self, op: Operator, kind: Op, **kw: Any) -> QuantLayer:
        x, y = self.activation_input(op, 0), op.outputs[0]
        self.check_activation(y)
        base = dict(name=f"t{y}", op=kind, in_shape=self.shape(x), out_shape=self.shape(y), input_q=self.qparams(x),
                    output_q=self.qparams(y), inputs=(self.ir_name[x],))
        return QuantLayer(**(base | kw))

    def bias(self, op: Operator, channels: int) -> np.ndarray:
        if len(op.inputs) < 3 or op.inputs[2] < 0:
            return np.zeros(channels, dtype=np.int32)
        b = self.constant(op.inputs[2], "bias")
        if self.tensor(op.inputs[2]).dtype != "int32":
            raise self.fail(f"its bias is {self.tensor(op.inputs[2]).dtype}, not int32", _CONVERT_INT8)
        return b.reshape(channels).astype(np.int32)

    def weight_scales(self, i: int, channels: int, dim: int) -> np.ndarray:
        q = self.tensor(i).quant
        if q is None:
            raise self.fail(f"weights {self.tensor(i).name!r} are not quantized", _CONVERT_INT8)
        self.check_scales(self.tensor(i))
        if q.scale.size == 1:
            return np.repeat(q.scale, channels).astype(np.float32)
        if q.scale.size != channels or q.quantized_dimension != dim:
            raise self.fail(f"weights are quantized along axis {q.quantized_dimension} with {q.scale.size} scales, "
                            f"not per output channel ({channels} along axis {dim})", _CONVERT_INT8)
        return q.scale.astype(np.float32)

    def conv(self, op: Operator, depthwise: bool) -> QuantLayer:
        w, bits = self.weights(op)
        x_shape = self.shape(self.activation_input(op, 0))
        if len(x_shape) != 3 or w.ndim != 4:
            raise self.fail(f"input shape {x_shape} or weights {w.shape} are not 2-D convolution shapes",
                            "export the model again")
        c_in = x_shape[2]
        if depthwise:
            c_out = int(w.shape[3])
            multiplier = c_out // c_in if c_in else 0
            declared = int(op.options.get("depth_multiplier", multiplier) or multiplier)
            if not multiplier or c_out % c_in or declared != multiplier:
                raise self.fail(f"{c_out} output channels do not fit {c_in} inputs x depth multiplier {declared}",
                                "export the model again")
            weights = np.ascontiguousarray(w[0].transpose(2, 0, 1)[..., None])  # [C*M, k_h, k_w, 1]
            extra: dict[str, Any] = {"depth_multiplier": multiplier}
        else:
            c_out = int(w.shape[0])
            if w.shape[3] != c_in:
                raise self.fail(f"grouped convolution ({c_in} input channels, weights take {w.shape[3]})",
                                "mcuprune supports ungrouped and depthwise convolutions only")
            weights, extra = w, {}
        k = (int(weights.shape[1]), int(weights.shape[2]))
        stride = self.stride(op)
        dilation = int(op.options.get("dilation_h_factor", 1)), int(op.options.get("dilation_w_factor", 1))
        padding = self.window_padding(op, x_shape, k, stride, dilation)
        scales = self.weight_scales(op.inputs[1], c_out, 3 if depthwise else 0)
        in_q, out_q = self.qparams(op.inputs[0]), self.qparams(op.outputs[0])
        multiplier, shift = conv_multipliers(in_q.scale, scales, out_q.scale, c_out)
        activation = self.fused_clamp(op, out_q)
        return self.layer(op, Op.DEPTHWISE_CONV2D if depthwise else Op.CONV2D, weights=weights,
                          bias=self.bias(op, c_out), weight_scales=scales, multiplier=multiplier, shift=shift,
                          **activation, stride=stride, padding=padding, dilation=dilation, weight_bits=bits,
                          **extra)

    def dense(self, op: Operator) -> QuantLayer:
        w, bits = self.weights(op)
        x = self.activation_input(op, 0)
        if w.ndim != 2 or shape_product(self.shape(x)) != w.shape[1]:
            raise self.fail(f"weights {w.shape} do not take the input {self.tensor(x).shape} (batch 1)",
                            "convert the model with batch size 1")
        if op.options.get("keep_num_dims") and len(self.tensor(x).shape) > 2:
            raise self.fail("keep_num_dims on a multi-dimensional input", "convert without keep_num_dims")
        q = self.tensor(op.inputs[1]).quant
        c_out = int(w.shape[0])
        scales = self.weight_scales(op.inputs[1], c_out, 0)
        in_q, out_q = self.qparams(x), self.qparams(op.outputs[0])
        if q is not None and q.scale.size == 1:
            if int(q.zero_point[0]) != 0:
                raise self.fail(f"per-tensor weights with zero point {int(q.zero_point[0])}",
                                "quantize the weights symmetrically (zero point 0)")
            bias_q = self.tensor(op.inputs[2]).quant if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
            if bias_q is not None and not fc_bias_scale_ok(in_q.scale, q.scale[0], bias_q.scale[0], out_q.scale):
                raise self.fail("its bias scale is not input scale x weight scale (TFLM refuses the model)",
                                "export the model again")
        multiplier, shift = conv_multipliers(in_q.scale, scales, out_q.scale, c_out)
        activation = self.fused_clamp(op, out_q)
        return self.layer(op, Op.DENSE, weights=w, bias=self.bias(op, c_out), weight_scales=scales,
                          multiplier=multiplier, shift=shift, weight_bits=bits, **activation)

    def pool(self, op: Operator, kind: Op) -> QuantLayer:
        x = self.activation_input(op, 0)
        in_q, out_q = self.qparams(x), self.qparams(op.outputs[0])
        if not pool_quantization_ok(in_q, out_q):
            raise self.fail("input and output quantization differ (TFLM refuses the model)", "export the model again")
        window = int(op.options.get("filter_height", 1)), int(op.options.get("filter_width", 1))
        stride = self.stride(op)
        padding = self.window_padding(op, self.shape(x), window, stride, (1, 1))
        activation = self.fused_clamp(op, out_q)
        return self.layer(op, kind, window=window, stride=stride, padding=padding, **activation)

    def add(self, op: Operator) -> QuantLayer:
        a, b = self.activation_input(op, 0), self.activation_input(op, 1)
        if self.tensor(a).shape != self.tensor(b).shape:
            raise self.fail(f"broadcasting {self.tensor(a).shape} + {self.tensor(b).shape}",
                            "mcuprune adds tensors of one shape only")
        self.check_activation(b)
        q1, q2, out_q = self.qparams(a), self.qparams(b), self.qparams(op.outputs[0])
        try:
            multiplier, shift = add_multipliers(q1.scale, q2.scale, out_q.scale)
        except ValueError as exc:
            raise self.fail(str(exc), "give the sum a larger output scale") from None
        activation = self.fused_clamp(op, out_q)
        return self.layer(op, Op.ADD, inputs=(self.ir_name[a], self.ir_name[b]), other_q=q2,
                          multiplier=multiplier, shift=shift, **activation)

    def mean(self, op: Operator) -> QuantLayer:
        x = self.activation_input(op, 0)
        shape = self.shape(x)
        axes = {int(a) % (len(shape) + 1) for a in np.ravel(self.constant(op.inputs[1], "axes"))}
        if len(shape) != 3 or axes != {1, 2}:
            raise self.fail(f"mean over axes {sorted(axes)} of a {len(shape) + 1}-D tensor",
                            "mcuprune supports the mean over H and W of an NHWC tensor (global average pooling)")
        in_q, out_q = self.qparams(x), self.qparams(op.outputs[0])
        multiplier, shift = mean_multiplier(in_q.scale, out_q.scale, shape[0] * shape[1])
        return self.layer(op, Op.MEAN, multiplier=np.array([multiplier], np.int32), shift=np.array([shift], np.int32))

    def pad(self, op: Operator) -> QuantLayer:
        x = self.activation_input(op, 0)
        pads = np.asarray(self.constant(op.inputs[1], "paddings")).reshape(-1, 2)
        out_q = self.qparams(op.outputs[0])
        if len(self.shape(x)) != 3 or pads.shape[0] != 4:
            raise self.fail(f"padding a {len(self.shape(x)) + 1}-D tensor", "mcuprune pads NHWC feature maps")
        if pads[0].any() or pads[3].any() or (pads < 0).any():
            raise self.fail(f"paddings {pads.tolist()} pad the batch or channel axis",
                            "mcuprune pads H and W only, by non-negative amounts")
        if op.op == "PADV2" and len(op.inputs) > 2 and op.inputs[2] >= 0:
            value = int(np.ravel(self.constant(op.inputs[2], "pad value"))[0])
            if value != out_q.zero_point:
                raise self.fail(f"PADV2 pads with {value}, not the output zero point {out_q.zero_point} (a real 0)",
                                "pad with zeros")
        return self.layer(op, Op.PAD, padding=(int(pads[1, 0]), int(pads[1, 1]), int(pads[2, 0]), int(pads[2, 1])))

    def reshape(self, op: Operator) -> QuantLayer:
        return self.layer(op, Op.RESHAPE)

    def softmax(self, op: Operator) -> QuantLayer:
        x = self.activation_input(op, 0)
        out_q = self.qparams(op.outputs[0])
        if out_q != SOFTMAX_OUTPUT_Q:
            raise self.fail(f"int8 softmax output quantization {out_q} is not scale 1/256, zero point -128 "
                            "(TFLM refuses it)", "export the model again")
        try:
            multiplier, shift = softmax_multiplier(self.qparams(x).scale, float(op.options.get("beta", 1.0)))
        except ValueError as exc:
            raise self.fail(str(exc), "check the softmax input scale and beta") from None
        return self.layer(op, Op.SOFTMAX, multiplier=np.array([multiplier], np.int32),
                          shift=np.array([shift], np.int32))

    def convert(self, op: Operator) -> QuantLayer:
        handlers = {
            "CONV_2D": lambda: self.conv(op, depthwise=False),
            "DEPTHWISE_CONV_2D": lambda: self.conv(op, depthwise=True),
            "FULLY_CONNECTED": lambda: self.dense(op),
            "MAX_POOL_2D": lambda: self.pool(op, Op.MAXPOOL2D),
            "AVERAGE_POOL_2D": lambda: self.pool(op, Op.AVGPOOL2D),
            "ADD": lambda: self.add(op),
            "MEAN": lambda: self.mean(op),
            "PAD": lambda: self.pad(op),
            "PADV2": lambda: self.pad(op),
            "RESHAPE": lambda: self.reshape(op),
            "SQUEEZE": lambda: self.reshape(op),
            "SOFTMAX": lambda: self.softmax(op),
        }
        if op.op in ("QUANTIZE", "DEQUANTIZE"):
            raise self.fail(f"{op.op} inside the model (mcuprune strips it only at a float input or output)",
                            "convert the model int8 end to end")
        if op.op not in handlers:
            raise self.fail("this operator is not supported", f"supported operators: {', '.join(SUPPORTED_OPERATORS)}")
        if len(op.outputs) != 1:
            raise self.fail(f"{len(op.outputs)} outputs", "export the model again")
        needed = 2 if op.op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MEAN", "PAD", "PADV2") else 1
        if len(op.inputs) < needed:
            raise self.fail(f"{len(op.inputs)} inputs where it takes {needed}", "export the model again")
        return handlers[op.op]()

    # the model boundary -----------------------------------------------------------------------------

    def boundary(self) -> tuple[int, int, set[int]]:
        """(int8 input tensor, int8 output tensor, operators stripped), with a float input's QUANTIZE and
        a float output's DEQUANTIZE stripped."""
        g = self.g
        if len(g.inputs) != 1 or len(g.outputs) != 1:
            raise UserError(f"{self.name}: {len(g.inputs)} inputs and {len(g.outputs)} outputs; mcuprune imports "
                            "models with one input and one output")
        x, y, skip = g.inputs[0], g.outputs[0], set()
        readers = self.readers.get(x, [])
        if self.tensor(x).dtype == "float32" and len(readers) == 1 and g.operators[readers[0]].op == "QUANTIZE":
            skip.add(readers[0])
            x = g.operators[readers[0]].outputs[0]
        k = self.producer.get(y)
        if self.tensor(y).dtype == "float32" and k is not None and g.operators[k].op == "DEQUANTIZE":
            skip.add(k)
            y = g.operators[k].inputs[0]
        self.check_activation(x, readers[0] if readers else None)
        self.check_activation(y, k)
        return x, y, skip

    def run(self) -> QuantModel:
        x, y, skip = self.boundary()
        self.ir_name[x] = INPUT
        input_shape = tuple(int(d) for d in self.tensor(x).shape[1:])
        if not input_shape or self.tensor(x).shape[0] != 1:
            raise UserError(f"{self.name}: the input has shape {self.tensor(x).shape}, not a batch of 1; convert the "
                            "model with batch size 1")
        input_q = self.qparams(x)
        layers: list[QuantLayer] = []
        tensor_of = {INPUT: self.tensor(x).name}  # IR tensor name -> the file's tensor name
        for k, op in enumerate(self.g.operators):
            if k in skip:
                continue
            self.k = k
            for i in op.inputs:
                if i >= 0 and self.tensor(i).data is None:
                    self.check_activation(i, k)
            try:
                layer = self.convert(op)
            except ValueError as exc:  # a rescale factor TFLM could not use either (e.g. a scale of 1e30)
                raise self.fail(str(exc), "check the model's quantization") from None
            self.ir_name[op.outputs[0]] = layer.name
            tensor_of[layer.name] = self.tensor(op.outputs[0]).name
            layers.append(layer)
        if not layers or self.producer.get(y) != self.k or self.ir_name.get(y) != layers[-1].name:
            raise UserError(f"{self.name}: the model output is not computed by its last operator; mcuprune "
                            "imports models whose last operator computes the output")
        layers = _fold_pads_into_convs(layers)
        layers, renamed = _name_layers(layers)
        float_input = self.tensor(self.g.inputs[0]).dtype == "float32"
        float_output = self.tensor(self.g.outputs[0]).dtype == "float32"
        meta: dict[str, Any] = {
            "source": "tflite",
            "float_input": float_input,
            "float_output": float_output,
            "tflite_tensors": {renamed[k]: v for k, v in tensor_of.items() if k in renamed},  # folded PADs go
        }
        # The stripped QUANTIZE / DEQUANTIZE's int8 side, as imported (= input_q / output_q): what
        # reference.quantize_input / dequantize_output take to reproduce them exactly.
        if float_input:
            meta["float_input_q"] = {"scale": input_q.scale, "zero_point": input_q.zero_point}
        if float_output:
            out_q = layers[-1].output_q
            meta["float_output_q"] = {"scale": out_q.scale, "zero_point": out_q.zero_point}
        model = QuantModel(name=self.name, input_shape=input_shape, input_q=input_q,
                           num_classes=shape_product(layers[-1].out_shape), layers=tuple(layers), meta=meta)
        try:
            verify(model)
        except GraphError as exc:
            raise UserError(_one_line(f"{self.name}: {exc}; the file's shapes do not agree with its operators")) \
                from None
        return model


def _fold_pads_into_convs(layers: list[QuantLayer]) -> list[QuantLayer]:
    """Fold each PAD whose only reader is a conv/depthwise (and that keeps its quantization) into that
    conv's padding: TFLM pads with the PAD's output zero point, the conv's input zero point, which is
    exactly what a conv skipping out-of-image taps reads."""
    by_name = {layer.name: layer for layer in layers}
    readers: dict[str, list[str]] = {}
    for layer in layers:
        for name in layer.inputs:
            readers.setdefault(name, []).append(layer.name)
    folded: set[str] = set()
    out = []
    for layer in layers:
        src = by_name.get(layer.inputs[0])
        if (layer.op in (Op.CONV2D, Op.DEPTHWISE_CONV2D) and src is not None and src.op is Op.PAD
                and readers[src.name] == [layer.name] and src.input_q == src.output_q):
            padding = tuple(a + b for a, b in zip(layer.padding, src.padding, strict=True))
            layer = replace(layer, inputs=src.inputs, in_shape=src.in_shape, padding=padding)
            folded.add(src.name)
        out.append(layer)
    return [layer for layer in out if layer.name not in folded]


def _name_layers(layers: list[QuantLayer]) -> tuple[list[QuantLayer], dict[str, str]]:
    """Name layers ``<op>_<k>`` (k counts that op in execution order) and rewrite their inputs."""
    counts: Counter[str] = Counter()
    renamed: dict[str, str] = {INPUT: INPUT}
    for layer in layers:
        renamed[layer.name] = f"{layer.op.value}_{counts[layer.op.value]}"
        counts[layer.op.value] += 1
    return [replace(layer, name=renamed[layer.name], inputs=tuple(renamed[n] for n in layer.inputs))
            for layer in layers], renamed


def import_tflite(data: bytes, name: str) -> QuantModel:
    """A fully integer-quantized .tflite as a QuantModel, with the integers TFLM derives.

    `name` names the model (and starts every error message). Supported: see SUPPORTED_OPERATORS and
    the module docstring. Anything else -- a float model, int16 activations, an unsupported
    operator or option -- is a one-line UserError naming the operator, its output tensor, the
    problem and what to do.
    """
    return _Importer(read_tflite(data, name), name).run()


# --- 3. export --------------------------------------------------------------------------------------


def _fail(layer: QuantLayer, problem: str, todo: str) -> UserError:
    return UserError(_one_line(f"layer {layer.name} ({layer.op.value}): {problem}; {todo}"))


def _fused_activation(layer: QuantLayer) -> str:
    """The TFLite fused activation whose TFLM clamp is exactly the layer's [act_min, act_max]: the
    layer's own real clamp when it is one of them, else the first that gives the same integers."""
    ordered = sorted(FUSED_ACTIVATIONS.items(), key=lambda item: item[1] != tuple(layer.clamp))
    for name, clamp in ordered:
        if activation_range(clamp, layer.output_q) == (layer.act_min, layer.act_max):
            return name
    raise _fail(layer, f"clamp [{layer.act_min}, {layer.act_max}] at output {layer.output_q} is none of TFLite's "
                f"fused activations ({', '.join(FUSED_ACTIVATIONS)})", "quantize with one of those clamps")


def _softmax_beta(layer: QuantLayer) -> float:
    """A float32 beta for which TFLM derives the layer's softmax multiplier: 1.0 when it fits, else
    the inverse of the derivation and its float32 neighbours."""
    want = (int(layer.multiplier[0]), int(layer.shift[0]))
    estimate = want[0] * 2.0 ** (want[1] - 31) / (float(np.float32(layer.input_q.scale)) * 2.0**26)
    candidates = [np.float32(1.0), np.float32(estimate)]
    below = above = np.float32(estimate)
    for _ in range(64):
        below, above = np.nextafter(below, np.float32(0)), np.nextafter(above, np.float32(np.inf))
        candidates += [below, above]
    for beta in candidates:
        try:
            if softmax_multiplier(layer.input_q.scale, float(beta)) == want:
                return float(beta)
        except ValueError:
            continue
    raise _fail(layer, f"no float32 beta gives its multiplier/shift {want} at input scale {layer.input_q.scale}",
                "derive them with int8_params.softmax_multiplier")


def _expected_integers(layer: QuantLayer) -> tuple[np.ndarray, np.ndarray] | None:
    """The multiplier/shift TFLM will derive for the layer from the scales the file will hold."""
    in_s, out_s = layer.input_q.scale, layer.output_q.scale
    if layer.op in (Op.CONV2D, Op.DEPTHWISE_CONV2D, Op.DENSE):
        return conv_multipliers(in_s, layer.weight_scales, out_s, layer.out_channels)
    try:
        if layer.op is Op.ADD:
            return add_multipliers(in_s, layer.other_q.scale, out_s)
    except ValueError as exc:
        raise _fail(layer, str(exc), "give the sum a larger output scale") from None
    if layer.op is Op.MEAN:
        m, s = mean_multiplier(in_s, out_s, layer.in_shape[0] * layer.in_shape[1])
        return np.array([m]), np.array([s])
    return None


def _check_integers(layer: QuantLayer) -> None:
    expected = _expected_integers(layer)
    if expected is None:
        return
    m, s = (np.asarray(a, np.int64).ravel() for a in expected)
    have_m = np.asarray(layer.multiplier, np.int64).ravel()
    have_s = np.asarray(layer.shift, np.int64).ravel()
    if have_m.shape != m.shape or have_s.shape != s.shape:
        raise _fail(layer, f"{have_m.size} multipliers where TFLM derives {m.size}", "quantize the model again")
    bad = np.flatnonzero((have_m != m) | (have_s != s))
    if bad.size:
        c = int(bad[0])
        raise _fail(layer, f"multiplier/shift [{c}] is ({have_m[c]}, {have_s[c]}) but TFLM derives ({m[c]}, {s[c]}) "
                    "from the float32 scales", "derive them with mcuprune.model.int8_params (from float32 scales)")


def _check_input_q(layer: QuantLayer, name: str, q: QParams, written: QParams) -> None:
    """TFLM computes with the quantization of the tensor a layer reads: the layer's own must be it."""
    if q == written:
        return
    if float(np.float32(q.scale)) != q.scale:
        raise _fail(layer, f"scale {q.scale!r} is not a float32 value, which is all a .tflite holds",
                    "round scales to float32 (int8_params.file_scale) before deriving integers from them")
    raise _fail(layer, f"it takes {name} as {q}, but {name} is {written}", "quantize the model again")


class _Exporter:
    def __init__(self, model: QuantModel) -> None:
        self.model = model
        self.tensors: list[Tensor] = []
        self.ops: list[Operator] = []
        self.index: dict[str, int] = {}  # IR tensor name -> tensor index

    def add(self, tensor: Tensor) -> int:
        self.tensors.append(tensor)
        return len(self.tensors) - 1

    def activation(self, name: str, shape: tuple[int, ...], q: QParams) -> int:
        return self.add(Tensor(name, (1, *shape), "int8", TensorQuant.of(q)))

    def const(self, name: str, data: np.ndarray, dtype: str, quant: TensorQuant | None = None) -> int:
        return self.add(Tensor(name, tuple(data.shape), dtype, quant, np.asarray(data)))

    def padding_mode(self, layer: QuantLayer, k: tuple[int, int]) -> str | None:
        """SAME or VALID when the layer's explicit padding is exactly that, else None."""
        h, w = layer.in_shape[0], layer.in_shape[1]
        if tuple(layer.padding) == same_padding(h, w, k[0], k[1], layer.stride, layer.dilation):
            return "SAME"
        return "VALID" if not any(layer.padding) else None

    def weighted(self, layer: QuantLayer, x: int) -> tuple[str, list[int], dict[str, Any]]:
        c = layer.out_channels
        scales = np.asarray(layer.weight_scales, np.float32)
        bias_scales = (float(np.float32(layer.input_q.scale)) * scales.astype(np.float64)).astype(np.float32)
        bias = layer.bias if layer.bias is not None else np.zeros(c, np.int32)
        b = self.const(f"{layer.name}/bias", np.asarray(bias, np.int32), "int32", TensorQuant(bias_scales, 0))
        act = _fused_activation(layer)
        int4 = layer.weight_bits == 4
        if layer.op is Op.DENSE:
            # TFLM's FULLY_CONNECTED takes INT4 weights per tensor only: equal scales go as one, else int8
            per_tensor = int4 and bool(np.all(scales == scales[0]))
            quant = TensorQuant(scales[:1], 0, 0) if per_tensor else TensorQuant(scales, 0, 0)
            w = self.const(f"{layer.name}/weights", layer.weights, INT4 if per_tensor else "int8", quant)
            return "FULLY_CONNECTED", [x, w, b], {"fused_activation_function": act, "keep_num_dims": False}
        k = (int(layer.weights.shape[1]), int(layer.weights.shape[2]))
        mode = self.padding_mode(layer, k)
        if mode is None:  # explicit padding TFLite cannot say: PAD (with the input zero point) + VALID
            top, bottom, left, right = layer.padding
            pads = np.array([[0, 0], [top, bottom], [left, right], [0, 0]], np.int32)
            h, w_, c_in = layer.in_shape
            padded = self.activation(f"{layer.name}/padded", (h + top + bottom, w_ + left + right, c_in), layer.input_q)
            self.ops.append(Operator("PAD", [x, self.const(f"{layer.name}/paddings", pads, "int32")], [padded]))
            x, mode = padded, "VALID"
        options = {"padding": mode, "stride_h": layer.stride[0], "stride_w": layer.stride[1],
                   "dilation_h_factor": layer.dilation[0], "dilation_w_factor": layer.dilation[1],
                   "fused_activation_function": act}
        dtype = INT4 if int4 else "int8"
        if layer.op is Op.DEPTHWISE_CONV2D:
            weights = np.ascontiguousarray(layer.weights[..., 0].transpose(1, 2, 0)[None])  # [1, k_h, k_w, C*M]
            w = self.const(f"{layer.name}/weights", weights, dtype, TensorQuant(scales, 0, 3))
            return "DEPTHWISE_CONV_2D", [x, w, b], options | {"depth_multiplier": layer.depth_multiplier}
        w = self.const(f"{layer.name}/weights", layer.weights, dtype, TensorQuant(scales, 0, 0))
        return "CONV_2D", [x, w, b], options

    def full_range(self, layer: QuantLayer) -> None:
        if (layer.act_min, layer.act_max) != (INT8_MIN, INT8_MAX):
            raise _fail(layer, f"clamp [{layer.act_min}, {layer.act_max}] on an op TFLite has no fused activation for",
                        "clamp in the layer before it")

    def operator(self, layer: QuantLayer, ins: list[int]) -> tuple[str, list[int], dict[str, Any]]:
        x = ins[0]
        if layer.op in (Op.CONV2D, Op.DEPTHWISE_CONV2D, Op.DENSE):
            return self.weighted(layer, x)
        if layer.op in (Op.MAXPOOL2D, Op.AVGPOOL2D):
            if not pool_quantization_ok(layer.input_q, layer.output_q):
                raise _fail(layer, "pooling with different input and output quantization (TFLM refuses it)",
                            "give the pool's output its input's quantization")
            mode = self.padding_mode(layer, layer.window)
            if mode is None:
                raise _fail(layer, f"pooling padding {layer.padding} is neither TFLite SAME nor VALID",
                            "use SAME or no padding")
            return ("MAX_POOL_2D" if layer.op is Op.MAXPOOL2D else "AVERAGE_POOL_2D", [x], {
                "padding": mode, "stride_h": layer.stride[0], "stride_w": layer.stride[1],
                "filter_height": layer.window[0], "filter_width": layer.window[1],
                "fused_activation_function": _fused_activation(layer)})
        if layer.op is Op.ADD:
            return "ADD", ins, {"fused_activation_function": _fused_activation(layer)}
        if layer.op in (Op.MEAN, Op.SOFTMAX):  # the reference clamps them; TFLite has no fused activation there
            self.full_range(layer)
        if layer.op is Op.MEAN:
            axes = self.const(f"{layer.name}/axes", np.array([1, 2], np.int32), "int32")
            return "MEAN", [x, axes], {"keep_dims": len(layer.out_shape) == 3}
        if layer.op is Op.PAD:
            top, bottom, left, right = layer.padding
            pads = np.array([[0, 0], [top, bottom], [left, right], [0, 0]], np.int32)
            return "PAD", [x, self.const(f"{layer.name}/paddings", pads, "int32")], {}
        if layer.op is Op.RESHAPE:
            shape = np.array([1, *layer.out_shape], np.int32)
            return "RESHAPE", [x, self.const(f"{layer.name}/shape", shape, "int32")], {"new_shape": shape.tolist()}
        if layer.op is Op.SOFTMAX:
            if layer.output_q != SOFTMAX_OUTPUT_Q:
                raise _fail(layer, f"output quantization {layer.output_q} is not scale 1/256, zero point -128",
                            "quantize the softmax output to TFLite's fixed int8 range")
            return "SOFTMAX", [x], {"beta": _softmax_beta(layer)}
        raise _fail(layer, "no TFLite operator for it", "remove the layer")

    def run(self) -> bytes:
        m = self.model
        verify(m)
        meta = m.meta or {}
        if meta.get("float_input"):
            graph_in = self.add(Tensor(INPUT, (1, *m.input_shape), "float32"))
            x = self.activation(f"{INPUT}/int8", m.input_shape, m.input_q)
            self.ops.append(Operator("QUANTIZE", [graph_in], [x]))
        else:
            graph_in = x = self.activation(INPUT, m.input_shape, m.input_q)
        self.index[INPUT] = x
        for layer in m.layers:
            _check_integers(layer)
            ins = [self.index[name] for name in layer.inputs]
            for name, i, q in zip(layer.inputs, ins, (layer.input_q, layer.other_q), strict=False):
                _check_input_q(layer, name, q, self.tensors[i].quant.qparams())
            op, op_inputs, options = self.operator(layer, ins)
            y = self.activation(layer.name, layer.out_shape, layer.output_q)
            self.ops.append(Operator(op, op_inputs, [y], options))
            self.index[layer.name] = y
        graph_out = self.index[m.layers[-1].name]
        if meta.get("float_output"):
            y, graph_out = graph_out, self.add(Tensor("output", (1, *m.layers[-1].out_shape), "float32"))
            self.ops.append(Operator("DEQUANTIZE", [y], [graph_out]))
        return write_tflite(TfliteGraph(self.tensors, self.ops, [graph_in], [graph_out], m.name))


def export_tflite(model: QuantModel) -> bytes:
    """The model as a .tflite that TFLM runs to exactly the numpy reference's bytes.

    Written: float32 scales, per-channel int8 weights (axis 0; depthwise axis 3), int32 biases,
    SAME/VALID where the layer's padding is exactly that and PAD + VALID otherwise (convolutions;
    pools refuse), the fused activation whose TFLM clamp is the layer's act_min/act_max, and a
    QUANTIZE / DEQUANTIZE at the boundary when ``meta["float_input"]`` / ``["float_output"]``.
    Every integer TFLM derives in Prepare is compared with the layer's first; a layer whose
    multipliers were not derived from float32 scales, or whose clamp no TFLite activation gives,
    is a UserError naming the layer. Pruned weights are written as they are (zeros, dense).

    int4 weights (``weight_bits`` 4) are written as INT4 tensors (two per byte, TFLite's order) for
    CONV_2D and DEPTHWISE_CONV_2D, which TFLM runs per channel. TFLM's FULLY_CONNECTED takes INT4
    weights per tensor only (it refuses per-channel INT4 in Prepare), so a dense layer with int4
    weights is written as INT4 when all its channel scales are equal (one scale) and otherwise as
    int8 weights holding the same integers, per channel: TFLM computes the same outputs, the file
    just stores those weights in 8 bits (and imports back with ``weight_bits`` 8).
    """
    try:
        return _Exporter(model).run()
    except GraphError as exc:
        raise UserError(_one_line(f"model {model.name}: {exc}; build it again")) from None


__all__ = [
    "SUPPORTED_OPERATORS",
    "Operator",
    "Tensor",
    "TensorQuant",
    "TfliteGraph",
    "export_tflite",
    "import_tflite",
    "read_tflite",
    "write_tflite",
]

