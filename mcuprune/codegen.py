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

from mcuprune import __version__, kernels
from mcuprune.arena import ArenaPlan, plan_arena
from mcuprune.errors import UserError
from mcuprune.ir import Op, QuantLayer, QuantModel, shape_product

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
PARAM_PREFIX = "mcup_param_"  # build.py sums symbols with this prefix as "model flash"
SUPPORTED_OPS = {Op.CONV2D: "conv2d", Op.DENSE: "fc", Op.MAXPOOL2D: "maxpool2d"}
_C_TYPES = {np.dtype(np.int8): "int8_t", np.dtype(np.int32): "int32_t"}


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
    ctype: str
    length: int
    body: str
    comment: str

    @property
    def nbytes(self) -> int:
        return self.length * (1 if self.ctype == "int8_t" else 4)


def _array(layer: QuantLayer, field: str, values: np.ndarray, comment: str) -> CArray:
    values = np.ascontiguousarray(values)
    return CArray(f"{PARAM_PREFIX}{layer.name}_{field}", _C_TYPES[values.dtype], int(values.size),
                  c_array_body(values), comment)


def layer_arrays(layer: QuantLayer) -> list[CArray]:
    """The const parameter arrays one layer needs in flash."""
    if not layer.has_weights:
        return []
    shape = "x".join(str(d) for d in layer.weights.shape)
    layout = "[out_c][k_h][k_w][in_c]" if layer.op is Op.CONV2D else "[out][in]"
    return [
        _array(layer, "weights", layer.weights.astype(np.int8), f"int8 {layout} {shape}, per-channel symmetric"),
        _array(layer, "bias", layer.bias.astype(np.int32), "int32 [out_c], scale = s_in * s_w[c]"),
        _array(layer, "multiplier", layer.multiplier.astype(np.int32), "Q31 requantization multiplier [out_c]"),
        _array(layer, "shift", layer.shift.astype(np.int32), "requantization shift [out_c], <0 = right"),
    ]


def architecture_hash(model: QuantModel, variant: str) -> int:
    """CRC-32 of what is compiled into the code (ops, shapes, kernels), not of the parameters."""
    desc = [
        [layer.op.value, list(layer.in_shape), list(layer.out_shape), layer.stride, layer.pad, layer.pool,
         layer.relu]
        for layer in model.layers
    ]
    return zlib.crc32(json.dumps([variant, desc], separators=(",", ":")).encode())


def _params_struct(layer: QuantLayer) -> str:
    """C designated initializer for the layer's kernel parameter struct."""
    prefix = f"{PARAM_PREFIX}{layer.name}"
    quant = (f"{{ .bias = {prefix}_bias, .multiplier = {prefix}_multiplier, .shift = {prefix}_shift,"
             f" .input_offset = {-layer.input_q.zero_point}, .output_offset = {layer.output_q.zero_point},"
             f" .act_min = {layer.act_min}, .act_max = {layer.act_max} }}")
    if layer.op is Op.CONV2D:
        c_out, k_h, k_w, _ = layer.weights.shape
        h, w, c = layer.in_shape
        oh, ow, _ = layer.out_shape
        return (f"{{ .in_h = {h}, .in_w = {w}, .in_c = {c}, .out_h = {oh}, .out_w = {ow}, .out_c = {c_out},"
                f" .k_h = {k_h}, .k_w = {k_w}, .stride = {layer.stride}, .pad = {layer.pad},"
                f" .weights = {prefix}_weights, .q = {quant} }}")
    if layer.op is Op.DENSE:
        return (f"{{ .in_features = {layer.in_shape[0]}, .out_features = {layer.out_shape[0]},"
                f" .weights = {prefix}_weights, .q = {quant} }}")
    h, w, c = layer.in_shape
    return f"{{ .in_h = {h}, .in_w = {w}, .c = {c}, .pool = {layer.pool} }}"


@dataclass(frozen=True)
class GeneratedModel:
    arrays: list[CArray]
    arena: ArenaPlan
    scratch_bytes: int
    arch_hash: int

    @property
    def param_bytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)


def _layer_call(layer: QuantLayer, index: int, n_layers: int, arena: ArenaPlan) -> dict:
    op = SUPPORTED_OPS[layer.op]
    src = "input" if index == 0 else f"mcup_arena + {arena.offsets[index - 1]}"
    dst = "logits" if index == n_layers - 1 else f"mcup_arena + {arena.offsets[index]}"
    struct_type = {"conv2d": "mcup_conv2d_params", "fc": "mcup_fc_params", "maxpool2d": "mcup_maxpool2d_params"}[op]
    function = kernels.KERNEL_FUNCTIONS[layer.op]
    return {
        "name": layer.name,
        "index": index,
        "struct_type": struct_type,
        "var": f"mcup_layer_{layer.name}",
        "init": _params_struct(layer),
        "function": function,
        "src": src,
        "dst": dst,
        "uses_scratch": layer.has_weights,
        "describe": f"{layer.op.value} {layer.in_shape} -> {layer.out_shape}" + (" + relu" if layer.relu else ""),
    }


def check_supported(model: QuantModel) -> None:
    for layer in model.layers:
        if layer.op not in SUPPORTED_OPS:
            names = ", ".join(op.value for op in SUPPORTED_OPS)
            raise UserError(f"layer '{layer.name}' of type {layer.op.value} is not supported by the code "
                            f"generator (supported: {names})")


def generate_model_sources(model: QuantModel, variant: str, src_dir: Path, source: str = "") -> GeneratedModel:
    """Write model.h, model.c and model_data.c for `model` into src_dir."""
    check_supported(model)
    n = len(model.layers)
    arena = plan_arena([shape_product(layer.out_shape) for layer in model.layers[:-1]])
    scratch = max([kernels.scratch_bytes(layer, variant) for layer in model.layers] + [0])
    arrays = [a for layer in model.layers for a in layer_arrays(layer)]
    gen = GeneratedModel(arrays=arrays, arena=arena, scratch_bytes=scratch, arch_hash=architecture_hash(model,
                                                                                                         variant))
    context = {
        "version": __version__,
        "source": source or model.name,
        "model": model,
        "variant": variant,
        "arrays": arrays,
        "layers": [_layer_call(layer, i, n, arena) for i, layer in enumerate(model.layers)],
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
