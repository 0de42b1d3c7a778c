"""The intermediate representation that flows through every stage: a graph of layers in execution order.

A model is a tuple of layers in topological (execution) order. Each layer names its inputs: a
layer's name is the name of the tensor it writes, and the model input is the tensor ``INPUT``. So
a residual ADD or a branch is representable, while ``for layer in model.layers`` still reads top
to bottom. A layer whose ``inputs`` are left empty reads the previous layer's output (the model
input for the first): the shorthand for a plain chain, filled in when the model is built.

Two flavours share one op enum:

* ``FloatModel`` — float32 weights, what training and the importers hand to quantization;
* ``QuantModel`` — int8 weights, int32 biases, per-channel requantization constants and per-tensor
  activation quantization (TFLite int8 spec): what the reference interpreter runs and the code
  generator emits.

Layout conventions (they match the C kernels in firmware/include/mcup_nn.h):
* feature maps are HWC (channels innermost), batch first when batched: (N, H, W, C);
* conv weights are [C_out, k_h, k_w, C_in]; depthwise weights are [C_in * multiplier, k_h, k_w, 1]
  (one row per output channel, like conv with one input channel per group); dense weights [out, in];
* a dense layer after a feature map reads it flattened in HWC order (RESHAPE to a flat shape is a
  no-op on the bytes and may be explicit or implied).

``verify`` checks a model's graph (every input produced earlier, shapes agree with each op's rule);
stages call it on what they return.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

IR_FORMAT_VERSION = 2
INPUT = "input"  # the reserved name of the model's input tensor
UNBOUNDED = (-math.inf, math.inf)
RELU = (0.0, math.inf)
RELU6 = (0.0, 6.0)


class Op(enum.StrEnum):
    # multiply-accumulate over weights, requantized per output channel
    CONV2D = "conv2d"
    DEPTHWISE_CONV2D = "depthwise_conv2d"
    DENSE = "dense"
    # windows over a feature map, no weights
    MAXPOOL2D = "maxpool2d"
    AVGPOOL2D = "avgpool2d"
    MEAN = "mean"  # over H and W: global average pooling
    # element-wise, shape and normalisation
    ADD = "add"
    PAD = "pad"
    RESHAPE = "reshape"
    SOFTMAX = "softmax"


WEIGHTED_OPS = (Op.CONV2D, Op.DEPTHWISE_CONV2D, Op.DENSE)


@dataclass(frozen=True)
class QParams:
    """Per-tensor affine quantization: real = scale * (q - zero_point). `scale` is float32-representable."""

    scale: float
    zero_point: int


@dataclass(frozen=True, eq=False)
class FloatLayer:
    name: str
    op: Op
    in_shape: tuple[int, ...]  # shape of inputs[0] without the batch axis: (H, W, C) or (features,)
    out_shape: tuple[int, ...]
    weights: np.ndarray | None = None  # float32, layout as in the module docstring
    bias: np.ndarray | None = None  # float32 [C_out]
    inputs: tuple[str, ...] = ()  # tensors read, in order; () = the previous layer's output
    clamp: tuple[float, float] = UNBOUNDED  # fused activation: RELU, RELU6 or any range
    stride: tuple[int, int] = (1, 1)  # (y, x)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, bottom, left, right
    dilation: tuple[int, int] = (1, 1)
    window: tuple[int, int] = (0, 0)  # pooling window (k_h, k_w)
    depth_multiplier: int = 1  # depthwise: output channels per input channel
    beta: float = 1.0  # softmax
    mask: np.ndarray | None = None  # bool, weights' shape; None means dense (no pruning)
    weight_bits: int = 8  # weighted ops: 8 or 4, the integer width quantization gives the weights

    @property
    def relu(self) -> bool:
        return self.clamp[0] >= 0.0


@dataclass(frozen=True, eq=False)
class QuantLayer:
    name: str
    op: Op
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    input_q: QParams  # of inputs[0]
    output_q: QParams
    weights: np.ndarray | None = None  # int8
    bias: np.ndarray | None = None  # int32 [C_out], scale input_scale * weight_scales[c]
    weight_scales: np.ndarray | None = None  # float32 [C_out], symmetric per output channel
    multiplier: np.ndarray | None = None  # int32: per output channel (weighted ops), else see below
    shift: np.ndarray | None = None  # int32, like multiplier
    inputs: tuple[str, ...] = ()
    clamp: tuple[float, float] = UNBOUNDED  # the fused activation in real numbers (what act_min/act_max came from)
    act_min: int = -128  # ... as an int8 clamp: what the kernel applies
    act_max: int = 127
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    window: tuple[int, int] = (0, 0)
    depth_multiplier: int = 1
    other_q: QParams | None = None  # ADD: the quantization of inputs[1]
    mask: np.ndarray | None = None
    weight_bits: int = 8  # 8: weights in [-127, 127]; 4: in [-7, 7], stored two per byte (formats.py)
    # multiplier/shift of ops without weights: ADD [input 1, input 2, output] (left shift 20, TFLM's
    # int8 ADD), MEAN [in/out scale], SOFTMAX [input beta multiplier] / [input left shift].

    @property
    def has_weights(self) -> bool:
        return self.weights is not None

    @property
    def relu(self) -> bool:
        return self.clamp[0] >= 0.0

    @property
    def out_channels(self) -> int:
        return int(self.out_shape[-1])


def _fill_chain_inputs(layers: tuple) -> tuple:
    """Layers with their `inputs` named: an empty tuple reads the previous layer (the input first)."""
    out, previous = [], INPUT
    for layer in layers:
        out.append(layer if layer.inputs else replace(layer, inputs=(previous,)))
        previous = layer.name
    return tuple(out)


@dataclass(frozen=True, eq=False)
class FloatModel:
    name: str
    input_shape: tuple[int, ...]  # (H, W, C) or (features,)
    num_classes: int  # size of the output (classes, or features for an autoencoder)
    layers: tuple[FloatLayer, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", _fill_chain_inputs(tuple(self.layers)))


@dataclass(frozen=True, eq=False)
class QuantModel:
    name: str
    input_shape: tuple[int, ...]
    input_q: QParams
    num_classes: int
    layers: tuple[QuantLayer, ...]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", _fill_chain_inputs(tuple(self.layers)))

    @property
    def output_q(self) -> QParams:
        return self.layers[-1].output_q

    @property
    def input_size(self) -> int:
        return shape_product(self.input_shape)

    @property
    def output_size(self) -> int:
        return shape_product(self.layers[-1].out_shape)

    def param_count(self) -> int:
        return sum(int(layer.weights.size) + int(layer.bias.size) for layer in self.layers if layer.has_weights)


def shape_product(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape))


def conv_out_hw(h: int, w: int, k_h: int, k_w: int, stride: tuple[int, int], padding: tuple[int, int, int, int],
                dilation: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    """Output height and width of a convolution or pooling window."""
    eff_h, eff_w = (k_h - 1) * dilation[0] + 1, (k_w - 1) * dilation[1] + 1
    top, bottom, left, right = padding
    return (h + top + bottom - eff_h) // stride[0] + 1, (w + left + right - eff_w) // stride[1] + 1


def same_padding(h: int, w: int, k_h: int, k_w: int, stride: tuple[int, int],
                 dilation: tuple[int, int] = (1, 1)) -> tuple[int, int, int, int]:
    """TFLite SAME padding: output ceil(in / stride), the odd extra row/column at the bottom/right."""
    pads = []
    for size, k, s, d in ((h, k_h, stride[0], dilation[0]), (w, k_w, stride[1], dilation[1])):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        pads += [total // 2, total - total // 2]
    return tuple(pads)  # type: ignore[return-value]


class GraphError(ValueError):
    """A model whose graph or shapes do not hold together."""


def expected_out_shape(layer: FloatLayer | QuantLayer, in_shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    """The output shape the op's rule gives for these input shapes (raises GraphError if they do not fit)."""
    op, shape = layer.op, in_shapes[0]
    if op in (Op.CONV2D, Op.DEPTHWISE_CONV2D, Op.MAXPOOL2D, Op.AVGPOOL2D):
        if len(shape) != 3:
            raise GraphError(f"layer {layer.name}: {op.value} needs an (H, W, C) input, got {shape}")
        h, w, c = shape
        if op in (Op.MAXPOOL2D, Op.AVGPOOL2D):
            k_h, k_w = layer.window
            out_c = c
        else:
            _, k_h, k_w, w_in = layer.weights.shape
            out_c = int(layer.weights.shape[0])
            if op is Op.CONV2D and w_in != c:
                raise GraphError(f"layer {layer.name}: weights take {w_in} channels, the input has {c}")
            if op is Op.DEPTHWISE_CONV2D and (w_in != 1 or out_c != c * layer.depth_multiplier):
                raise GraphError(f"layer {layer.name}: depthwise weights {layer.weights.shape} do not fit {c} "
                                 f"channels x multiplier {layer.depth_multiplier}")
        oh, ow = conv_out_hw(h, w, k_h, k_w, layer.stride, layer.padding, layer.dilation)
        return (oh, ow, out_c)
    if op is Op.DENSE:
        if int(layer.weights.shape[1]) != shape_product(shape):
            raise GraphError(f"layer {layer.name}: dense weights take {layer.weights.shape[1]} features, the input "
                             f"{shape} has {shape_product(shape)}")
        return (int(layer.weights.shape[0]),)
    if op is Op.MEAN:
        if len(shape) != 3:
            raise GraphError(f"layer {layer.name}: mean over H, W needs an (H, W, C) input, got {shape}")
        return tuple(layer.out_shape) if tuple(layer.out_shape) in ((1, 1, shape[2]), (shape[2],)) else (shape[2],)
    if op is Op.ADD:
        if len(in_shapes) != 2 or tuple(in_shapes[0]) != tuple(in_shapes[1]):
            raise GraphError(f"layer {layer.name}: add needs two inputs of one shape, got {in_shapes}")
        return tuple(shape)
    if op is Op.PAD:
        if len(shape) != 3:
            raise GraphError(f"layer {layer.name}: pad needs an (H, W, C) input, got {shape}")
        top, bottom, left, right = layer.padding
        return (shape[0] + top + bottom, shape[1] + left + right, shape[2])
    if op is Op.RESHAPE:
        if shape_product(layer.out_shape) != shape_product(shape):
            raise GraphError(f"layer {layer.name}: reshape {shape} -> {layer.out_shape} changes the element count")
        return tuple(layer.out_shape)
    if op is Op.SOFTMAX:
        return tuple(shape)
    raise GraphError(f"layer {layer.name}: unknown op {op}")


# Ops that apply no fused activation (TFLite has none for them, and neither do the kernels).
UNCLAMPED_OPS = (Op.MEAN, Op.PAD, Op.RESHAPE, Op.SOFTMAX)


def _check_options(layer: FloatLayer | QuantLayer) -> None:
    """Options an op does not have must keep their neutral value."""
    if layer.op in UNCLAMPED_OPS:
        full = (layer.clamp == UNBOUNDED if isinstance(layer, FloatLayer)
                else (layer.act_min, layer.act_max) == (-128, 127))
        if not full:
            raise GraphError(f"layer {layer.name}: {layer.op.value} takes no fused activation")
    if layer.op in (Op.MAXPOOL2D, Op.AVGPOOL2D) and tuple(layer.dilation) != (1, 1):
        raise GraphError(f"layer {layer.name}: pooling has no dilation")


def verify(model: FloatModel | QuantModel) -> None:
    """Check the graph: names unique, every input produced earlier (or the model input), the input
    counts and shapes each op needs, and each layer's declared shapes. Raises GraphError."""
    shapes: dict[str, tuple[int, ...]] = {INPUT: tuple(model.input_shape)}
    for layer in model.layers:
        if layer.name in shapes:
            raise GraphError(f"layer name {layer.name!r} is used twice (or is the reserved input name)")
        arity = 2 if layer.op is Op.ADD else 1
        if len(layer.inputs) != arity:
            raise GraphError(f"layer {layer.name}: {layer.op.value} takes {arity} input(s), got {layer.inputs}")
        missing = [name for name in layer.inputs if name not in shapes]
        if missing:
            raise GraphError(f"layer {layer.name} reads {missing[0]!r}, which no earlier layer produces")
        in_shapes = [shapes[name] for name in layer.inputs]
        flattened = layer.op is Op.DENSE and tuple(layer.in_shape) == (shape_product(in_shapes[0]),)
        if tuple(layer.in_shape) != in_shapes[0] and not flattened:
            raise GraphError(f"layer {layer.name}: declared input shape {tuple(layer.in_shape)} but "
                             f"{layer.inputs[0]!r} is {in_shapes[0]}")
        _check_options(layer)
        want = expected_out_shape(layer, in_shapes)
        if tuple(layer.out_shape) != want:
            raise GraphError(f"layer {layer.name}: declared output shape {tuple(layer.out_shape)}, "
                             f"{layer.op.value} gives {want}")
        shapes[layer.name] = want
    if not model.layers:
        raise GraphError(f"model {model.name} has no layers")


def consumers(model: FloatModel | QuantModel) -> dict[str, list[str]]:
    """Tensor name -> the layers that read it, in execution order."""
    out: dict[str, list[str]] = {INPUT: []}
    for layer in model.layers:
        out.setdefault(layer.name, [])
        for name in layer.inputs:
            out[name].append(layer.name)
    return out


def is_chain(model: FloatModel | QuantModel) -> bool:
    """True when every layer reads the one before it (the model input for the first)."""
    previous = INPUT
    for layer in model.layers:
        if tuple(layer.inputs) != (previous,):
            return False
        previous = layer.name
    return True


# --- serialization: JSON for structure, one .npz for arrays ---------------------------------

_ARRAY_FIELDS = ("weights", "bias", "weight_scales", "multiplier", "shift", "mask")
_TUPLE_FIELDS = ("in_shape", "out_shape", "inputs", "stride", "padding", "dilation", "window", "clamp")


def _qparams_doc(q: QParams | None) -> dict | None:
    return None if q is None else {"scale": q.scale, "zero_point": q.zero_point}


def _value_doc(name: str, value: object) -> object:
    if isinstance(value, QParams) or name == "other_q":
        return _qparams_doc(value)
    if name == "clamp":  # JSON has no infinity: an unbounded side is null
        return [None if math.isinf(v) else v for v in value]
    if isinstance(value, tuple):
        return list(value)
    return value


def _save(model: FloatModel | QuantModel, directory: Path, extra: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    layers = []
    for i, layer in enumerate(model.layers):
        entry: dict = {"name": layer.name, "op": layer.op.value}
        for f in fields(layer):
            value = getattr(layer, f.name)
            if f.name in ("name", "op"):
                continue
            if f.name in _ARRAY_FIELDS:
                if value is not None:
                    arrays[f"{i}.{f.name}"] = value
            else:
                entry[f.name] = _value_doc(f.name, value)
        layers.append(entry)
    doc = {"format_version": IR_FORMAT_VERSION, "name": model.name, "input_shape": list(model.input_shape),
           **extra, "num_classes": model.num_classes, "layers": layers}
    (directory / "model.json").write_text(json.dumps(doc, indent=2) + "\n")
    np.savez(directory / "model.npz", **arrays)


def save_quant_model(model: QuantModel, directory: Path) -> None:
    _save(model, directory, {"input_q": _qparams_doc(model.input_q), "meta": model.meta})


def save_float_model(model: FloatModel, directory: Path) -> None:
    _save(model, directory, {"float": True})


def _layer_from_v1(entry: dict) -> dict:
    """A format-1 layer (a chain; square stride, symmetric pad, pool, relu) in format-2 fields."""
    kw = {k: v for k, v in entry.items() if k not in ("stride", "pad", "pool", "relu")}
    stride, pad, pool = int(entry.get("stride", 1)), int(entry.get("pad", 0)), int(entry.get("pool", 0))
    kw["stride"], kw["padding"] = (stride, stride), (pad, pad, pad, pad)
    if entry["op"] == "maxpool2d":
        kw["window"], kw["stride"] = (pool, pool), (pool, pool)
    out_zp = entry["output_q"]["zero_point"]
    kw["act_min"] = max(-128, out_zp) if entry.get("relu") else -128
    kw["act_max"] = 127
    kw["clamp"] = RELU if entry.get("relu") else UNBOUNDED
    return kw


def _load(directory: Path) -> tuple[dict, list[dict]]:
    """The model document and each layer's constructor arguments (format 1 converted)."""
    doc = json.loads((directory / "model.json").read_text())
    version = doc.get("format_version")
    if version not in (1, IR_FORMAT_VERSION):
        raise ValueError(f"{directory}/model.json has format {version}; this mcuprune reads formats 1 and "
                         f"{IR_FORMAT_VERSION}: compile the model again")
    with np.load(directory / "model.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    layers = []
    for i, entry in enumerate(doc["layers"]):
        kwargs = _layer_from_v1(entry) if version == 1 else dict(entry)
        kwargs["op"] = Op(entry["op"])
        for key in ("input_q", "output_q", "other_q"):
            if kwargs.get(key) is not None:
                kwargs[key] = QParams(**kwargs[key])
        if "clamp" in kwargs:
            lo, hi = kwargs["clamp"]
            kwargs["clamp"] = (-math.inf if lo is None else lo, math.inf if hi is None else hi)
        for key in _TUPLE_FIELDS:
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        for name in _ARRAY_FIELDS:
            if f"{i}.{name}" in arrays:
                kwargs[name] = arrays[f"{i}.{name}"]
        layers.append(kwargs)
    return doc, layers


def load_quant_model(directory: Path) -> QuantModel:
    doc, layers = _load(directory)
    if doc.get("float"):
        raise ValueError(f"{directory}/model.json holds a float model, not a quantized one")
    return QuantModel(name=doc["name"], input_shape=tuple(doc["input_shape"]), input_q=QParams(**doc["input_q"]),
                      num_classes=doc["num_classes"], layers=tuple(QuantLayer(**kw) for kw in layers),
                      meta=doc.get("meta", {}))


def load_float_model(directory: Path) -> FloatModel:
    doc, layers = _load(directory)
    if not doc.get("float"):
        raise ValueError(f"{directory}/model.json holds a quantized model, not a float one")
    return FloatModel(name=doc["name"], input_shape=tuple(doc["input_shape"]), num_classes=doc["num_classes"],
                      layers=tuple(FloatLayer(**kw) for kw in layers))


def with_layers(model: QuantModel, layers: list[QuantLayer]) -> QuantModel:
    return replace(model, layers=tuple(layers))
