"""QuantModel -> C sources of one model (model.h, model.c, model_data.c) via Jinja templates.

Python decides everything that varies per model (array contents, shapes, arena offsets, which
kernel each layer calls); the templates only lay it out. Fixed C (kernels, runtime) lives in
firmware/ and is copied next to the generated files by build.prepare_project.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from mcuprune import __version__, kernels, sparse
from mcuprune.arena import ArenaPlan, plan_arena
from mcuprune.errors import UserError
from mcuprune.ir import Op, QuantLayer, QuantModel, shape_product

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
PARAM_PREFIX = "mcup_param_"  # build.py sums symbols with this prefix as "model flash"
SUPPORTED_OPS = (Op.CONV2D, Op.DENSE, Op.MAXPOOL2D)
POOL_STRUCT = "mcup_maxpool2d_params"


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


def layer_arrays(layer: QuantLayer, fmt: str = "dense") -> list[CArray]:
    """The const parameter arrays one layer needs in flash, weights packed in `fmt`."""
    if not layer.has_weights:
        return []
    prefix = f"{PARAM_PREFIX}{layer.name}"
    shape = "x".join(str(d) for d in layer.weights.shape)
    layout = "[out_c][k_h][k_w][in_c]" if layer.op is Op.CONV2D else "[out][in]"
    if fmt == "dense":
        weights = [c_array(f"{prefix}_weights", layer.weights.astype(np.int8),
                           f"int8 {layout} {shape}, per-channel symmetric")]
    else:
        packed = sparse.pack(layer.weights, fmt)
        nnz = int(np.count_nonzero(layer.weights))
        weights = [c_array(name, values, f"{fmt} {field_name(name, prefix)} of {layout} {shape} "
                                         f"({nnz} non-zeros, see mcup_sparse.h)")
                   for name, _, values in sparse.c_arrays(layer.name, packed)]
    return weights + [
        c_array(f"{prefix}_bias", layer.bias.astype(np.int32), "int32 [out_c], scale = s_in * s_w[c]"),
        c_array(f"{prefix}_multiplier", layer.multiplier.astype(np.int32), "Q31 requantization multiplier [out_c]"),
        c_array(f"{prefix}_shift", layer.shift.astype(np.int32), "requantization shift [out_c], <0 = right"),
    ]


def field_name(array_name: str, prefix: str) -> str:
    return array_name[len(prefix) + 1 :]


def architecture_hash(model: QuantModel, variant: str, formats: dict[str, str] | None = None) -> int:
    """CRC-32 of what is compiled into the code (ops, shapes, kernels, weight formats), not of the parameters."""
    formats = formats or {}
    desc = [
        [layer.op.value, list(layer.in_shape), list(layer.out_shape), layer.stride, layer.pad, layer.pool,
         layer.relu, formats.get(layer.name, "dense")]
        for layer in model.layers
    ]
    return zlib.crc32(json.dumps([variant, desc], separators=(",", ":")).encode())


def _quant_initializer(layer: QuantLayer) -> str:
    prefix = f"{PARAM_PREFIX}{layer.name}"
    return (f"{{ .bias = {prefix}_bias, .multiplier = {prefix}_multiplier, .shift = {prefix}_shift,"
            f" .input_offset = {-layer.input_q.zero_point}, .output_offset = {layer.output_q.zero_point},"
            f" .act_min = {layer.act_min}, .act_max = {layer.act_max} }}")


def _params_struct(layer: QuantLayer, fmt: str) -> str:
    """C designated initializer for the layer's kernel parameter struct."""
    if layer.op is Op.MAXPOOL2D:
        h, w, c = layer.in_shape
        return f"{{ .in_h = {h}, .in_w = {w}, .c = {c}, .pool = {layer.pool} }}"
    if fmt != "dense":
        return sparse.c_params_initializer(layer, sparse.pack(layer.weights, fmt), _quant_initializer(layer))
    prefix = f"{PARAM_PREFIX}{layer.name}"
    if layer.op is Op.CONV2D:
        c_out, k_h, k_w, _ = layer.weights.shape
        h, w, c = layer.in_shape
        oh, ow, _ = layer.out_shape
        return (f"{{ .in_h = {h}, .in_w = {w}, .in_c = {c}, .out_h = {oh}, .out_w = {ow}, .out_c = {c_out},"
                f" .k_h = {k_h}, .k_w = {k_w}, .stride = {layer.stride}, .pad = {layer.pad},"
                f" .weights = {prefix}_weights, .q = {_quant_initializer(layer)} }}")
    return (f"{{ .in_features = {layer.in_shape[0]}, .out_features = {layer.out_shape[0]},"
            f" .weights = {prefix}_weights, .q = {_quant_initializer(layer)} }}")


@dataclass(frozen=True)
class GeneratedModel:
    arrays: list[CArray]
    arena: ArenaPlan
    scratch_bytes: int
    arch_hash: int
    formats: dict[str, str]  # weighted layer name -> dense | bitmask | csr8 | csr4

    @property
    def param_bytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)

    def kernel_sources(self, model: QuantModel, variant: str) -> list[Path]:
        """The kernel .c files this model calls (one per op and weight format)."""
        weighted = {(layer.op, self.formats[layer.name]) for layer in model.layers if layer.has_weights}
        others = {layer.op for layer in model.layers if not layer.has_weights}
        return sparse.sparse_kernel_sources(variant, weighted) + kernels.kernel_sources(variant, others)


def _layer_call(layer: QuantLayer, index: int, n_layers: int, arena: ArenaPlan, fmt: str) -> dict:
    src = "input" if index == 0 else f"mcup_arena + {arena.offsets[index - 1]}"
    dst = "logits" if index == n_layers - 1 else f"mcup_arena + {arena.offsets[index]}"
    if layer.has_weights:
        struct_type = sparse.PARAMS_STRUCTS[(layer.op, fmt)]
        function = sparse.SPARSE_KERNEL_FUNCTIONS[(layer.op, fmt)]
    else:
        struct_type, function = POOL_STRUCT, kernels.KERNEL_FUNCTIONS[layer.op]
    describe = f"{layer.op.value} {layer.in_shape} -> {layer.out_shape}" + (" + relu" if layer.relu else "")
    if layer.has_weights:
        describe += f", {fmt} weights ({int(np.count_nonzero(layer.weights))}/{layer.weights.size} non-zero)"
    return {
        "name": layer.name,
        "index": index,
        "struct_type": struct_type,
        "var": f"mcup_layer_{layer.name}",
        "init": _params_struct(layer, fmt),
        "function": function,
        "src": src,
        "dst": dst,
        "uses_scratch": layer.has_weights,
        "describe": describe,
    }


def check_supported(model: QuantModel) -> None:
    for layer in model.layers:
        if layer.op not in SUPPORTED_OPS:
            names = ", ".join(op.value for op in SUPPORTED_OPS)
            raise UserError(f"layer '{layer.name}' of type {layer.op.value} is not supported by the code "
                            f"generator (supported: {names})")


def _scratch(layer: QuantLayer, fmt: str, variant: str) -> int:
    if layer.has_weights:
        return sparse.sparse_scratch_bytes(layer, fmt, variant)
    return kernels.scratch_bytes(layer, variant)


def generate_model_sources(model: QuantModel, variant: str, src_dir: Path, source: str = "",
                           objective: str = "fastest", core: str | None = None) -> GeneratedModel:
    """Write model.h, model.c and model_data.c for `model` into src_dir.

    Each weighted layer's weights are packed in the format sparse.choose_formats picks: with
    objective "fastest" only formats predicted to run no slower than dense on `core`, with
    "smallest" the fewest bytes whatever the speed.
    """
    check_supported(model)
    if objective not in sparse.OBJECTIVES:
        raise UserError(f"unknown objective '{objective}': choose one of {', '.join(sparse.OBJECTIVES)}")
    formats = sparse.choose_formats(model.layers, variant, objective, core)
    n = len(model.layers)
    arena = plan_arena([shape_product(layer.out_shape) for layer in model.layers[:-1]])
    fmt_of = [formats.get(layer.name, "dense") for layer in model.layers]
    scratch = max([_scratch(layer, fmt, variant) for layer, fmt in zip(model.layers, fmt_of, strict=True)] + [0])
    arrays = [a for layer, fmt in zip(model.layers, fmt_of, strict=True) for a in layer_arrays(layer, fmt)]
    gen = GeneratedModel(arrays=arrays, arena=arena, scratch_bytes=scratch,
                         arch_hash=architecture_hash(model, variant, formats), formats=formats)
    context = {
        "version": __version__,
        "source": source or model.name,
        "model": model,
        "variant": variant,
        "arrays": arrays,
        "layers": [_layer_call(layer, i, n, arena, fmt) for i, (layer, fmt) in enumerate(zip(model.layers, fmt_of,
                                                                                              strict=True))],
        "input_size": model.input_size,
        "output_size": shape_product(model.layers[-1].out_shape),
        "arena_bytes": arena.size,
        "scratch_bytes": scratch,
        "param_bytes": gen.param_bytes,
        "arch_hash": f"0x{gen.arch_hash:08x}u",
        "input_shape": "x".join(str(d) for d in model.input_shape),
    }
    env = Environment(loader=FileSystemLoader(TEMPLATES_DIR), undefined=StrictUndefined, keep_trailing_newline=True,
                      trim_blocks=True, lstrip_blocks=True)
    src_dir.mkdir(parents=True, exist_ok=True)
    for name in ("model.h", "model.c", "model_data.c"):
        (src_dir / name).write_text(env.get_template(f"{name}.j2").render(**context))
    return gen
