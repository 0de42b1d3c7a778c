"""Sparse weight formats: packing round trips, byte accounting, kernels bit-exact vs numpy.

The oracle for every sparse kernel is the dense numpy reference (mcuprune.model.reference) run on the
masked int8 weights: a sparse kernel must give exactly what the dense kernel gives. Kernels are
compiled for the host (DSP variant with -DMCUP_EMULATE_DSP) and called through ctypes, over one
case table that runs unchanged against every (format, variant); cross-compilation checks the
same files build warning-free for the targets, and a QEMU run checks them on the real cores.
"""

from __future__ import annotations

import ctypes
import doctest
import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from host_c import kernel_library, require
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_cases import (
    Case,
    KernelLib,
    c_ptr,
    geometry_cases,
    layout_expected,
    layout_source,
    make_layer,
    random_cases,
    struct_of,
)

import mcuprune.codegen.emit
import mcuprune.model.costs
import mcuprune.model.formats
from mcuprune.codegen.emit import c_definitions, params_initializer
from mcuprune.model.costs import (
    choose_format,
    choose_formats,
    cost_key,
    kernel_code_bytes,
    load_costs,
    predict_instructions,
)
from mcuprune.model.formats import MAX_DELTA, SPARSE_FORMATS, format_bytes, layer_bytes, pack, unpack
from mcuprune.model.ir import Op, QuantLayer
from mcuprune.model.ops import FORMATS, OPS, VARIANTS, WEIGHT_BITS, kernel_sources, scratch_bytes
from mcuprune.model.reference import conv2d_s8, dense_s8
from mcuprune.resources import INCLUDE_DIR, KERNEL_DIR

ROOT = Path(__file__).resolve().parent.parent
ALL_PAIRS = [(op, fmt) for op in (Op.DENSE, Op.CONV2D) for fmt in SPARSE_FORMATS]


# --- packing --------------------------------------------------------------------------------


@st.composite
def masked_weights(draw) -> np.ndarray:
    """int8 matrices with a random mask: any density, all-zero and full rows, wide gaps."""
    rows = draw(st.integers(1, 6))
    cols = draw(st.sampled_from([1, 2, 7, 8, 9, 15, 16, 17, 33, 255, 256, 257, 300, 600]))
    seed = draw(st.integers(0, 2**32 - 1))
    density = draw(st.sampled_from([0.0, 0.01, 0.05, 0.3, 0.7, 1.0]))
    rng = np.random.default_rng(seed)
    magnitudes = rng.integers(1, 128, size=(rows, cols)) * rng.choice([-1, 1], size=(rows, cols))
    w = np.where(rng.random((rows, cols)) < density, magnitudes, 0)
    if draw(st.booleans()):
        w[draw(st.integers(0, rows - 1))] = 0  # an all-zero row
    if draw(st.booleans()):
        w[draw(st.integers(0, rows - 1))] = magnitudes[0]  # a full row (no zeros at all)
    if draw(st.booleans()):  # draw exact gaps around the delta limits
        gap = draw(st.sampled_from([14, 15, 16, 17, 254, 255, 256, 257, 510, 511]))
        start = draw(st.integers(0, max(cols - 1, 0)))
        row = np.zeros(cols, dtype=np.int64)
        row[start] = -128 if draw(st.booleans()) else 127
        if start + gap < cols:
            row[start + gap] = 5
        w[draw(st.integers(0, rows - 1))] = row
    return w.astype(np.int8)


@settings(max_examples=300, derandomize=True, deadline=None, database=None)
@given(w=masked_weights(), fmt=st.sampled_from(FORMATS))
def test_pack_unpack_round_trip(w: np.ndarray, fmt: str):
    packed = pack(w, fmt)
    np.testing.assert_array_equal(unpack(packed), w)
    assert packed.nbytes == format_bytes(w, fmt)
    for name, array in packed.arrays().items():
        expected = {"weights": np.int8, "values": np.int8, "mask": np.uint8, "deltas": np.uint8}.get(name)
        assert expected is None or array.dtype == expected, name
    if fmt in MAX_DELTA:
        check_csr_invariants(w, packed)


def check_csr_invariants(w: np.ndarray, packed) -> None:
    rows = w.shape[0]
    entries = packed.values.size
    assert packed.row_ptr.size == rows + 1
    assert packed.row_ptr.dtype.itemsize == (1 if entries <= 255 else 2 if entries <= 65535 else 4)
    nnz = np.count_nonzero(w)
    fillers = entries - nnz
    assert np.count_nonzero(packed.values) == nnz  # every filler holds 0, every non-zero is stored
    assert fillers >= 0
    expected_deltas = entries if packed.fmt == "csr8" else (entries + 1) // 2
    assert packed.deltas.size == expected_deltas


@pytest.mark.parametrize("fmt", SPARSE_FORMATS)
@pytest.mark.parametrize(
    ("gap", "fillers8", "fillers4"),
    [(15, 0, 0), (16, 0, 1), (30, 0, 1), (31, 0, 2), (255, 0, 16), (256, 1, 17), (510, 1, 33), (511, 2, 34)],
)
def test_csr_fillers_for_exact_gaps(fmt: str, gap: int, fillers8: int, fillers4: int):
    """Two non-zeros `gap` columns apart (the first at column 0): fillers = ceil(gap / max) - 1."""
    w = np.zeros((1, gap + 1), dtype=np.int8)
    w[0, 0], w[0, gap] = 3, -4
    packed = pack(w, fmt)
    np.testing.assert_array_equal(unpack(packed), w)
    if fmt == "csr8":
        assert packed.values.size == 2 + fillers8
        assert packed.deltas.tolist() == [0] + [255] * fillers8 + [gap - 255 * fillers8]
    elif fmt == "csr4":
        assert packed.values.size == 2 + fillers4


def test_first_delta_is_the_absolute_column():
    w = np.zeros((2, 40), dtype=np.int8)
    w[0, 20] = 1
    w[1, 0] = 2
    w[1, 39] = 3
    p8 = pack(w, "csr8")
    assert p8.deltas.tolist() == [20, 0, 39]
    assert p8.row_ptr.tolist() == [0, 1, 3]
    p4 = pack(w, "csr4")  # 20 = 15 + 5; 39 = 15 + 15 + 9; the nibble stream runs across rows
    assert p4.values.tolist() == [0, 1, 2, 0, 0, 3]
    assert p4.row_ptr.tolist() == [0, 2, 6]
    assert p4.deltas.tolist() == [0x5F, 0xF0, 0x9F]


def test_bitmask_layout_is_msb_first_and_row_padded():
    w = np.zeros((2, 10), dtype=np.int8)
    w[0, 0] = 1
    w[0, 9] = 2
    w[1, 7] = -3
    p = pack(w, "bitmask")
    assert p.mask.tolist() == [0x80, 0x40, 0x01, 0x00]  # ceil(10 / 8) = 2 bytes per row
    assert p.values.tolist() == [1, 2, -3]


def test_row_pointer_width_follows_entries():
    for entries, width in ((255, 1), (256, 2), (65535, 2), (65536, 4)):
        w = np.zeros((2, entries), dtype=np.int8)
        w[0, :] = 1
        assert pack(w, "csr8").row_ptr.dtype.itemsize == width
        assert format_bytes(w, "csr8") == 2 * entries + 3 * width


def test_unpack_rejects_malformed():
    p = pack(np.ones((2, 3), dtype=np.int8), "csr8")
    bad = type(p)(p.fmt, p.shape, values=p.values, deltas=np.full_like(p.deltas, 2), row_ptr=p.row_ptr)
    with pytest.raises(ValueError, match="past"):
        unpack(bad)
    with pytest.raises(ValueError, match="unknown weight format"):
        pack(np.ones((2, 3), dtype=np.int8), "coo")


def test_block4_layout():
    """Blocks of 4 columns (the last padded), stored when they hold a non-zero, zeros included."""
    w = np.zeros((3, 10), dtype=np.int8)  # 3 blocks a row, the last covering columns 8, 9 (+ 2 padding)
    w[0, 1], w[0, 9] = 5, -2
    w[2, 4:8] = [1, 0, 0, 3]
    p = pack(w, "block4")
    assert p.values.tolist() == [0, 5, 0, 0, 0, -2, 0, 0, 1, 0, 0, 3]
    assert p.block_cols.tolist() == [0, 2, 1] and p.block_cols.dtype == np.uint8
    assert p.row_ptr.tolist() == [0, 2, 2, 3] and p.entries == 12
    assert format_bytes(w, "block4") == 12 + 3 + 4 == p.nbytes
    p4 = pack(np.clip(w, -8, 7), "block4", 4)  # int4: 2 bytes a block, low nibble first
    assert p4.values.tolist() == [0x50, 0x00, 0xE0, 0x00, 0x01, 0x30]
    wide = np.zeros((2, 1025), dtype=np.int8)  # 257 blocks: uint16 block columns
    wide[1, 1024] = 1
    assert pack(wide, "block4").block_cols.tolist() == [256] and pack(wide, "block4").block_cols.dtype == np.uint16
    assert format_bytes(wide, "block4") == 4 + 2 + 3


def test_block4_unpack_rejects_malformed():
    p = pack(np.ones((2, 8), dtype=np.int8), "block4")  # block columns 0, 1 | 0, 1
    fields = {"values": p.values, "block_cols": p.block_cols, "row_ptr": p.row_ptr}
    for name, cols, message in (("past", [0, 2, 0, 1], "past"), ("repeated", [1, 1, 0, 1], "increase"),
                                ("uint16", np.array([0, 1, 0, 1], np.uint16), "uint8")):  # fmt: skip
        bad = type(p)(p.fmt, p.shape, **{**fields, "block_cols": np.asarray(cols).astype(
            np.uint16 if name == "uint16" else np.uint8)})  # fmt: skip
        with pytest.raises(ValueError, match=message):
            unpack(bad)
    with pytest.raises(ValueError, match="row pointers"):
        unpack(type(p)(p.fmt, p.shape, **{**fields, "row_ptr": np.array([0, 2, 3], np.uint8)}))
    with pytest.raises(ValueError, match="at most"):
        pack(np.ones((1, 4 * 65536 + 1), dtype=np.int8), "block4")


def test_conv_weights_pack_as_rows_of_k_h_k_w_in_c():
    w = np.arange(2 * 3 * 3 * 4, dtype=np.int64).reshape(2, 3, 3, 4) % 7 - 3
    w = w.astype(np.int8)
    for fmt in FORMATS:
        packed = pack(w, fmt)
        assert packed.rows == 2 and packed.cols == 36
        np.testing.assert_array_equal(unpack(packed), w)


# --- the case table (Case, make_layer: kernel_cases.py) -------------------------------------

FC_CASES = [
    Case("fc_dense_0pct", Op.DENSE, (40,), 7, sparsity=0.0, in_zp=3),
    Case("fc_50pct", Op.DENSE, (64,), 9, sparsity=0.5, in_zp=-128, out_zp=-5),
    Case("fc_90pct", Op.DENSE, (200,), 12, sparsity=0.9, in_zp=-7, out_zp=10),
    Case("fc_all_zero", Op.DENSE, (33,), 5, sparsity=1.0, in_zp=20, out_zp=-3),
    Case("fc_zero_rows", Op.DENSE, (50,), 6, sparsity=0.3, pattern="zero_rows", in_zp=127),
    Case("fc_gaps_over_255", Op.DENSE, (900,), 5, sparsity=0.9, pattern="gaps", in_zp=-1),
    Case("fc_tails", Op.DENSE, (37,), 11, sparsity=0.6, in_zp=5),  # odd rows, row lengths % 4, 37 % 8
    Case("fc_in1", Op.DENSE, (1,), 3, sparsity=0.5, in_zp=-20),
    Case("fc_relu", Op.DENSE, (100,), 8, sparsity=0.8, in_zp=-3, out_zp=-20, relu=True),
    Case("fc_null_bias", Op.DENSE, (70,), 7, sparsity=0.7, in_zp=9, null_bias=True),
    Case("fc_large_95pct", Op.DENSE, (1568,), 16, sparsity=0.95, in_zp=-128, out_zp=-128, relu=True, seed=3),
    Case("fc_u16_row_ptr", Op.DENSE, (300,), 4, sparsity=0.0, in_zp=1),  # 1200 entries
    Case("fc_blocks_80pct", Op.DENSE, (130,), 9, sparsity=0.8, pattern="blocks", in_zp=-128, out_zp=4),  # 130 % 4
    Case("fc_blocks_u16_cols", Op.DENSE, (1027,), 5, sparsity=0.9, pattern="blocks", in_zp=7, seed=4),  # 257 blocks
]

CONV_CASES = [
    Case("conv_dense_0pct", Op.CONV2D, (5, 5, 4), 6, sparsity=0.0, pad=1, in_zp=-3, out_zp=7),
    Case("conv_50pct_pad1", Op.CONV2D, (6, 6, 8), 8, sparsity=0.5, pad=1, in_zp=-128),
    Case("conv_90pct_pad0", Op.CONV2D, (7, 6, 16), 9, sparsity=0.9, in_zp=5),
    Case("conv_all_zero", Op.CONV2D, (4, 4, 3), 4, sparsity=1.0, pad=1, in_zp=12, out_zp=-9),
    Case("conv_zero_rows", Op.CONV2D, (5, 4, 4), 5, sparsity=0.4, pattern="zero_rows", pad=1, in_zp=-60),
    Case("conv_gaps_over_255", Op.CONV2D, (5, 5, 40), 4, sparsity=0.9, pattern="gaps", pad=1, in_zp=2),  # k = 360
    Case("conv_in1_pad1", Op.CONV2D, (9, 8, 1), 4, sparsity=0.5, pad=1, in_zp=-128, out_zp=-128),
    Case("conv_in1_odd_pixels", Op.CONV2D, (7, 7, 1), 5, sparsity=0.3, in_zp=12),  # 25 pixels
    Case("conv_stride2_pad1", Op.CONV2D, (8, 7, 16), 8, sparsity=0.8, stride=2, pad=1, in_zp=-128),
    Case("conv_stride2_pad0_tail", Op.CONV2D, (9, 9, 3), 7, sparsity=0.6, stride=2, in_zp=-9),  # k = 27
    Case("conv_k1", Op.CONV2D, (4, 4, 12), 6, sparsity=0.5, k=1, in_zp=2),
    Case("conv_1x3_pad1", Op.CONV2D, (4, 6, 2), 3, sparsity=0.5, k=1, k_w=3, pad=1, in_zp=-5),
    Case("conv_k5_wider_than_image", Op.CONV2D, (2, 3, 1), 3, sparsity=0.5, k=5, pad=2, in_zp=-60),
    Case("conv_single_pixel", Op.CONV2D, (3, 3, 8), 3, sparsity=0.7, in_zp=-1),
    Case("conv_relu", Op.CONV2D, (6, 6, 8), 6, sparsity=0.9, pad=1, in_zp=-128, out_zp=-128, relu=True),
    Case("conv_null_bias", Op.CONV2D, (5, 5, 4), 5, sparsity=0.5, pad=1, in_zp=6, null_bias=True),
    Case("conv_bench_shape_95pct", Op.CONV2D, (14, 14, 16), 32, sparsity=0.95, pad=1, in_zp=-128, relu=True),
    Case("conv_blocks_90pct", Op.CONV2D, (14, 14, 16), 32, sparsity=0.9, pattern="blocks", pad=1, in_zp=-128),
    Case("conv_blocks_k27", Op.CONV2D, (7, 7, 3), 6, sparsity=0.5, pattern="blocks", stride=2, in_zp=3),  # 7 blocks
    # the shared geometry table: strides (1, 2) (2, 1) (2, 2), asymmetric padding, dilation 2
    *geometry_cases(Op.CONV2D, sparsity=0.6),
]


def test_cases_exercise_their_paths():
    """The table keeps hitting csr fillers, empty rows, odd row starts and the bitmask tail bytes."""
    layers = [make_layer(c)[0] for c in FC_CASES + CONV_CASES]
    packed8 = [pack(la.weights, "csr8") for la in layers]
    packed4 = [pack(la.weights, "csr4") for la in layers]
    assert any(p.values.size > np.count_nonzero(p.values) for p in packed8)  # csr8 fillers
    assert any((np.diff(p.row_ptr.astype(int)) == 0).any() for p in packed8)  # empty rows
    assert any((p.row_ptr[:-1] % 2 == 1).any() for p in packed4)  # a csr4 row starting in a high nibble
    assert any(np.diff(p.row_ptr.astype(int)).max() >= 12 for p in packed4)  # blocks of 8 and 4
    assert any(((la.weights[0].size + 7) // 8) % 4 for la in layers)  # bitmask rows with tail bytes
    assert {p.row_ptr.dtype.itemsize for p in packed8} >= {1, 2}
    blocks = [pack(la.weights, "block4") for la in layers]
    assert {p.block_cols.dtype.itemsize for p in blocks} == {1, 2}  # uint8 and uint16 block columns
    assert any(la.weights[0].size % 4 and p.values.size for la, p in zip(layers, blocks, strict=True))  # padded
    assert any((np.diff(p.row_ptr.astype(int)) % 2 == 1).any() for p in blocks)  # odd block counts (DSP: pairs)
    assert any((np.diff(p.row_ptr.astype(int)) == 0).any() for p in blocks)  # empty rows
    # masks of whole blocks: block4 stores no zeros there
    assert any(la.weights.size and 4 * int(p.row_ptr[-1]) == np.count_nonzero(la.weights) for la, p in
               zip(layers, blocks, strict=True))  # fmt: skip


# --- calling the kernels (parameter structs generated from the operator table: kernel_cases.py) ----


class SparseKernels(KernelLib):
    """The six sparse kernels of one variant, compiled for the host, called like numpy ops."""

    def arrays(self, layer: QuantLayer, fmt: str) -> dict[str, np.ndarray]:
        return {k: np.ascontiguousarray(a) for k, a in pack(layer.weights, fmt).arrays().items()}

    def buffer_size(self, layer: QuantLayer, fmt: str, weight_arrays=None) -> int:  # type: ignore[override]
        return super().buffer_size(layer, fmt, weight_arrays or self.arrays(layer, fmt))

    def run(self, layer: QuantLayer, fmt: str, x: np.ndarray, null_bias: bool = False) -> np.ndarray:  # type: ignore[override]
        """Run the kernel with canaries around the output and past the scratch buffer."""
        return super().run(layer, [x], fmt, null_bias=null_bias, weight_arrays=self.arrays(layer, fmt))


def _layout_structs() -> list:
    return [struct_of(make_layer(case)[0], fmt) for case in (FC_CASES[0], CONV_CASES[0]) for fmt in ("bitmask", "csr8")]


@pytest.fixture(scope="module", params=VARIANTS)
def sparse_kernels(request, tmp_path_factory) -> SparseKernels:
    variant = request.param
    build = tmp_path_factory.mktemp(f"sparse_{variant}")
    layout = build / "layout.c"
    layout.write_text(layout_source(_layout_structs(), "mcup_sparse_test_layout"))
    lib = kernel_library(build / f"libmcup_sparse_{variant}.so", variant, ALL_PAIRS, [layout])
    return SparseKernels(variant, lib)


def test_ctypes_mirrors_match_header(sparse_kernels: SparseKernels):
    """The structs ops.py's fields and the formats' arrays describe are the ones mcup_sparse.h declares."""
    expected = layout_expected(_layout_structs())
    layout = (ctypes.c_int32 * len(expected)).in_dll(sparse_kernels.lib, "mcup_sparse_test_layout")
    assert list(layout) == expected


def _reference(layer: QuantLayer, x: np.ndarray) -> np.ndarray:
    run = dense_s8 if layer.op is Op.DENSE else conv2d_s8
    return run(x[None], layer)[0]


@pytest.mark.parametrize("fmt", SPARSE_FORMATS)
@pytest.mark.parametrize("case", FC_CASES + CONV_CASES, ids=lambda c: c.name)
def test_kernel_matches_reference(sparse_kernels: SparseKernels, case: Case, fmt: str):
    layer, x = make_layer(case)
    got = sparse_kernels.run(layer, fmt, x, null_bias=case.null_bias)
    np.testing.assert_array_equal(got, _reference(layer, x))


@pytest.mark.parametrize("fmt", SPARSE_FORMATS)
@pytest.mark.parametrize("case", FC_CASES + CONV_CASES, ids=lambda c: c.name)
def test_scratch_bytes_match_c(sparse_kernels: SparseKernels, case: Case, fmt: str):
    layer, _ = make_layer(case)
    c_size = sparse_kernels.buffer_size(layer, fmt)
    assert scratch_bytes(layer, fmt, sparse_kernels.variant) == c_size
    assert c_size % 4 == 0


def pruned_cases(op: Op):
    """Pruned layers of any shape the kernels accept, for the property test below."""
    return random_cases(op, max_features=300, max_hw=6, max_in_c=20, sparsities=[0.0, 0.3, 0.6, 0.85, 0.97, 1.0])


@settings(max_examples=60, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(case=st.sampled_from([Op.DENSE, Op.CONV2D]).flatmap(pruned_cases), fmt=st.sampled_from(SPARSE_FORMATS))
def test_kernel_random_shapes(sparse_kernels: SparseKernels, case: Case, fmt: str):
    layer, x = make_layer(case)
    got = sparse_kernels.run(layer, fmt, x, null_bias=case.null_bias)
    np.testing.assert_array_equal(got, _reference(layer, x))
    assert scratch_bytes(layer, fmt, sparse_kernels.variant) == sparse_kernels.buffer_size(layer, fmt)


# --- the emission helpers: generated C compiles, runs and matches numpy -------------------------


@pytest.mark.parametrize(("op", "fmt"), ALL_PAIRS + [(Op.DENSE, "dense"), (Op.CONV2D, "dense")], ids=str)
def test_emitted_c_runs_bit_exact(tmp_path: Path, op: Op, fmt: str):
    """c_definitions + params_initializer produce a params struct the kernel runs correctly."""
    case = FC_CASES[6] if op is Op.DENSE else CONV_CASES[9]
    layer, x = make_layer(case)
    packed = pack(layer.weights, fmt)
    prefix = f"mcup_param_{layer.name}"
    quant_arrays = "".join(
        f"const int32_t {prefix}_{name}[] = {{{', '.join(str(int(v)) for v in getattr(layer, name))}}};\n"
        for name in ("bias", "multiplier", "shift")
    )
    function = OPS[op].function(fmt)
    source = (
        '#include <stddef.h>\n#include "mcup_nn.h"\n#include "mcup_sparse.h"\n\n'
        + c_definitions(layer.name, packed) + quant_arrays
        + f"static const {OPS[op].struct(fmt)} layer = {params_initializer(layer, fmt)};\n"
        f"int32_t scratch_size(void) {{ return {function}_get_buffer_size(&layer); }}\n"
        f"void run(const int8_t *in, int8_t *out, void *s) {{ {function}(&layer, in, out, s); }}\n"
    )  # fmt: skip
    (tmp_path / "model.c").write_text(source)
    lib = kernel_library(tmp_path / "libmodel.so", "dsp", [(op, fmt)], [tmp_path / "model.c"])
    lib.scratch_size.restype = ctypes.c_int32
    assert lib.scratch_size() == scratch_bytes(layer, fmt, "dsp")
    scratch = np.zeros(lib.scratch_size() // 4 + 1, dtype=np.uint32)
    out = np.zeros(int(np.prod(layer.out_shape)), dtype=np.int8)
    lib.run(c_ptr(x.ravel(), ctypes.c_int8), c_ptr(out, ctypes.c_int8), ctypes.c_void_p(scratch.ctypes.data))
    np.testing.assert_array_equal(out.reshape(layer.out_shape), _reference(layer, x))


# --- byte accounting, registry, format choice -----------------------------------------------


@pytest.mark.parametrize("case", FC_CASES + CONV_CASES, ids=lambda c: c.name)
def test_layer_bytes_count_every_array(case: Case):
    layer, _ = make_layer(case)
    rows = layer.weights.shape[0]
    for fmt in FORMATS:
        packed = pack(layer.weights, fmt)
        arrays = sum(a.nbytes for a in packed.arrays().values())
        assert layer_bytes(layer, fmt) == arrays + 3 * 4 * rows  # + int32 bias, multiplier, shift
        emitted = c_definitions(layer.name, packed)
        assert emitted.count("const ") == sum(a.size > 0 for a in packed.arrays().values())


def test_dense_bytes_match_the_existing_emission():
    layer, _ = make_layer(CONV_CASES[1])
    assert layer_bytes(layer, "dense") == layer.weights.size + 12 * layer.weights.shape[0]


def test_kernel_functions_declared_and_sources_exist():
    header = (INCLUDE_DIR / "mcup_sparse.h").read_text()
    for (op, fmt), bits in itertools.product(ALL_PAIRS, WEIGHT_BITS):
        if fmt != "dense":
            name = OPS[op].function(fmt, bits)
            assert f" {name}(" in header
            assert f" {name}_get_buffer_size(" in header
            assert f"}} {OPS[op].struct(fmt, bits)};" in header
    for variant in VARIANTS:
        for path in kernel_sources(variant, [(op, fmt, bits) for (op, fmt), bits in itertools.product(ALL_PAIRS,
                                                                                                      WEIGHT_BITS)]):
            assert path.is_file()
    dsp = kernel_sources("dsp", [(Op.CONV2D, "csr4"), ("dense", "dense"), (Op.DENSE, "csr8")])
    assert [p.relative_to(KERNEL_DIR).as_posix() for p in dsp] == [
        "dsp/conv2d_s8_csr4.c",
        "dsp/fc_s8_dense.c",
        "dsp/fc_s8_csr8.c",
    ]
    with pytest.raises(ValueError, match="no weight formats"):
        kernel_sources("dsp", [(Op.MAXPOOL2D, "csr8")])


def test_cost_model_covers_every_kernel():
    """Every kernel (op, format, width, variant, core) has a fit whose largest relative error is
    below 10 %, and its code size."""
    costs = load_costs()
    assert "note" in costs
    for op, fmt, bits in itertools.product((Op.DENSE, Op.CONV2D), FORMATS, WEIGHT_BITS):
        for variant, core in (("reference", "cortex-m3"), ("reference", "cortex-m4"), ("dsp", "cortex-m4")):
            key = cost_key(op, fmt, variant, core, bits)
            model = costs["models"][key]
            assert model["max_relative_error"] < 0.1, key
            assert all(np.isfinite(v) for v in model["coefficients"].values())
            assert costs["code_bytes"][key] > 0


def _fc_layer(sparsity: float, seed: int = 0) -> QuantLayer:
    return make_layer(Case("fc", Op.DENSE, (1568,), 64, sparsity=sparsity, in_zp=-128, seed=seed))[0]


def test_choose_format_fastest_is_never_predicted_slower_than_dense():
    for variant in VARIANTS:
        for sparsity in (0.0, 0.3, 0.5, 0.7, 0.9, 0.95):
            layer = _fc_layer(sparsity)
            fmt = choose_format(layer, variant)
            assert predict_instructions(layer, fmt, variant) <= predict_instructions(layer, "dense", variant)
            assert layer_bytes(layer, fmt) <= layer_bytes(layer, "dense")
    assert choose_format(_fc_layer(0.0), "dsp") == "dense"
    assert choose_format(_fc_layer(0.9), "dsp") != "dense"


def test_choose_format_smallest_and_unpruned():
    for sparsity in (0.0, 0.5, 0.9):
        layer = _fc_layer(sparsity)
        smallest = choose_format(layer, "dsp", "smallest")
        assert layer_bytes(layer, smallest) == min(layer_bytes(layer, f) for f in FORMATS)
    assert choose_format(_fc_layer(0.5), "dsp", "smallest") == "bitmask"
    unpruned = QuantLayer(**{**_fc_layer(0.9).__dict__, "mask": None})
    assert choose_format(unpruned, "dsp", "smallest") == "dense"
    with pytest.raises(ValueError, match="objective"):
        choose_format(_fc_layer(0.9), "dsp", "tiny")


def _firmware_bytes(layers: list[QuantLayer], picks: dict[str, str]) -> int:
    """Parameter bytes + code of each distinct kernel used (dsp, Cortex-M4)."""
    kernels = {(layer.op, picks[layer.name]) for layer in layers}
    return sum(layer_bytes(la, picks[la.name]) for la in layers) + sum(
        kernel_code_bytes(op, fmt, "dsp") for op, fmt in kernels
    )


def test_choose_formats_minimises_params_plus_kernel_code():
    big = _fc_layer(0.9)
    tiny = make_layer(Case("tiny", Op.DENSE, (24,), 4, sparsity=0.5))[0]
    conv = make_layer(Case("conv", Op.CONV2D, (14, 14, 16), 32, sparsity=0.95, pad=1, in_zp=-128))[0]
    layers = [big, tiny, conv]
    got = choose_formats(layers, "dsp", "smallest")
    best = min(
        _firmware_bytes(layers, dict(zip(("fc", "tiny", "conv"), combo, strict=True)))
        for combo in itertools.product(FORMATS, repeat=3)
    )
    assert _firmware_bytes(layers, got) == best
    # alone, the tiny layer's own smallest format would add a second FC kernel: it shares big's
    assert choose_format(tiny, "dsp", "smallest") == "bitmask"
    assert got["tiny"] == got["fc"] == choose_format(big, "dsp", "smallest")
    fastest = choose_formats(layers, "dsp")
    for layer in layers:
        fmt = fastest[layer.name]
        assert predict_instructions(layer, fmt, "dsp") <= predict_instructions(layer, "dense", "dsp")
    unpruned = QuantLayer(**{**big.__dict__, "mask": None})
    assert choose_formats([unpruned, conv], "dsp", "smallest")["fc"] == "dense"


def test_mask_must_cover_the_non_zeros():
    layer = _fc_layer(0.9)
    bad = QuantLayer(**{**layer.__dict__, "mask": np.zeros_like(layer.mask)})
    with pytest.raises(ValueError, match="outside the mask"):
        layer_bytes(bad, "csr8")


def test_doctests():
    for module in (mcuprune.model.formats, mcuprune.model.costs, mcuprune.codegen.emit):
        assert doctest.testmod(module).failed == 0, module.__name__


# --- cross-compilation for the targets ---------------------------------------------------------

ARM_CFLAGS = ["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror", "-mthumb"]
ARM_TARGETS = {
    "m3": ["-mcpu=cortex-m3", "-mfloat-abi=soft"],
    "m4": ["-mcpu=cortex-m4", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"],
}
ARM_BUILDS = [
    pytest.param(target, path, id=f"{target}-{path.parent.name}-{path.name}")
    for target, variants in (("m3", ("reference",)), ("m4", ("reference", "dsp")))
    for variant in variants
    for path in kernel_sources(variant, ALL_PAIRS)
]


@pytest.mark.parametrize(("target", "source"), ARM_BUILDS)
def test_kernel_cross_compiles(tmp_path: Path, target: str, source: Path):
    cc = require("arm-none-eabi-gcc")
    cmd = [cc, *ARM_CFLAGS, *ARM_TARGETS[target], f"-I{INCLUDE_DIR}", "-c", str(source), "-o", str(tmp_path / "k.o")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --- on target ----------------------------------------------------------------------------------


@pytest.mark.qemu
def test_sparse_kernels_bit_exact_in_qemu(tmp_path: Path):
    """bench/sparse/run.py --quick: every kernel, both variants, M4 and M3, checked against numpy."""
    for tool in ("arm-none-eabi-gcc", "qemu-system-arm"):
        require(tool)
    script = ROOT / "bench" / "sparse" / "run.py"
    cmd = [sys.executable, str(script), "--quick", "--build-dir", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all checksums match the numpy reference" in result.stdout
