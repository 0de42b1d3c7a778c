"""QuantModel -> C sources of one model (model.h, model.c, model_data.c) via Jinja templates.

Python decides everything that varies per model (array contents, shapes, arena offsets, which
kernel each layer calls); the templates only lay it out. Fixed C (kernels, runtime) lives in
firmware/ and is copied next to the generated files by build.prepare_project.

Two parameter modes:

* ``static`` (default): every parameter is a const C array compiled in.
* ``blob``: the code keeps the architecture (shapes, kernels, weight formats) and takes every
  parameter from a **model blob** (docs/protocol.md, "Model blob"; mcuprune/blob.py) that
  ``mcup_bind()`` checks and points the layer structs at; model_data.c holds only the factory
  blob. The monitor QSAE (monitor_qsae.py) runs after the model on the penultimate activations
  (``mcup_monitor()``, which also fills the telemetry record). The blob's arrays, in order:

  1. for each weighted layer of the model, in layer order: its weight arrays as ``pack``
     emits them for the layer's format and width (dense: weights int8; bitmask: mask uint8, values
     int8; csr8/csr4: values int8, deltas uint8, row_ptr uint8/16/32; block4: values int8, block_cols
     uint8/16 (its width fixed by the shape), row_ptr uint8/16/32; with int4 weights the weights
     and values arrays are uint8 bytes of nibbles, half as long, see formats.py; an empty array is
     kept, length 0, so the count is fixed), then bias int32[out], multiplier int32[out], shift
     int32[out] and quant int32[4] = (input_offset, output_offset, act_min, act_max);
  2. the monitor QSAE's encoder and decoder, the same way (dense weights);
  3. the confidence table uint16[256], ``telemetry.exp_table(model.output_q.scale)``.

  Everything re-pruning or recalibration can change (non-zero counts, row pointer widths, zero
  points, clamps, requantization constants) comes from the blob, so ``build_blob`` on another
  QuantModel of the same architecture makes an update the firmware binds without rebuilding.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from mcuprune import __version__
from mcuprune.codegen.blob import pack_blob
from mcuprune.errors import UserError
from mcuprune.model.arena import ArenaPlan, align_up, plan_arena
from mcuprune.model.costs import OBJECTIVES, choose_formats
from mcuprune.model.formats import WEIGHT_RANGE, PackedWeights, pack_layer
from mcuprune.model.ir import Op, QuantLayer, QuantModel, shape_product, verify
from mcuprune.model.ops import OPS, WEIGHT_BITS, kernel_sources, scratch_bytes, spec_of
from mcuprune.model.telemetry import exp_table
from mcuprune.resources import CODEGEN_TEMPLATES_DIR

PARAM_PREFIX = "mcup_param_"  # build.py sums symbols with this prefix as "model flash"
PARAMS_MODES = ("static", "blob")
FACTORY_BLOB = f"{PARAM_PREFIX}factory_blob"  # the prefix makes build.py count it as model flash
BIND_BAD = 9  # MCUP_ERR_BAD_BLOB of docs/protocol.md, what mcup_bind returns on any violation
MAX_MONITOR_DIM = 65535  # the telemetry histogram counts are uint16
_FMT_CONST = {"dense": "MCUP_FMT_DENSE", "bitmask": "MCUP_FMT_BITMASK", "csr8": "MCUP_FMT_CSR8",
              "csr4": "MCUP_FMT_CSR4", "block4": "MCUP_FMT_BLOCK4"}  # firmware/runtime/bind_check.h


def c_array_body(values: np.ndarray, per_line: int = 16) -> str:
    """Comma-separated C initializer lines.

    >>> print(c_array_body(np.array([1, -2, 3], dtype=np.int8), per_line=2))
        1, -2,
        3
    """
    flat = [str(int(v)) for v in np.asarray(values).ravel()]
    lines = [", ".join(flat[i : i + per_line]) for i in range(0, len(flat), per_line)]
    return ",\n".join("    " + line for line in lines)


@dataclass(frozen=True)
class CArray:
    name: str
    ctype: str  # int8_t, uint8_t, uint16_t, int32_t, ...
    length: int
    itemsize: int
    body: str
    comment: str

    @property
    def nbytes(self) -> int:
        return self.length * self.itemsize


def c_array(name: str, values: np.ndarray, comment: str) -> CArray:
    values = np.ascontiguousarray(values)
    return CArray(name, f"{values.dtype.name}_t", int(values.size), values.dtype.itemsize, c_array_body(values),
                  comment)


def c_arrays(layer_name: str, packed: PackedWeights) -> list[tuple[str, str, np.ndarray]]:
    """(C name, C type, values) of each array the format emits, names ``mcup_param_<layer>_<field>``.

    >>> from mcuprune.model.formats import pack
    >>> [(n, t) for n, t, _ in c_arrays("fc1", pack(np.eye(3, dtype=np.int8), "csr4"))]
    [('mcup_param_fc1_values', 'int8_t'), ('mcup_param_fc1_deltas', 'uint8_t'), ('mcup_param_fc1_row_ptr', 'uint8_t')]
    """
    return [
        (f"mcup_param_{layer_name}_{field}", f"{a.dtype.name}_t", a)
        for field, a in packed.arrays().items()
        if a.size > 0  # C has no empty arrays: the struct field is NULL instead (never read)
    ]


def c_definitions(layer_name: str, packed: PackedWeights, per_line: int = 16) -> str:
    """C definitions of the packed arrays (const, natural alignment: no padding is needed).

    >>> from mcuprune.model.formats import pack
    >>> print(c_definitions("fc1", pack(np.array([[0, 7], [-1, 0]], dtype=np.int8), "csr8")))
    const int8_t mcup_param_fc1_values[2] = {
        7, -1
    };
    const uint8_t mcup_param_fc1_deltas[2] = {
        1, 0
    };
    const uint8_t mcup_param_fc1_row_ptr[3] = {
        0, 1, 2
    };
    <BLANKLINE>
    """
    out = []
    for name, ctype, values in c_arrays(layer_name, packed):
        flat = [str(int(v)) for v in values.ravel()]
        lines = [", ".join(flat[i : i + per_line]) for i in range(0, len(flat), per_line)]
        body = ",\n".join("    " + line for line in lines)
        out.append(f"const {ctype} {name}[{len(flat)}] = {{\n{body}\n}};\n")
    return "".join(out)


def weights_initializer(layer_name: str, packed: PackedWeights) -> str:
    """The designated initializers of the weight fields of the layer's params struct.

    >>> from mcuprune.model.formats import pack
    >>> for field in weights_initializer("fc1", pack(np.eye(3, dtype=np.int8), "csr8")).split(", "):
    ...     print(field)
    .values = mcup_param_fc1_values
    .deltas = mcup_param_fc1_deltas
    .row_ptr = mcup_param_fc1_row_ptr
    .row_ptr_bytes = 1
    >>> weights_initializer("c1", pack(np.eye(3, dtype=np.int8), "bitmask"))
    '.mask = mcup_param_c1_mask, .values = mcup_param_c1_values'
    """
    fields = [
        f".{field} = " + (f"mcup_param_{layer_name}_{field}" if a.size > 0 else "NULL")
        for field, a in packed.arrays().items()
    ]
    if packed.row_ptr is not None:
        fields.append(f".row_ptr_bytes = {packed.row_ptr.dtype.itemsize}")
    return ", ".join(fields)


def layer_arrays(layer: QuantLayer, fmt: str | None = "dense") -> list[CArray]:
    """The const parameter arrays one layer needs in flash, weights packed in `fmt` at the layer's
    width (int4: the weights/values arrays are bytes of nibbles, formats.py)."""
    if not layer.has_weights:
        return []
    prefix = f"{PARAM_PREFIX}{layer.name}"
    shape = "x".join(str(d) for d in layer.weights.shape)
    layout = {Op.CONV2D: "[out_c][k_h][k_w][in_c]", Op.DEPTHWISE_CONV2D: "[out_c][k_h][k_w]"}.get(layer.op,
                                                                                                "[out][in]")
    if fmt == "dense" and layer.weight_bits == 8:
        weights = [c_array(f"{prefix}_weights", layer.weights.astype(np.int8),
                           f"int8 {layout} {shape}, per-channel symmetric")]
    elif fmt == "dense":
        packed = pack_layer(layer, fmt)
        weights = [c_array(f"{prefix}_weights", packed.weights, f"int4 {layout} {shape}, per-channel symmetric, "
                                                                "two per byte, rows byte-aligned (see mcup_nn.h)")]
    else:
        packed = pack_layer(layer, fmt)
        nnz = int(np.count_nonzero(layer.weights))
        width = "" if layer.weight_bits == 8 else "int4 "
        weights = [c_array(name, values, f"{width}{fmt} {field_name(name, prefix)} of {layout} {shape} "
                                         f"({nnz} non-zeros, see mcup_sparse.h)")
                   for name, _, values in c_arrays(layer.name, packed)]
    return weights + [
        c_array(f"{prefix}_bias", layer.bias.astype(np.int32), "int32 [out_c], scale = s_in * s_w[c]"),
        c_array(f"{prefix}_multiplier", layer.multiplier.astype(np.int32), "Q31 requantization multiplier [out_c]"),
        c_array(f"{prefix}_shift", layer.shift.astype(np.int32), "requantization shift [out_c], <0 = right"),
    ]


def field_name(array_name: str, prefix: str) -> str:
    return array_name[len(prefix) + 1 :]


def architecture_hash(model: QuantModel, variant: str, formats: dict[str, str] | None = None,
                      params: str = "static", monitor: QuantModel | None = None) -> int:
    """CRC-32 of what is compiled into the code (ops, shapes, kernels, weight formats), not of the parameters.

    Blob firmware (`params` "blob") also compiles in the monitor QSAE's shapes, and a blob only
    fits blob firmware, so its hash adds a "blob" marker and those shapes.
    """
    _check_params_mode(params)
    formats = formats or {}
    desc = [
        [layer.op.value, list(layer.inputs), list(layer.in_shape), list(layer.out_shape), list(layer.stride),
         list(layer.padding), list(layer.dilation), list(layer.window), layer.depth_multiplier,
         formats.get(layer.name, "dense") + ("" if layer.weight_bits == 8 else f"/s{layer.weight_bits}")]
        for layer in model.layers
    ]  # the width joins the format only when it is not 8, so int8 hashes stay what they were
    doc: list = [variant, desc]
    if params == "blob":
        if monitor is None:
            raise UserError("params mode 'blob' needs the monitor QSAE model")
        doc += ["blob", [[layer.op.value, list(layer.in_shape), list(layer.out_shape)] for layer in monitor.layers]]
    return zlib.crc32(json.dumps(doc, separators=(",", ":")).encode())


def _check_params_mode(params: str) -> None:
    if params not in PARAMS_MODES:
        raise UserError(f"unknown params mode '{params}': choose one of {', '.join(PARAMS_MODES)}")


# --- blob mode: the parameter arrays in blob order ------------------------------------------

# The weight arrays of each format, in blob order (PackedWeights field names).
BLOB_WEIGHT_FIELDS: dict[str, tuple[str, ...]] = {
    "dense": ("weights",),
    "bitmask": ("mask", "values"),
    "csr8": ("values", "deltas", "row_ptr"),
    "csr4": ("values", "deltas", "row_ptr"),
    "block4": ("values", "block_cols", "row_ptr"),
}
BLOB_QUANT_ARRAYS = 4  # bias, multiplier, shift, quant


def layer_blob_arrays(layer: QuantLayer, fmt: str) -> list[np.ndarray]:
    """One weighted layer's arrays in blob order: weights in `fmt` at the layer's width, bias,
    multiplier, shift, quant."""
    packed = pack_layer(layer, fmt)
    rows = int(layer.weights.shape[0])
    bias = np.zeros(rows, dtype=np.int32) if layer.bias is None else layer.bias.astype(np.int32)
    quant = np.array([-layer.input_q.zero_point, layer.output_q.zero_point, layer.act_min, layer.act_max],
                     dtype=np.int32)
    return [getattr(packed, name) for name in BLOB_WEIGHT_FIELDS[fmt]] + [
        bias, layer.multiplier.astype(np.int32), layer.shift.astype(np.int32), quant]


def penultimate_size(model: QuantModel) -> int:
    """Elements of the last layer's input (the tensor the monitor QSAE reads)."""
    if len(model.layers) < 2:
        raise UserError(f"model {model.name} has {len(model.layers)} layer(s): params mode 'blob' needs a "
                        "penultimate tensor for the monitor")
    return shape_product(model.layers[-1].in_shape)


# Ops blob firmware can run: every quantization-dependent constant of theirs lives in the blob.
# ADD, MEAN, SOFTMAX, PAD and average pooling compile theirs in, so an update could not change them.
BLOB_OPS = (Op.CONV2D, Op.DEPTHWISE_CONV2D, Op.DENSE, Op.MAXPOOL2D, Op.RESHAPE)


def check_monitor(model: QuantModel, monitor: QuantModel | None) -> None:
    """Blob firmware runs the model's ops from BLOB_OPS and the monitor QSAE: dense encoder D -> H, dense
    decoder H -> D on the penultimate D."""
    other = [layer for layer in model.layers if layer.op not in BLOB_OPS]
    if other:
        raise UserError(f"layer {other[0].name} ({other[0].op.value}) cannot run in --params blob firmware yet "
                        f"(blob firmware runs {', '.join(op.value for op in BLOB_OPS)}): use --params static")
    if monitor is None:
        raise UserError("params mode 'blob' needs the monitor QSAE model (monitor_qsae.build_monitor_qsae)")
    d = penultimate_size(model)
    if d > MAX_MONITOR_DIM:
        raise UserError(f"model {model.name}: the penultimate tensor has {d} elements, the telemetry supports "
                        f"at most {MAX_MONITOR_DIM}")
    layers = monitor.layers
    ok = (len(layers) == 2 and all(layer.op is Op.DENSE for layer in layers)
          and tuple(layers[0].in_shape) == (d,) and tuple(layers[1].out_shape) == (d,)
          and tuple(layers[0].out_shape) == tuple(layers[1].in_shape))
    if not ok:
        shapes = ", ".join(f"{layer.op.value} {layer.in_shape}->{layer.out_shape}" for layer in layers)
        raise UserError(f"monitor {monitor.name} ({shapes}) is not a dense encoder and decoder on the "
                        f"{d} penultimate activations of {model.name}")


def _weighted(model: QuantModel, formats: dict[str, str]) -> list[tuple[QuantLayer, str]]:
    pairs = [(layer, formats.get(layer.name, "dense")) for layer in model.layers if layer.has_weights]
    for layer, fmt in pairs:
        if fmt not in BLOB_WEIGHT_FIELDS:
            raise UserError(f"layer {layer.name}: unknown weight format '{fmt}'")
    return pairs


def blob_arrays(model: QuantModel, formats: dict[str, str], monitor: QuantModel) -> list[np.ndarray]:
    """Every array of the model's blob, in blob order (see the module docstring)."""
    check_supported(model)
    check_monitor(model, monitor)
    arrays: list[np.ndarray] = []
    for layer, fmt in _weighted(model, formats) + [(layer, "dense") for layer in monitor.layers]:
        arrays += layer_blob_arrays(layer, fmt)
    arrays.append(exp_table(model.output_q.scale))
    return arrays


def build_blob(model: QuantModel, formats: dict[str, str], monitor: QuantModel, variant: str,
               blob_id: int | None = None) -> bytes:
    """The model blob of `model` for blob firmware built with these formats, monitor shapes and variant.

    `model` may be any QuantModel of the firmware's architecture (other weights, non-zero counts,
    scales, zero points): that is how update blobs are made. `blob_id` defaults to the data CRC.
    """
    arch = architecture_hash(model, variant, formats, params="blob", monitor=monitor)
    return pack_blob(blob_arrays(model, formats, monitor), arch, blob_id)


def _quant_initializer(layer: QuantLayer) -> str:
    prefix = f"{PARAM_PREFIX}{layer.name}"
    return (f"{{ .bias = {prefix}_bias, .multiplier = {prefix}_multiplier, .shift = {prefix}_shift,"
            f" .input_offset = {-layer.input_q.zero_point}, .output_offset = {layer.output_q.zero_point},"
            f" .act_min = {layer.act_min}, .act_max = {layer.act_max} }}")


def params_initializer(layer: QuantLayer, fmt: str | None = "dense", blob: bool = False) -> str:
    """C designated initializer of the layer's kernel parameter struct (``OpSpec.struct(fmt)``).

    The operator table's compiled-in fields (shapes, geometry), then for a weighted layer its packed
    weight arrays and quantization. Blob firmware (`blob`) compiles in only the fields: mcup_bind()
    sets the pointers and quantization from the blob.
    """
    spec = spec_of(layer.op)
    fields = [f".{name} = {int(value)}" for name, value in spec.fields(layer).items()]
    if spec.weighted and not blob:
        fields += [weights_initializer(layer.name, pack_layer(layer, fmt)), f".q = {_quant_initializer(layer)}"]
    return "{ " + ", ".join(fields) + " }"


@dataclass(frozen=True)
class GeneratedModel:
    arrays: list[CArray]  # blob mode: the factory blob only
    arena: ArenaPlan
    scratch_bytes: int
    arch_hash: int
    formats: dict[str, str]  # weighted layer name -> a format of ops.FORMATS (its width: layer.weight_bits)
    params: str = "static"
    blob: bytes | None = None  # blob mode: the factory blob
    monitor_bytes: int = 0  # blob mode: RAM of the monitor's hidden and reconstruction buffers

    @property
    def param_bytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)

    def kernel_sources(self, model: QuantModel, variant: str) -> list[Path]:
        """The kernel .c files this model calls (one per op and weight format)."""
        weighted = {(layer.op, self.formats[layer.name], layer.weight_bits) for layer in model.layers
                    if layer.has_weights}
        if self.params == "blob":
            weighted.add((Op.DENSE, "dense", 8))  # the monitor QSAE
        others = {(layer.op, None) for layer in model.layers
                  if not layer.has_weights and spec_of(layer.op).kernel is not None}
        return kernel_sources(variant, weighted | others)


def _describe(layer: QuantLayer, fmt: str | None, blob: bool) -> str:
    """One comment line per layer in model.c: op, shapes, inputs, clamp, weights."""
    text = f"{layer.name} = {layer.op.value}({', '.join(layer.inputs)}) {layer.in_shape} -> {layer.out_shape}"
    if (layer.act_min, layer.act_max) != (-128, 127):
        text += f", clamp [{layer.act_min}, {layer.act_max}]"
    width = "" if not layer.has_weights or layer.weight_bits == 8 else f" int{layer.weight_bits}"
    if layer.has_weights and blob:
        text += f", {fmt}{width} weights from the blob"
    elif layer.has_weights:
        text += f", {fmt}{width} weights ({int(np.count_nonzero(layer.weights))}/{layer.weights.size} non-zero)"
    return text


def _layer_call(layer: QuantLayer, index: int, arena: ArenaPlan, fmt: str | None, blob: bool = False) -> dict:
    """What model.c needs for one layer: its params struct and the C statement that runs it.

    A RESHAPE runs nothing (its output is its input's bytes); only when it is the model's last layer
    are the bytes copied to the caller's output buffer."""
    spec = spec_of(layer.op)
    srcs = [arena.location(name) for name in layer.inputs]
    dst = arena.location(layer.name)
    entry = {"name": layer.name, "index": index, "var": f"mcup_layer_{layer.name}", "struct_type": None,
             "init": None, "function": None, "uses_scratch": layer.has_weights, "describe": _describe(layer, fmt, blob)}
    if spec.kernel is None:
        size = shape_product(layer.out_shape)
        entry["call"] = f"memcpy({dst}, {srcs[0]}, {size});" if dst != srcs[0] else None
        return entry
    args = [f"&{entry['var']}", *srcs, dst] + (["mcup_scratch"] if entry["uses_scratch"] else [])
    bits = layer.weight_bits if spec.weighted else 8
    function = spec.function(fmt, bits)
    entry.update(struct_type=spec.struct(fmt, bits), init=params_initializer(layer, fmt, blob), function=function,
                 call=f"{function}({', '.join(args)});", src=srcs[0], dst=dst)
    return entry


# Blob mode: params struct fields mcup_bind sets from a checked mcup_bound_layer, per format.
_BIND_FIELDS = {
    "dense": ("weights",),
    "bitmask": ("mask", "values"),
    "csr8": ("values", "deltas", "row_ptr", "row_ptr_bytes"),
    "csr4": ("values", "deltas", "row_ptr", "row_ptr_bytes"),
    "block4": ("values", "block_cols", "row_ptr", "row_ptr_bytes"),
}


# mcup_bound_layer's fields for int4 weights (bytes of nibbles, bind_check.h): the struct field they set.
_BIND_S4_SOURCE = {"weights": "weights4", "values": "values4"}


def _bind_entry(layer: QuantLayer, fmt: str, var: str) -> dict:
    """One row of mcup_bind's table and the assignments that point the layer's struct at the blob:
    (struct field, mcup_bound_layer field)."""
    bits = layer.weight_bits
    fields = _BIND_FIELDS[fmt] + ("q",)
    return {
        "name": layer.name,
        "var": var,
        "format": fmt,
        "format_const": _FMT_CONST[fmt],
        "rows": int(layer.weights.shape[0]),
        "cols": int(np.prod(layer.weights.shape[1:])),
        "bits": bits,
        "fields": [(f, _BIND_S4_SOURCE.get(f, f) if bits == 4 else f) for f in fields],
    }


def check_supported(model: QuantModel) -> None:
    for layer in model.layers:
        if layer.op not in OPS:
            names = ", ".join(op.value for op in OPS)
            raise UserError(f"layer '{layer.name}' of type {layer.op.value} is not supported by the code "
                            f"generator (supported: {names})")
        if not layer.has_weights:
            continue
        if layer.weight_bits not in WEIGHT_BITS:
            raise UserError(f"layer '{layer.name}' has {layer.weight_bits}-bit weights; the kernels take "
                            f"{' or '.join(map(str, WEIGHT_BITS))}-bit weights")
        lo, hi = WEIGHT_RANGE[layer.weight_bits]
        w = np.asarray(layer.weights)
        if w.size and (int(w.min()) < lo or int(w.max()) > hi):
            raise UserError(f"layer '{layer.name}' has {layer.weight_bits}-bit weights in [{int(w.min())}, "
                            f"{int(w.max())}], outside [{lo}, {hi}]: quantize it again")


def _blob_context(model: QuantModel, monitor: QuantModel, formats: dict[str, str], arena: ArenaPlan,
                  layer_calls: list[dict], blob: bytes) -> dict:
    """What the templates need for blob mode: the bind table, the monitor, the penultimate tensor."""
    pen_size = penultimate_size(model)
    pen_owner = arena.storage[model.layers[-1].inputs[0]]
    if pen_owner not in arena.offsets:
        raise UserError(f"model {model.name}: the last layer reads the model input directly, so blob firmware "
                        "has no penultimate activations for the monitor")
    pen_offset = arena.offsets[pen_owner]
    # mcup_monitor reads the penultimate tensor after mcup_run returned: it is live until the last
    # layer, which writes the caller's buffer (not the arena), and kernels work in mcup_scratch, so
    # nothing overwrites it after the last layer has read it.
    assert pen_offset + align_up(pen_size) <= arena.size
    assert layer_calls[-1]["dst"] == "logits" and layer_calls[-1]["src"] == f"mcup_arena + {pen_offset}"
    encoder, decoder = monitor.layers
    bind = [_bind_entry(layer, fmt, f"mcup_layer_{layer.name}") for layer, fmt in _weighted(model, formats)]
    bind += [_bind_entry(layer, "dense", f"mcup_monitor_{role}")
             for layer, role in ((encoder, "encoder"), (decoder, "decoder"))]
    n_arrays = sum(len(BLOB_WEIGHT_FIELDS[b["format"]]) + BLOB_QUANT_ARRAYS for b in bind) + 1
    return {
        "bind": bind,
        "blob_arrays": n_arrays,
        "blob_bytes": len(blob),
        "blob_body": c_array_body(np.frombuffer(blob, dtype=np.uint8), per_line=24),
        "bind_bad": BIND_BAD,
        "penultimate_size": pen_size,
        "penultimate_offset": pen_offset,
        "monitor_hidden": int(encoder.out_shape[0]),
        "monitor_function": OPS[Op.DENSE].function("dense"),
        "monitor_structs": [
            {"var": "mcup_monitor_encoder", "init": params_initializer(encoder, blob=True),
             "describe": "encoder: dense + relu"},
            {"var": "mcup_monitor_decoder", "init": params_initializer(decoder, blob=True),
             "describe": "decoder: dense"},
        ],
    }


def generate_model_sources(model: QuantModel, variant: str, src_dir: Path, source: str = "",
                           objective: str = "fastest", core: str | None = None, params: str = "static",
                           monitor: QuantModel | None = None, byte_budget: int | None = None,
                           finish_blob: Callable[[bytes], bytes] | None = None) -> GeneratedModel:
    """Write model.h, model.c and model_data.c for `model` into src_dir.

    Each weighted layer's weights are packed in the format costs.choose_formats picks: with
    objective "fastest" only formats predicted to run no slower than dense on `core` (unless
    `byte_budget` caps the layers' parameter bytes: then the fewest extra instructions that fit it),
    with "smallest" the fewest bytes whatever the speed.

    `params` "blob" takes the parameters from a model blob bound at run time (module docstring)
    and needs `monitor`, the monitor QSAE's QuantModel; the factory blob is ``build_blob`` of
    `model` and comes back in ``GeneratedModel.blob``.
    """
    check_supported(model)
    verify(model)
    _check_params_mode(params)
    if objective not in OBJECTIVES:
        raise UserError(f"unknown objective '{objective}': choose one of {', '.join(OBJECTIVES)}")
    blob_mode = params == "blob"
    if blob_mode:
        check_monitor(model, monitor)
    formats = choose_formats(model.layers, variant, objective, core, byte_budget)
    arena = plan_arena(model)
    fmt_of = [formats.get(layer.name, "dense") if layer.has_weights else None for layer in model.layers]
    scratch_of = [scratch_bytes(layer, fmt, variant) for layer, fmt in zip(model.layers, fmt_of, strict=True)]
    if blob_mode:
        scratch_of += [scratch_bytes(layer, "dense", variant) for layer in monitor.layers]
    scratch = max(scratch_of + [0])
    layer_calls = [_layer_call(layer, i, arena, fmt, blob_mode)
                   for i, (layer, fmt) in enumerate(zip(model.layers, fmt_of, strict=True))]
    arch_hash = architecture_hash(model, variant, formats, params=params, monitor=monitor)
    blob_context: dict | None = None
    if blob_mode:
        blob = build_blob(model, formats, monitor, variant)
        if finish_blob is not None:  # e.g. signing it (target/compile.py)
            blob = finish_blob(blob)
        arrays = [CArray(FACTORY_BLOB, "uint8_t", len(blob), 1, "", "the factory model blob")]
        blob_context = _blob_context(model, monitor, formats, arena, layer_calls, blob)
        monitor_bytes = align_up(blob_context["monitor_hidden"]) + align_up(blob_context["penultimate_size"])
        gen = GeneratedModel(arrays=arrays, arena=arena, scratch_bytes=scratch, arch_hash=arch_hash, formats=formats,
                             params=params, blob=blob, monitor_bytes=monitor_bytes)
    else:
        arrays = [a for layer, fmt in zip(model.layers, fmt_of, strict=True) for a in layer_arrays(layer, fmt)]
        gen = GeneratedModel(arrays=arrays, arena=arena, scratch_bytes=scratch, arch_hash=arch_hash, formats=formats)
    context = {
        "version": __version__,
        "source": source or model.name,
        "model": model,
        "variant": variant,
        "arrays": arrays,
        "layers": layer_calls,
        "input_size": model.input_size,
        "output_size": shape_product(model.layers[-1].out_shape),
        "arena_bytes": arena.size,
        "scratch_bytes": scratch,
        "param_bytes": gen.param_bytes,
        "arch_hash": f"0x{gen.arch_hash:08x}u",
        "input_shape": "x".join(str(d) for d in model.input_shape),
        "blob": blob_context,
    }
    env = Environment(loader=FileSystemLoader(CODEGEN_TEMPLATES_DIR), undefined=StrictUndefined,
                      keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
    src_dir.mkdir(parents=True, exist_ok=True)
    for name in ("model.h", "model.c", "model_data.c"):
        (src_dir / name).write_text(env.get_template(f"{name}.j2").render(**context))
    return gen
