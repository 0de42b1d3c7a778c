"""TVM kernel backend: each layer's int8 computation as a TE/TIR function, lowered by Apache TVM to C.

The third kernel variant next to ``reference`` and ``dsp``. For every distinct layer shape of a
model, TVM compiles one function (``tvm.compile(..., target="c")``), all of them into one C file
that follows the TVM-FFI packed calling convention. Small generated wrappers give them the
signatures of ``firmware/include/mcup_nn.h`` (``mcup_fc_s8_dense`` and friends), so the rest of
the firmware cannot tell the difference, and ``firmware/tvm/`` supplies the bit of TVM-FFI the
generated code needs on bare metal (types, the error hook; no runtime, no malloc).

The arithmetic is the one of ``firmware/include/mcup_requant.h`` and ``mcuprune/fixedpoint.py``:
int32 accumulation of ``(x + input_offset) * w`` plus bias, ``(int32)((uint32)acc << left)``,
the rounding high multiply ``(a * m + 2^30) >> 31`` in int64, the rounding power-of-two divide,
output offset, clamp. The saturating case of the high multiply (both operands INT32_MIN) cannot
occur: multipliers are in [0, 2^31) (fixedpoint.quantize_multiplier), so it is left out.

    sources = tvm_kernel_sources(model, fw_dir / "tvm")     # .c files + the shim header
    codegen.generate_model_sources(model, "reference", fw_dir / "src")
    build.prepare_project(fw_dir, board, sources)

Apache TVM is optional (``pip install mcuprune[tvm]``); it is imported only inside this module's
functions.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcuprune import __version__
from mcuprune.errors import UserError
from mcuprune.model.ir import Op, QuantLayer, QuantModel
from mcuprune.resources import TVM_FIRMWARE_DIR

SHIM_HEADER = TVM_FIRMWARE_DIR / "mcup_tvm_ffi.h"
SHIM_SOURCE = TVM_FIRMWARE_DIR / "tvm_ffi_shim.c"
GENERATED_KERNELS = "tvm_kernels.c"  # all TVM-generated functions of one model

INSTALL_HINT = "pip install mcuprune[tvm]"
# The includes TVM's C codegen emits; the shim header stands in for all of them.
_TVM_INCLUDE_RE = re.compile(r'^#include "tvm/[^"]+"\n', re.MULTILINE)


def tvm_available() -> bool:
    """True if Apache TVM (with its TE front end and C code generator) can be imported."""
    try:
        if importlib.util.find_spec("tvm") is None:
            return False
        import tvm  # noqa: F401
        from tvm import te  # noqa: F401
    except Exception:  # a blocked or broken install counts as missing: the message says how to get one
        return False
    return True


def _require_tvm() -> Any:
    if not tvm_available():
        raise UserError(f"the tvm kernel backend needs Apache TVM, which is not installed: {INSTALL_HINT} "
                        "(apache-tvm 0.25-0.27)")
    import tvm

    return tvm


# --- the kernels as TE computations -----------------------------------------------------------


@dataclass(frozen=True)
class TvmKernel:
    """One TVM-generated function: which op, for which shape, and the C symbol to call."""

    op: Op
    key: tuple[int, ...]  # the shape fields of the mcup_*_params struct that select this function
    name: str  # TVM global symbol; the packed C function is __tvm_ffi_<name>

    @property
    def symbol(self) -> str:
        return f"__tvm_ffi_{self.name}"


# Wrapper dispatch: mcup_*_params fields compared against TvmKernel.key, in this order.
_KEY_FIELDS: dict[Op, tuple[str, ...]] = {
    Op.DENSE: ("in_features", "out_features"),
    Op.CONV2D: ("in_h", "in_w", "in_c", "out_h", "out_w", "out_c", "k_h", "k_w", "stride_h", "pad_top"),
    Op.MAXPOOL2D: ("in_h", "in_w", "c", "k_h"),
}


def _refuse(layer: QuantLayer, what: str) -> UserError:
    return UserError(f"layer '{layer.name}': the tvm kernel backend supports {what} only; use --kernels auto")


def _square(layer: QuantLayer) -> tuple[int, int]:
    """(stride, pad) of a layer whose geometry the TVM kernels take: equal strides, one padding all
    round, no dilation (the shapes of mcuprune's own CNNs)."""
    (sh, sw), (top, bottom, left, right) = layer.stride, layer.padding
    if sh != sw or len({top, bottom, left, right}) != 1 or tuple(layer.dilation) != (1, 1):
        raise _refuse(layer, "equal strides, equal padding on every side and no dilation")
    return int(sh), int(top)


def kernel_for(layer: QuantLayer) -> TvmKernel:
    """The TVM function a layer runs on; layers with the same shape share one. The TVM kernels read
    int8 weights: a layer with int4 weights (``weight_bits`` 4) is refused."""
    if layer.has_weights and layer.weight_bits != 8:
        raise UserError(f"layer '{layer.name}' has {layer.weight_bits}-bit weights; the tvm kernel backend runs "
                        "int8 weights only: use --kernels auto, or quantize the layer to 8 bits")
    if layer.op is Op.DENSE:
        key = (int(layer.in_shape[0]), int(layer.out_shape[0]))
        return TvmKernel(layer.op, key, "mcup_tvm_fc_{}x{}".format(*key))
    if layer.op is Op.CONV2D:
        c_out, k_h, k_w, _ = (int(d) for d in layer.weights.shape)
        h, w, c = (int(d) for d in layer.in_shape)
        oh, ow, _ = (int(d) for d in layer.out_shape)
        key = (h, w, c, oh, ow, c_out, k_h, k_w, *_square(layer))
        return TvmKernel(layer.op, key, "mcup_tvm_conv2d_{}x{}x{}_{}x{}x{}_k{}x{}_s{}_p{}".format(*key))
    if layer.op is Op.MAXPOOL2D:
        h, w, c = (int(d) for d in layer.in_shape)
        pool = int(layer.window[0])
        if (tuple(layer.window) != (pool, pool) or tuple(layer.stride) != (pool, pool) or any(layer.padding)
                or (layer.act_min, layer.act_max) != (-128, 127)):
            raise _refuse(layer, "max pooling with a square window equal to its stride, no padding and no clamp")
        key = (h, w, c, pool)
        return TvmKernel(layer.op, key, "mcup_tvm_maxpool2d_{}x{}x{}_p{}".format(*key))
    raise UserError(f"layer '{layer.name}' of type {layer.op.value} has no TVM kernel "
                    f"(supported: {', '.join(op.value for op in _KEY_FIELDS)})")


def _requantize_s8(tvm: Any, acc: Any, multiplier: Any, shift: Any, output_offset: Any, act_min: Any,
                   act_max: Any) -> Any:
    """mcup_requantize_s8() as a TE expression (int32 acc -> int8)."""
    te = tvm.te

    def i64(v: int) -> Any:
        return tvm.tirx.const(v, "int64")

    left = te.max(shift, 0)
    right = te.max(-shift, 0).astype("int64")
    scaled = (acc.astype("uint32") << left.astype("uint32")).astype("int32")  # wraps like the C
    high = (scaled.astype("int64") * multiplier.astype("int64") + i64(1 << 30)) >> i64(31)
    mask = (i64(1) << right) - i64(1)
    threshold = (mask >> i64(1)) + te.if_then_else(high < i64(0), i64(1), i64(0))
    rounded = (high >> right) + te.if_then_else((high & mask) > threshold, i64(1), i64(0))
    value = rounded.astype("int32") + output_offset
    return te.min(te.max(value, act_min), act_max).astype("int8")


def _quant_args(tvm: Any, n: int) -> tuple[list[Any], list[Any]]:
    """Per-channel arrays (bias, multiplier, shift) and the four int32 scalars of mcup_quant_params."""
    te = tvm.te
    arrays = [te.placeholder((n,), "int32", name=name) for name in ("bias", "multiplier", "shift")]
    scalars = [te.var(name, "int32") for name in ("input_offset", "output_offset", "act_min", "act_max")]
    return arrays, scalars


def _schedule_accumulator(tvm: Any, func: Any, out_loops: int, unroll: int = 0) -> Any:
    """Compute the int32 accumulator inside the output's innermost loop (a 1-element local, no
    workspace allocation), hoist its zero-initialisation out of the reduction, and unroll the
    first `unroll` reduction loops (the kernel window, so padding tests become per-tap)."""
    sch = tvm.s_tir.Schedule(func)
    acc = sch.get_sblock("acc")
    sch.compute_at(acc, sch.get_loops(sch.get_sblock("out"))[out_loops - 1])
    sch.decompose_reduction(acc, sch.get_loops(acc)[out_loops])
    for loop in sch.get_loops(acc)[out_loops : out_loops + unroll]:
        sch.unroll(loop)
    return sch.mod["main"]


def _fc_func(tvm: Any, in_features: int, out_features: int) -> Any:
    te = tvm.te
    x = te.placeholder((in_features,), "int8", name="input")
    w = te.placeholder((out_features, in_features), "int8", name="weights")
    (bias, mult, shift), (in_off, out_off, act_min, act_max) = _quant_args(tvm, out_features)
    i = te.reduce_axis((0, in_features), "i")
    acc = te.compute((out_features,), lambda o: te.sum(
        (x[i].astype("int32") + in_off) * w[o, i].astype("int32"), axis=i), name="acc")
    out = te.compute((out_features,), lambda o: _requantize_s8(
        tvm, acc[o] + bias[o], mult[o], shift[o], out_off, act_min, act_max), name="out")
    func = te.create_prim_func([x, w, bias, mult, shift, in_off, out_off, act_min, act_max, out])
    return _schedule_accumulator(tvm, func, 1)


def _conv2d_func(tvm: Any, h: int, w: int, c: int, oh: int, ow: int, oc: int, k_h: int, k_w: int, stride: int,
                 pad: int) -> Any:
    te = tvm.te
    x = te.placeholder((h, w, c), "int8", name="input")
    wt = te.placeholder((oc, k_h, k_w, c), "int8", name="weights")
    (bias, mult, shift), (in_off, out_off, act_min, act_max) = _quant_args(tvm, oc)
    ky, kx, ic = te.reduce_axis((0, k_h), "ky"), te.reduce_axis((0, k_w), "kx"), te.reduce_axis((0, c), "ic")

    def tap(oy: Any, ox: Any, o: Any) -> Any:
        iy, ix = oy * stride - pad + ky, ox * stride - pad + kx
        product = (x[iy, ix, ic].astype("int32") + in_off) * wt[o, ky, kx, ic].astype("int32")
        if pad == 0:
            return product
        # Padding holds the input zero point, so its (x + input_offset) is 0: skip it.
        inside = tvm.tirx.all(iy >= 0, iy < h, ix >= 0, ix < w)
        return te.if_then_else(inside, product, tvm.tirx.const(0, "int32"))

    acc = te.compute((oh, ow, oc), lambda oy, ox, o: te.sum(tap(oy, ox, o), axis=[ky, kx, ic]), name="acc")
    out = te.compute((oh, ow, oc), lambda oy, ox, o: _requantize_s8(
        tvm, acc[oy, ox, o] + bias[o], mult[o], shift[o], out_off, act_min, act_max), name="out")
    func = te.create_prim_func([x, wt, bias, mult, shift, in_off, out_off, act_min, act_max, out])
    return _schedule_accumulator(tvm, func, 3, unroll=2 if pad else 0)


def _maxpool2d_func(tvm: Any, h: int, w: int, c: int, pool: int) -> Any:
    te = tvm.te
    x = te.placeholder((h, w, c), "int8", name="input")
    ky, kx = te.reduce_axis((0, pool), "ky"), te.reduce_axis((0, pool), "kx")
    out = te.compute((h // pool, w // pool, c), lambda oy, ox, ch: te.max(
        x[oy * pool + ky, ox * pool + kx, ch], axis=[ky, kx]), name="out")  # identity: INT8_MIN
    return te.create_prim_func([x, out])


def _prim_func(tvm: Any, kernel: TvmKernel) -> Any:
    builders = {Op.DENSE: _fc_func, Op.CONV2D: _conv2d_func, Op.MAXPOOL2D: _maxpool2d_func}
    return builders[kernel.op](tvm, *kernel.key).with_attr("global_symbol", kernel.name)


def model_kernels(model: QuantModel) -> list[TvmKernel]:
    """The distinct TVM functions a model needs, in first-use order."""
    kernels: dict[str, TvmKernel] = {}
    for layer in model.layers:
        kernel = kernel_for(layer)
        kernels.setdefault(kernel.name, kernel)
    return list(kernels.values())


def generate_tvm_c(kernels: list[TvmKernel], checks: bool = False) -> str:
    """Lower the kernels with TVM's C code generator; returns the C source (includes already
    pointed at the shim). With `checks`, TVM's per-call argument checks stay in (bigger code)."""
    tvm = _require_tvm()
    module = tvm.IRModule({k.name: _prim_func(tvm, k) for k in kernels})
    with tvm.transform.PassContext(config={"tirx.disable_assert": not checks}):
        source = tvm.compile(module, target="c").mod.inspect_source()
    if "TVMBackendAllocWorkspace" in source:  # the schedules above never need one
        raise AssertionError("TVM-generated kernels ask for a workspace allocation")
    body, count = _TVM_INCLUDE_RE.subn("", source)
    if count == 0:
        raise UserError(f"TVM {tvm.__version__} generated C without its usual includes: unsupported version")
    header = (f"/* Generated by mcuprune {__version__} with Apache TVM {tvm.__version__} (target \"c\", TVM-FFI\n"
              f" * packed calling convention) from mcuprune/tvm_backend.py. Do not edit. */\n"
              f'#include "{SHIM_HEADER.name}"\n'
              "/* TVM's packed functions take (self, args, num_args, result) whether they use them or not,\n"
              " * and with argument checks off still read every argument's type index. */\n"
              '#pragma GCC diagnostic ignored "-Wunused-parameter"\n'
              '#pragma GCC diagnostic ignored "-Wunused-variable"\n'
              '#pragma GCC diagnostic ignored "-Wunused-but-set-variable"\n')
    return header + body


# --- wrappers with the mcup_nn.h signatures ----------------------------------------------------

_WRAPPER_FILES = {Op.DENSE: "tvm_fc_s8_dense.c", Op.CONV2D: "tvm_conv2d_s8_dense.c",
                  Op.MAXPOOL2D: "tvm_maxpool2d_s8.c"}
_INT8, _INT32 = (0, 8), (0, 32)  # DLDataType code, bits


def _dispatch(kernels: list[TvmKernel], op: Op) -> str:
    """`if (p->a == 1 && p->b == 2) { fn = __tvm_ffi_...; }` lines selecting the function by shape."""
    lines = []
    for k in kernels:
        cond = " && ".join(f"p->{f} == {v}" for f, v in zip(_KEY_FIELDS[op], k.key, strict=True))
        lines.append(f"    {'else ' if lines else ''}if ({cond}) {{\n        fn = {k.symbol};\n    }}")
    return "\n".join(lines)


def _declarations(kernels: list[TvmKernel]) -> str:
    return "\n".join(f"int32_t {k.symbol}(void *self, void *args, int32_t num_args, void *result);" for k in kernels)


def _tensor_args(tensors: list[tuple[str, str, tuple[int, int], list[str]]]) -> str:
    """C statements filling args[i] with DLTensors: (data expression, name, dtype, shape expressions)."""
    out = []
    for i, (data, name, (code, bits), shape) in enumerate(tensors):
        out.append(f"    int64_t {name}_shape[{len(shape)}] = {{{', '.join(shape)}}};")
        out.append(f"    mcup_tvm_arg_tensor(&args[{i}], &tensors[{i}], {data}, {len(shape)}, {name}_shape, "
                   f"{code}u, {bits}u);")
    return "\n".join(out)


def _quant_call(kernels: list[TvmKernel], op: Op, function: str, params: str,
                tensors: list[tuple[str, str, tuple[int, int], list[str]]], what: str) -> str:
    """A wrapper for a kernel that ends in requantization: 5 tensors, 4 scalars, the output tensor."""
    scalars = ["input_offset", "output_offset", "act_min", "act_max"]
    out_tensor = tensors[-1]
    arg_lines = _tensor_args(tensors[:-1])
    return f"""{_declarations(kernels)}

int32_t {function}_get_buffer_size(const {params} *p)
{{
    (void)p;
    return 0; /* TVM's schedule keeps the accumulator in a register: no scratch */
}}

/* {what} */
void {function}(const {params} *p, const int8_t *input, int8_t *output, void *scratch)
{{
    (void)scratch;
    mcup_tvm_packed_fn fn = NULL;
{_dispatch(kernels, op)}
    DLTensor tensors[6];
    TVMFFIAny args[10];
{arg_lines}
{chr(10).join(f"    mcup_tvm_arg_int(&args[{5 + i}], p->q.{s});" for i, s in enumerate(scalars))}
    int64_t {out_tensor[1]}_shape[{len(out_tensor[3])}] = {{{', '.join(out_tensor[3])}}};
    mcup_tvm_arg_tensor(&args[9], &tensors[5], {out_tensor[0]}, {len(out_tensor[3])}, {out_tensor[1]}_shape, \
{out_tensor[2][0]}u, {out_tensor[2][1]}u);
    mcup_tvm_call(fn, args, 10);
}}
"""


def _wrapper_source(op: Op, kernels: list[TvmKernel], model_name: str) -> str:
    head = (f"/* Generated by mcuprune {__version__} from mcuprune/tvm_backend.py for model {model_name}. "
            "Do not edit.\n"
            f" * {_WRAPPER_FILES[op][4:-2]} with the mcup_nn.h signature, running the TVM-generated functions in\n"
            f" * {GENERATED_KERNELS} (one per layer shape) through the TVM-FFI packed convention. */\n"
            '#include "mcup_nn.h"\n'
            f'#include "{SHIM_HEADER.name}"\n\n')
    quant = [("p->weights", "weights", _INT8, []), ("p->q.bias", "bias", _INT32, []),
             ("p->q.multiplier", "multiplier", _INT32, []), ("p->q.shift", "shift", _INT32, [])]
    if op is Op.DENSE:
        tensors = [("input", "input", _INT8, ["p->in_features"])] + quant + [("output", "output", _INT8,
                                                                              ["p->out_features"])]
        tensors[1] = ("p->weights", "weights", _INT8, ["p->out_features", "p->in_features"])
        for i in (2, 3, 4):
            tensors[i] = (*tensors[i][:3], ["p->out_features"])
        return head + _quant_call(kernels, op, "mcup_fc_s8_dense", "mcup_fc_params", tensors,
                                  "Fully connected int8 (see mcup_nn.h).")
    if op is Op.CONV2D:
        tensors = [("input", "input", _INT8, ["p->in_h", "p->in_w", "p->in_c"])] + quant + [
            ("output", "output", _INT8, ["p->out_h", "p->out_w", "p->out_c"])]
        tensors[1] = ("p->weights", "weights", _INT8, ["p->out_c", "p->k_h", "p->k_w", "p->in_c"])
        for i in (2, 3, 4):
            tensors[i] = (*tensors[i][:3], ["p->out_c"])
        return head + _quant_call(kernels, op, "mcup_conv2d_s8_dense", "mcup_conv2d_params", tensors,
                                  "2-D convolution int8, HWC (see mcup_nn.h).")
    tensors = [("input", "input", _INT8, ["p->in_h", "p->in_w", "p->c"])]
    return head + f"""{_declarations(kernels)}

/* Max pooling int8, HWC (see mcup_nn.h). */
void mcup_maxpool2d_s8(const mcup_maxpool2d_params *p, const int8_t *input, int8_t *output)
{{
    mcup_tvm_packed_fn fn = NULL;
{_dispatch(kernels, op)}
    DLTensor tensors[2];
    TVMFFIAny args[2];
{_tensor_args(tensors)}
    int64_t output_shape[3] = {{p->out_h, p->out_w, p->c}};
    mcup_tvm_arg_tensor(&args[1], &tensors[1], output, 3, output_shape, 0u, 8u);
    mcup_tvm_call(fn, args, 2);
}}
"""


def tvm_kernel_sources(model: QuantModel, out_dir: Path, checks: bool = False,
                       formats: dict[str, str] | None = None) -> list[Path]:
    """Generate the TVM kernels of `model` into out_dir; returns the files build.prepare_project
    copies into the firmware: the TVM-generated C, one wrapper per op kind (mcup_nn.h signatures),
    the shim source and its header. Missing TVM -> UserError naming `pip install mcuprune[tvm]`.

    The TVM kernels read dense weights: `formats` (GeneratedModel.formats of the code generator's
    run) must say "dense" for every layer. `checks` keeps TVM's argument checks in the code."""
    sparse_layers = sorted(name for name, fmt in (formats or {}).items() if fmt != "dense")
    if sparse_layers:
        raise UserError(f"the tvm kernels take dense weights only; layers {', '.join(sparse_layers)} were packed "
                        "sparse: generate the model with dense weights for --kernels tvm")
    kernels = model_kernels(model)
    source = generate_tvm_c(kernels, checks=checks)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / GENERATED_KERNELS]
    written[0].write_text(source, encoding="utf-8")
    for op in (op for op in Op if op in _WRAPPER_FILES):
        of_op = [k for k in kernels if k.op is op]
        if of_op:
            path = out_dir / _WRAPPER_FILES[op]
            path.write_text(_wrapper_source(op, of_op, model.name), encoding="utf-8")
            written.append(path)
    return written + [SHIM_SOURCE, SHIM_HEADER]
