"""Which C kernel files a build compiles, what they are called, and how much scratch they need.

Every op has a reference kernel in ``firmware/kernels/reference/`` (plain C) and may have an
optimized twin with the same file name and function name in ``firmware/kernels/<variant>/``; a
build picks one file per op (tflite-micro style). The DSP kernels convert activations to int16
in a caller-owned scratch buffer whose size the code generator takes from ``scratch_bytes``;
it must equal what the C ``*_get_buffer_size`` companion returns for the same layer (the tests
in tests/test_kernels.py pin the two together).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from mcuprune.model.ir import Op, QuantLayer
from mcuprune.resources import KERNEL_DIR

VARIANTS = ("reference", "dsp")  # folder names under KERNEL_DIR

# op -> C function (declared in firmware/include/mcup_nn.h)
KERNEL_FUNCTIONS: dict[Op, str] = {
    Op.CONV2D: "mcup_conv2d_s8_dense",
    Op.DENSE: "mcup_fc_s8_dense",
    Op.MAXPOOL2D: "mcup_maxpool2d_s8",
}

# op -> kernel source file name, the same in every variant folder
_SOURCE_FILES: dict[Op, str] = {
    Op.CONV2D: "conv2d_s8_dense.c",
    Op.DENSE: "fc_s8_dense.c",
    Op.MAXPOOL2D: "maxpool2d_s8.c",
}


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown kernel variant {variant!r}; expected one of {', '.join(VARIANTS)}")


def kernel_sources(variant: str, ops: Iterable[Op | str]) -> list[Path]:
    """The .c files to compile for `ops`: the variant's file where it exists, else the reference.

    One file per distinct op, in Op declaration order whatever the order (or container) of `ops`,
    so builds are reproducible.

    >>> [p.relative_to(KERNEL_DIR).as_posix() for p in kernel_sources("dsp", {"maxpool2d", "dense"})]
    ['dsp/fc_s8_dense.c', 'dsp/maxpool2d_s8.c']
    """
    _check_variant(variant)
    wanted = {Op(op) for op in ops}
    sources: list[Path] = []
    for op in (op for op in Op if op in wanted):
        name = _SOURCE_FILES[op]
        path = KERNEL_DIR / variant / name
        sources.append(path if path.is_file() else KERNEL_DIR / "reference" / name)
    return sources


def _words_for_int16(n: int) -> int:
    """32-bit words holding n int16 values (the q15-pair layout of mcup_dsp.h)."""
    return (n + 1) // 2


# The DSP conv's strip path (firmware/kernels/dsp/conv2d_s8_dense.c): same constants as the C.
STRIP_UNROLL_WORDS = 8  # windows up to this many words take the strip path
STRIP_MAX_WORDS = 24  # ... and up to this many when in_c is not a multiple of 4
STRIP_PIXELS = 128  # output pixels per segment (whole rows when they fit)


def _conv_strip_bytes(layer: QuantLayer) -> int | None:
    """Scratch of the DSP conv's strip path, or None when the layer takes the im2col path.

    A strip position holds k_h // 2 vertical row pairs plus one word for an odd last row; a
    patch window is that many words per value of a kernel row (k_w * in_c). Scratch holds the
    window-ordered weights, one segment's int32 accumulators, one strip per segment row and k_h
    int8 input lines.

    >>> from types import SimpleNamespace as NS
    >>> import numpy as np
    >>> first = NS(weights=np.zeros((16, 3, 3, 1)), out_shape=(28, 28, 16), stride=1)  # 3x3x1, 28 wide
    >>> _conv_strip_bytes(first)  # 4-row segments: 4 * (16 * 6 + 4 * 28 + 4 * 30 * 2) + 3 * 36
    1900
    >>> _conv_strip_bytes(NS(weights=np.zeros((32, 3, 3, 16)), out_shape=(14, 14, 32), stride=1)) is None
    True
    """
    out_c, k_h, k_w, in_c = (int(d) for d in layer.weights.shape)  # [out_c, k_h, k_w, in_c]
    slots = (k_h + 1) // 2
    words = slots * k_w * in_c
    if words > STRIP_UNROLL_WORDS and (in_c % 4 == 0 or words > STRIP_MAX_WORDS):
        return None
    out_h, out_w = int(layer.out_shape[0]), int(layer.out_shape[1])
    cols = min(out_w, STRIP_PIXELS)  # output pixels per segment row
    rows = min(STRIP_PIXELS // max(cols, 1), out_h)  # output rows per segment
    positions = ((cols - 1) * layer.stride + k_w) * in_c  # strip positions of one segment row
    line_bytes = (positions + 4 + 3) // 4 * 4  # positions + 1 bytes, + 3 that word fills may touch
    return 4 * (out_c * words + rows * cols + rows * positions * slots) + k_h * line_bytes


def scratch_bytes(layer: QuantLayer, variant: str) -> int:
    """Bytes of scratch the layer's kernel needs: exactly its C ``*_get_buffer_size`` (4-aligned).

    The reference kernels need none. The DSP kernels need the input converted to int16: the whole
    input vector for dense; for conv2d with small patches the strip path's buffers
    (``_conv_strip_bytes``), otherwise two im2col patches (k_h * k_w * in_c values each) plus an
    int8 staging copy of one patch when in_c is not a multiple of 4.
    """
    _check_variant(variant)
    if variant == "reference" or layer.op is Op.MAXPOOL2D:
        return 0
    if layer.op is Op.DENSE:
        in_features = int(layer.weights.shape[1])  # weights [out, in]
        return 4 * _words_for_int16(in_features)
    if layer.op is Op.CONV2D:
        strip = _conv_strip_bytes(layer)
        if strip is not None:
            return strip
        _, k_h, k_w, in_c = (int(d) for d in layer.weights.shape)  # [out_c, k_h, k_w, in_c]
        patch = k_h * k_w * in_c
        stage = (patch + 3) // 4 * 4 if in_c % 4 else 0  # int8 copy of a patch whose taps split groups
        return 2 * 4 * _words_for_int16(patch) + stage
    raise ValueError(f"layer {layer.name}: no kernel for op {layer.op}")
