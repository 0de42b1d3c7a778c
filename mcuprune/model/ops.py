"""The operator table: every fact about an operator that more than one stage needs, declared once.

Stages read the table, never a list of their own: the interpreters call ``reference_s8`` and
``reference_f32``; the code generator names the kernel function, its parameter struct and its
source file from ``kernel`` and the weight format, fills the struct's compiled-in fields from
``fields`` and sizes the scratch buffer with ``scratch_bytes``; the cost model keys on the op.

Kernels follow one naming scheme (CMSIS-NN style, flat and predictable):

* function ``mcup_<kernel>_s8`` (no weights) or ``mcup_<kernel>_s<bits>_<format>`` (weights of
  ``bits`` = 8 or 4 packed in ``format``, see formats.py: ``mcup_fc_s8_dense``, ``mcup_fc_s4_csr4``),
  declared in ``firmware/include/mcup_nn.h`` (dense) or ``mcup_sparse.h`` (sparse formats), with a
  ``_get_buffer_size`` companion when it takes scratch; a layer's (format, ``weight_bits``) pair
  selects its kernel;
* source ``firmware/kernels/reference/<function minus mcup_>.c``, and an optimized twin with the
  same file and function name in ``firmware/kernels/<variant>/`` where one pays (tflite-micro's
  habit: the build picks one file per kernel);
* parameter struct ``mcup_<kernel>_params`` (dense int8 weights or none), ``mcup_<kernel>_bitmask_params``,
  ``mcup_<kernel>_csr_params`` (csr8 and csr4 share it) or ``mcup_<kernel>_block4_params``; the int4
  kernels' structs insert ``_s4`` (``mcup_fc_s4_params``, ``mcup_conv2d_s4_csr_params``): the same
  fields, the weight or value pointer ``const uint8_t *`` to packed nibbles.

An op without a kernel (RESHAPE) moves no bytes: its output is its input's buffer (arena.py).

Adding an operator: a value in ``ir.Op``, its reference functions (reference.py), one ``OpSpec`` in
``OPS`` below, and its C kernels and declaration. docs/architecture.md lists the places.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from mcuprune.model import reference
from mcuprune.model.int8_params import ADD_LEFT_SHIFT, softmax_diff_min
from mcuprune.model.ir import Op, QuantLayer, shape_product
from mcuprune.resources import KERNEL_DIR

VARIANTS = ("reference", "dsp")  # kernel folders under firmware/kernels/
FORMATS = ("dense", "bitmask", "csr8", "csr4", "block4")  # weight formats (formats.py), in preference order for ties
WEIGHT_BITS = (8, 4)  # weight widths (QuantLayer.weight_bits): int8, or int4 stored two per byte


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown kernel variant {variant!r}; expected one of {', '.join(VARIANTS)}")


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown weight format {fmt!r}; expected one of {', '.join(FORMATS)}")


def check_bits(bits: int) -> None:
    if bits not in WEIGHT_BITS:
        raise ValueError(f"weights are {', '.join(map(str, WEIGHT_BITS))} bits wide, not {bits!r}")


def width_tag(bits: int) -> str:
    """The C name stem's width: ``s8`` or ``s4``."""
    check_bits(bits)
    return f"s{bits}"


# --- scratch: Python twins of the kernels' C *_get_buffer_size ---------------------------------


def _words_for_int16(n: int) -> int:
    """32-bit words holding n int16 values (the q15-pair layout of mcup_dsp.h)."""
    return (n + 1) // 2


def has_optimized_kernel(spec: OpSpec, fmt: str | None, variant: str, bits: int = 8) -> bool:
    """True when `variant` has its own twin of the kernel (else the build takes the reference file)."""
    return variant != "reference" and (KERNEL_DIR / variant / spec.source(fmt, bits)).is_file()


# The DSP conv's strip path (firmware/kernels/dsp/conv2d_s8_dense.c): same constants as the C.
STRIP_UNROLL_WORDS = 8  # windows up to this many words take the strip path
STRIP_MAX_WORDS = 24  # ... and up to this many when in_c is not a multiple of 4
STRIP_MAX_OUT_C = 16  # ... and out_c is at most this
STRIP_PIXELS = 128  # output pixels per segment (whole rows when they fit)


PW_PIXELS = 4  # output pixels per pass of the DSP conv's pointwise path


def conv_is_pointwise(layer: QuantLayer) -> bool:
    """The DSP conv's pointwise path: a 1x1 kernel at stride 1 without padding (any dilation)."""
    return tuple(layer.weights.shape[1:3]) == (1, 1) and tuple(layer.stride) == (1, 1) and not any(layer.padding)


def conv_strip_bytes(layer: QuantLayer) -> int | None:
    """Scratch of the DSP conv's strip path, or None when the layer takes another path (pointwise,
    conv_is_pointwise; or im2col).

    A strip position holds k_h // 2 vertical row pairs plus one word for an odd last row; a
    patch window is that many words per value of a kernel row (k_w * in_c). Scratch holds the
    window-ordered weights, one segment's int32 accumulators, one strip per segment row and k_h
    int8 input lines.

    >>> from types import SimpleNamespace as NS
    >>> import numpy as np
    >>> first = NS(weights=np.zeros((16, 3, 3, 1)), out_shape=(28, 28, 16), stride=(1, 1), dilation=(1, 1))
    >>> conv_strip_bytes(first)  # 4-row segments: 4 * (16 * 6 + 4 * 28 + 4 * 30 * 2) + 3 * 36
    1900
    >>> second = NS(weights=np.zeros((32, 3, 3, 16)), out_shape=(14, 14, 32), stride=(1, 1), dilation=(1, 1))
    >>> conv_strip_bytes(second) is None
    True
    """
    out_c, k_h, k_w, in_c = (int(d) for d in layer.weights.shape)  # [out_c, k_h, k_w, in_c]
    if conv_is_pointwise(layer) or tuple(layer.dilation) != (1, 1):
        return None  # the pointwise path goes first; a strip window needs adjacent taps
    slots = (k_h + 1) // 2
    words = slots * k_w * in_c
    if words > STRIP_UNROLL_WORDS and (in_c % 4 == 0 or words > STRIP_MAX_WORDS or out_c > STRIP_MAX_OUT_C):
        return None
    out_h, out_w = int(layer.out_shape[0]), int(layer.out_shape[1])
    cols = min(out_w, STRIP_PIXELS)  # output pixels per segment row
    rows = min(STRIP_PIXELS // max(cols, 1), out_h)  # output rows per segment
    positions = ((cols - 1) * layer.stride[1] + k_w) * in_c  # strip positions of one segment row
    line_bytes = (positions + 4 + 3) // 4 * 4  # positions + 1 bytes, + 3 that word fills may touch
    return 4 * (out_c * words + rows * cols + rows * positions * slots) + k_h * line_bytes


S4_GROUP = 8  # values per group of the int4 DSP kernels' s4-pair layout (mcup_dsp.h): four words


def _s4_pair_bytes(n: int) -> int:
    """Bytes of a run of n values in the s4-pair layout: 16 per group of 8, the last group padded."""
    return 16 * -(-n // S4_GROUP)


def _conv2d_scratch(layer: QuantLayer, fmt: str, variant: str) -> int:
    """conv2d. Dense DSP: for a pointwise layer (conv_is_pointwise) PW_PIXELS input pixels as int16
    pairs, the last group of 4 values padded; else the strip path's buffers (conv_strip_bytes); else
    two int16 im2col patches (k_h * k_w * in_c values each) plus an int8 staging copy of one patch
    when in_c is not a multiple of 4; dense reference: none. Sparse: the reference kernels hold one
    im2col patch as int16 (rounded up to a word), the DSP ones two patches interleaved, one word per
    position. int4 weights: the sparse kernels take the same; the dense DSP kernel (one path) two
    patches in the s4-pair layout, interleaved (2 * _s4_pair_bytes(k)), plus an int8 staging copy of
    one patch rounded up to a group of 8 when in_c is not a multiple of 8. block4 (either width): the
    patch padded to whole blocks of 4 values (G = ceil(k / 4) blocks); reference: one int16 patch,
    8 * G bytes; DSP: two patches in the q15-pair layout interleaved (16 * G) plus an int8 staging copy
    of one patch (4 * G)."""
    cols = math.prod(int(d) for d in layer.weights.shape[1:])  # k_h * k_w * in_c
    bits = layer.weight_bits
    optimized = has_optimized_kernel(OPS[Op.CONV2D], fmt, variant, bits)
    if fmt == "block4":
        blocks = -(-cols // 4)
        return 20 * blocks if optimized else 8 * blocks
    if fmt != "dense":
        return 4 * cols if optimized else 4 * _words_for_int16(cols)
    if not optimized:
        return 0
    if bits == 4:
        stage = -(-cols // S4_GROUP) * S4_GROUP if int(layer.weights.shape[3]) % S4_GROUP else 0
        return 2 * _s4_pair_bytes(cols) + stage
    in_c = int(layer.weights.shape[3])
    if conv_is_pointwise(layer):
        return 4 * PW_PIXELS * 2 * ((in_c + 3) // 4)  # 2 words per group of 4 values, tail padded
    strip = conv_strip_bytes(layer)
    if strip is not None:
        return strip
    stage = (cols + 3) // 4 * 4 if in_c % 4 else 0  # int8 copy of a patch whose taps split groups
    return 2 * 4 * _words_for_int16(cols) + stage


def _depthwise_conv2d_scratch(layer: QuantLayer, fmt: str, variant: str) -> int:
    """depthwise_conv2d. DSP with depth multiplier 1: the weights of every whole group of 4 channels
    rearranged as int16, two words per tap, and one folded bias word per such channel; otherwise
    (reference, or a multiplier > 1) none."""
    out_c, k_h, k_w, _ = (int(d) for d in layer.weights.shape)  # [out_c, k_h, k_w, 1]
    spec = OPS[Op.DEPTHWISE_CONV2D]
    if not has_optimized_kernel(spec, fmt, variant, layer.weight_bits) or layer.depth_multiplier != 1:
        return 0
    return 4 * 2 * (out_c // 4) * k_h * k_w + 4 * (out_c // 4 * 4)  # + a folded bias per channel of the groups


def _dense_scratch(layer: QuantLayer, fmt: str, variant: str) -> int:
    """dense: the DSP kernels (every format) hold the input as int16, input offset added (the dense
    int4 kernel in the s4-pair layout, groups of 8 padded; block4 in the q15-pair layout of whole
    blocks of 4, the last one padded: 8 bytes per block); the reference kernels need none."""
    in_features = int(layer.weights.shape[1])  # weights [out, in]
    if not has_optimized_kernel(OPS[Op.DENSE], fmt, variant, layer.weight_bits):
        return 0
    if fmt == "block4":
        return 8 * -(-in_features // 4)
    if layer.weight_bits == 4 and fmt == "dense":
        return _s4_pair_bytes(in_features)
    return 4 * _words_for_int16(in_features)


def _no_scratch(layer: QuantLayer, fmt: None, variant: str) -> int:
    return 0


# --- compiled-in struct fields (shapes, geometry, op constants; pointers and quantization come apart) --


def _window_fields(layer: QuantLayer, k_h: int, k_w: int) -> dict[str, int]:
    """Where a window sits over an HWC map: TFLite's geometry. Bottom/right padding is implied by out_h/out_w."""
    top, _, left, _ = layer.padding
    return {"k_h": k_h, "k_w": k_w, "stride_h": layer.stride[0], "stride_w": layer.stride[1], "pad_top": top,
            "pad_left": left}


def _conv2d_fields(layer: QuantLayer) -> dict[str, int]:
    c_out, k_h, k_w, _ = layer.weights.shape  # [out_c, k_h, k_w, in_c]
    (h, w, c), (oh, ow, _) = layer.in_shape, layer.out_shape
    return {"in_h": h, "in_w": w, "in_c": c, "out_h": oh, "out_w": ow, "out_c": c_out,
            **_window_fields(layer, k_h, k_w), "dil_h": layer.dilation[0], "dil_w": layer.dilation[1]}


def _depthwise_conv2d_fields(layer: QuantLayer) -> dict[str, int]:
    return {**_conv2d_fields(layer), "depth_multiplier": layer.depth_multiplier}


def _dense_fields(layer: QuantLayer) -> dict[str, int]:
    return {"in_features": int(layer.weights.shape[1]), "out_features": int(layer.weights.shape[0])}


def _pool2d_fields(layer: QuantLayer) -> dict[str, int]:
    (h, w, c), (oh, ow, _) = layer.in_shape, layer.out_shape
    return {"in_h": h, "in_w": w, "c": c, "out_h": oh, "out_w": ow, **_window_fields(layer, *layer.window),
            "act_min": layer.act_min, "act_max": layer.act_max}


def _mean_fields(layer: QuantLayer) -> dict[str, int]:
    h, w, c = layer.in_shape
    return {"in_h": h, "in_w": w, "c": c, "input_offset": -layer.input_q.zero_point,
            "output_offset": layer.output_q.zero_point, "multiplier": int(layer.multiplier[0]),
            "shift": int(layer.shift[0])}


def _add_fields(layer: QuantLayer) -> dict[str, int]:
    m, s = (int(v) for v in layer.multiplier), (int(v) for v in layer.shift)
    (m1, m2, m_out), (s1, s2, s_out) = m, s
    return {"size": shape_product(layer.out_shape), "input1_offset": -layer.input_q.zero_point,
            "input2_offset": -layer.other_q.zero_point, "output_offset": layer.output_q.zero_point,
            "input1_multiplier": m1, "input1_shift": s1, "input2_multiplier": m2, "input2_shift": s2,
            "output_multiplier": m_out, "output_shift": s_out, "left_shift": ADD_LEFT_SHIFT,
            "act_min": layer.act_min, "act_max": layer.act_max}


def _pad_fields(layer: QuantLayer) -> dict[str, int]:
    h, w, c = layer.in_shape
    top, bottom, left, right = layer.padding
    return {"in_h": h, "in_w": w, "c": c, "pad_top": top, "pad_bottom": bottom, "pad_left": left,
            "pad_right": right, "pad_value": layer.output_q.zero_point}


def _softmax_fields(layer: QuantLayer) -> dict[str, int]:
    depth = int(layer.in_shape[-1])
    return {"rows": shape_product(layer.in_shape) // depth, "depth": depth,
            "input_multiplier": int(layer.multiplier[0]), "input_left_shift": int(layer.shift[0]),
            "diff_min": softmax_diff_min(int(layer.shift[0]))}


def _no_fields(layer: QuantLayer) -> dict[str, int]:
    return {}


# --- the table ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpSpec:
    op: Op
    kernel: str | None  # C name stem: mcup_<kernel>_s<bits>[_<format>]; None: no kernel, no bytes moved
    reference_s8: Callable  # (int8 x batch, QuantLayer) -> int8 y batch, exactly what the kernel computes
    reference_f32: Callable  # (float x batch, FloatLayer) -> float y batch
    fields: Callable[[QuantLayer], dict[str, int]]  # the struct's compiled-in fields, in C order
    formats: tuple[str, ...] = ()  # weight formats it has kernels for; () for an op without weights
    scratch: Callable[[QuantLayer, str | None, str], int] = _no_scratch  # (layer, format, variant) -> bytes

    @property
    def weighted(self) -> bool:
        return bool(self.formats)

    def _suffix(self, fmt: str | None, bits: int = 8) -> str:
        """``_<format>`` of a weighted op's kernel (or "" for an op without weights), validated."""
        if self.kernel is None:
            raise ValueError(f"op {self.op.value} has no kernel: it moves no bytes")
        check_bits(bits)
        if not self.weighted:
            if fmt is not None:
                raise ValueError(f"op {self.op.value} has no weight formats (got {fmt!r})")
            if bits != 8:
                raise ValueError(f"op {self.op.value} has no weights to be {bits} bits wide")
            return ""
        check_format(fmt or "")
        if fmt not in self.formats:
            raise ValueError(f"op {self.op.value} has no {fmt} kernel (formats: {', '.join(self.formats)})")
        return f"_{fmt}"

    def function(self, fmt: str | None = None, bits: int = 8) -> str:
        """The kernel's C function (`fmt` the weight format and `bits` the weight width of a weighted op).

        >>> OPS[Op.DENSE].function("csr4", 4), OPS[Op.MAXPOOL2D].function()
        ('mcup_fc_s4_csr4', 'mcup_maxpool2d_s8')
        """
        suffix = self._suffix(fmt, bits)
        return f"mcup_{self.kernel}_{width_tag(bits)}{suffix}"

    def source(self, fmt: str | None = None, bits: int = 8) -> str:
        """The kernel's file name, the same in every variant folder."""
        suffix = self._suffix(fmt, bits)
        return f"{self.kernel}_{width_tag(bits)}{suffix}.c"

    def struct(self, fmt: str | None = None, bits: int = 8) -> str:
        """The kernel's parameter struct (mcup_nn.h for dense weights or none, mcup_sparse.h otherwise).

        >>> OPS[Op.CONV2D].struct("dense", 4), OPS[Op.CONV2D].struct("csr8", 4), OPS[Op.DENSE].struct("bitmask")
        ('mcup_conv2d_s4_params', 'mcup_conv2d_s4_csr_params', 'mcup_fc_bitmask_params')
        """
        self._suffix(fmt, bits)
        width = "" if bits == 8 else f"_{width_tag(bits)}"
        if not self.weighted or fmt == "dense":
            return f"mcup_{self.kernel}{width}_params"
        return f"mcup_{self.kernel}{width}_{'csr' if fmt in ('csr8', 'csr4') else fmt}_params"


OPS: dict[Op, OpSpec] = {
    spec.op: spec
    for spec in (
        OpSpec(Op.CONV2D, "conv2d", reference.conv2d_s8, reference.conv2d_f32, _conv2d_fields, FORMATS,
               _conv2d_scratch),
        OpSpec(Op.DEPTHWISE_CONV2D, "depthwise_conv2d", reference.depthwise_conv2d_s8,
               reference.depthwise_conv2d_f32, _depthwise_conv2d_fields, ("dense",), _depthwise_conv2d_scratch),
        OpSpec(Op.DENSE, "fc", reference.dense_s8, reference.dense_f32, _dense_fields, FORMATS, _dense_scratch),
        OpSpec(Op.MAXPOOL2D, "maxpool2d", reference.maxpool2d_s8, reference.maxpool2d_f32, _pool2d_fields),
        OpSpec(Op.AVGPOOL2D, "avgpool2d", reference.avgpool2d_s8, reference.avgpool2d_f32, _pool2d_fields),
        OpSpec(Op.MEAN, "mean", reference.mean_s8, reference.mean_f32, _mean_fields),
        OpSpec(Op.ADD, "add", reference.add_s8, reference.add_f32, _add_fields),
        OpSpec(Op.PAD, "pad", reference.pad_s8, reference.pad_f32, _pad_fields),
        OpSpec(Op.RESHAPE, None, reference.reshape_s8, reference.reshape_f32, _no_fields),
        OpSpec(Op.SOFTMAX, "softmax", reference.softmax_s8, reference.softmax_f32, _softmax_fields),
    )
}


def spec_of(op: Op | str) -> OpSpec:
    op = Op(op)
    if op not in OPS:
        raise ValueError(f"op {op.value} is not in the operator table")
    return OPS[op]


def scratch_bytes(layer: QuantLayer, fmt: str | None, variant: str) -> int:
    """Bytes of scratch the layer's kernel needs in `fmt` on `variant`: exactly its C ``*_get_buffer_size``
    (4-aligned). `fmt` is None for ops without weights; the kernel's width is the layer's ``weight_bits``."""
    check_variant(variant)
    spec = spec_of(layer.op)
    if spec.kernel is None:
        return 0
    spec.source(fmt, layer.weight_bits if spec.weighted else 8)  # validates fmt and width against the op
    return spec.scratch(layer, fmt, variant)


KernelKey = tuple[Op | str, str | None] | tuple[Op | str, str | None, int]


def kernel_sources(variant: str, kernels: Iterable[KernelKey]) -> list[Path]:
    """The .c files for (op, weight format[, weight bits]) tuples (format None for ops without
    weights; bits 8 when left out): the variant's file where it exists, else the reference. One per
    distinct kernel, in table, width (8 then 4) then format order whatever the order of `kernels`,
    so builds are reproducible.

    >>> [p.relative_to(KERNEL_DIR).as_posix() for p in kernel_sources("dsp", {("maxpool2d", None), ("dense", "csr4")})]
    ['dsp/fc_s8_csr4.c', 'dsp/maxpool2d_s8.c']
    >>> [p.name for p in kernel_sources("reference", [("dense", "dense", 4), ("dense", "dense")])]
    ['fc_s8_dense.c', 'fc_s4_dense.c']
    """
    check_variant(variant)
    wanted = set()
    for key in kernels:
        op, fmt, bits = (*key, 8) if len(key) == 2 else key
        spec = spec_of(op)
        spec.source(fmt, bits)  # validates fmt and width against the op
        wanted.add((spec.op, fmt if spec.weighted else None, bits))
    sources: list[Path] = []
    for spec in (s for s in OPS.values() if s.kernel is not None):
        for bits in WEIGHT_BITS if spec.weighted else (8,):
            for fmt in spec.formats or (None,):
                if (spec.op, fmt, bits) in wanted:
                    path = KERNEL_DIR / variant / spec.source(fmt, bits)
                    sources.append(path if path.is_file() else KERNEL_DIR / "reference" / spec.source(fmt, bits))
    return sources
