"""The intermediate representation that flows through every stage.

A model is a straight chain of layers. Two flavours share one op enum:

* ``FloatModel`` — float32 weights, what training hands to quantization;
* ``QuantModel`` — int8 weights, int32 biases, per-channel requantization constants and
  per-tensor activation quantization: what the reference interpreter runs and the code generator
  emits.

Layout conventions (they match the C kernels in firmware/include/mcup_nn.h):
* feature maps are HWC (channels innermost), batch first when batched: (N, H, W, C);
* conv weights are [C_out, k_h, k_w, C_in]; dense weights are [out, in];
* a dense layer after a feature map reads it flattened in HWC order (no explicit flatten op).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

IR_FORMAT_VERSION = 1


class Op(enum.StrEnum):
    CONV2D = "conv2d"
    DENSE = "dense"
    MAXPOOL2D = "maxpool2d"


@dataclass(frozen=True)
class QParams:
    """Per-tensor affine quantization: real = scale * (q - zero_point)."""

    scale: float
    zero_point: int


@dataclass(frozen=True, eq=False)
class FloatLayer:
    name: str
    op: Op
    in_shape: tuple[int, ...]  # (H, W, C) or (features,)
    out_shape: tuple[int, ...]
    weights: np.ndarray | None = None  # float32, layout as in the module docstring
    bias: np.ndarray | None = None  # float32 [C_out]
    relu: bool = False
    stride: int = 1
    pad: int = 0
    pool: int = 0  # window == stride for MAXPOOL2D
    mask: np.ndarray | None = None  # bool, weights' shape; None means dense (no pruning)


@dataclass(frozen=True, eq=False)
class FloatModel:
    name: str
    input_shape: tuple[int, int, int]  # (H, W, C)
    num_classes: int
    layers: tuple[FloatLayer, ...]


@dataclass(frozen=True, eq=False)
class QuantLayer:
    name: str
    op: Op
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    input_q: QParams
    output_q: QParams
    weights: np.ndarray | None = None  # int8
    bias: np.ndarray | None = None  # int32 [C_out], scale input_scale * weight_scales[c]
    weight_scales: np.ndarray | None = None  # float32 [C_out], symmetric per output channel
    multiplier: np.ndarray | None = None  # int32 [C_out], Q31
    shift: np.ndarray | None = None  # int32 [C_out]
    relu: bool = False
    stride: int = 1
    pad: int = 0
    pool: int = 0
    mask: np.ndarray | None = None

    @property
    def has_weights(self) -> bool:
        return self.op in (Op.CONV2D, Op.DENSE)

    @property
    def act_min(self) -> int:
        """Lower clamp: a fused ReLU clamps at the output zero point."""
        return max(-128, self.output_q.zero_point) if self.relu else -128

    @property
    def act_max(self) -> int:
        return 127

    @property
    def out_channels(self) -> int:
        return int(self.out_shape[-1])


@dataclass(frozen=True, eq=False)
class QuantModel:
    name: str
    input_shape: tuple[int, int, int]  # (H, W, C)
    input_q: QParams
    num_classes: int
    layers: tuple[QuantLayer, ...]
    meta: dict = field(default_factory=dict)

    @property
    def output_q(self) -> QParams:
        return self.layers[-1].output_q

    @property
    def input_size(self) -> int:
        return int(np.prod(self.input_shape))

    def param_count(self) -> int:
        return sum(
            int(layer.weights.size) + int(layer.bias.size)
            for layer in self.layers
            if layer.has_weights
        )


def shape_product(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape))


def conv_out_hw(h: int, w: int, k_h: int, k_w: int, stride: int, pad: int) -> tuple[int, int]:
    return (h + 2 * pad - k_h) // stride + 1, (w + 2 * pad - k_w) // stride + 1


def check_chain(layers: tuple[FloatLayer, ...] | tuple[QuantLayer, ...], input_shape: tuple) -> None:
    """Verify that each layer's input is the previous layer's output (flattening allowed)."""
    shape = tuple(input_shape)
    for layer in layers:
        if tuple(layer.in_shape) != shape and shape_product(layer.in_shape) != shape_product(shape):
            raise ValueError(f"layer {layer.name}: input shape {layer.in_shape} does not follow {shape}")
        if layer.op is Op.DENSE and len(layer.in_shape) != 1:
            raise ValueError(f"layer {layer.name}: dense input must be flat, got {layer.in_shape}")
        shape = tuple(layer.out_shape)


# --- serialization: JSON for structure, one .npz for arrays ---------------------------------

_ARRAY_FIELDS = ("weights", "bias", "weight_scales", "multiplier", "shift", "mask")


def save_quant_model(model: QuantModel, directory: Path) -> None:
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
            elif isinstance(value, QParams):
                entry[f.name] = {"scale": value.scale, "zero_point": value.zero_point}
            elif isinstance(value, tuple):
                entry[f.name] = list(value)
            else:
                entry[f.name] = value
        layers.append(entry)
    doc = {
        "format_version": IR_FORMAT_VERSION,
        "name": model.name,
        "input_shape": list(model.input_shape),
        "input_q": {"scale": model.input_q.scale, "zero_point": model.input_q.zero_point},
        "num_classes": model.num_classes,
        "layers": layers,
        "meta": model.meta,
    }
    (directory / "model.json").write_text(json.dumps(doc, indent=2) + "\n")
    np.savez(directory / "model.npz", **arrays)


def load_quant_model(directory: Path) -> QuantModel:
    doc = json.loads((directory / "model.json").read_text())
    if doc.get("format_version") != IR_FORMAT_VERSION:
        raise ValueError(f"{directory}/model.json has format {doc.get('format_version')}, expected {IR_FORMAT_VERSION}")
    with np.load(directory / "model.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    layers = []
    for i, entry in enumerate(doc["layers"]):
        kwargs = {k: v for k, v in entry.items()}
        kwargs["op"] = Op(entry["op"])
        for key in ("input_q", "output_q"):
            kwargs[key] = QParams(**entry[key])
        for key in ("in_shape", "out_shape"):
            kwargs[key] = tuple(entry[key])
        for name in _ARRAY_FIELDS:
            kwargs[name] = arrays.get(f"{i}.{name}")
        layers.append(QuantLayer(**kwargs))
    return QuantModel(
        name=doc["name"],
        input_shape=tuple(doc["input_shape"]),
        input_q=QParams(**doc["input_q"]),
        num_classes=doc["num_classes"],
        layers=tuple(layers),
        meta=doc.get("meta", {}),
    )


def with_layers(model: QuantModel, layers: list[QuantLayer]) -> QuantModel:
    return replace(model, layers=tuple(layers))
