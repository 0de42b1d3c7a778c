"""No undefined behaviour for any blob that binds (issue 12): mcup_bind's per-layer checks
(firmware/runtime/bind_check.c) and the fully connected kernels of every weight format and width,
built for the host under AddressSanitizer and UndefinedBehaviorSanitizer (tests/c/bind_fuzz.c,
reference and DSP variants), fed layers with extreme quantization values: biases at and just past
the accumulator bound and at the int32 limits, the largest and smallest multipliers, shifts -31
and 30 and just outside, zero points and clamps at and past their ranges, all-extreme inputs and
weights (-128, and -8 for int4, which quantize never makes but a blob may carry).

For every case the check must accept exactly what the Python predicate below accepts (the ranges
TFLite's integers take, plus fixedpoint.bias_limit), and every accepted layer must give the exact
outputs of the int64 numpy reference: overflow-free, so wrap-free, arithmetic on the device.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from host_c import VARIANT_DEFINES, host_build

from mcuprune.codegen.emit import BLOB_WEIGHT_FIELDS
from mcuprune.model.fixedpoint import bias_limit, requantize_s8
from mcuprune.model.formats import WEIGHT_RANGE, pack
from mcuprune.model.ir import Op
from mcuprune.model.ops import FORMATS, kernel_sources
from mcuprune.resources import INCLUDE_DIR, RUNTIME_DIR

C_DIR = Path(__file__).resolve().parent / "c"
FMT_CODE = {fmt: i for i, fmt in enumerate(FORMATS)}  # MCUP_FMT_* (bind_check.h: same order)
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


@pytest.fixture(scope="module", params=("reference", "dsp"))
def harness(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    variant = request.param
    kernels = kernel_sources(variant, {(Op.DENSE, fmt, bits) for fmt in FORMATS for bits in (8, 4)})
    out = tmp_path_factory.mktemp(f"bind-fuzz-{variant}") / "bind_fuzz"
    return host_build(out, [C_DIR / "bind_fuzz.c", RUNTIME_DIR / "bind_check.c", *kernels],
                      [INCLUDE_DIR, RUNTIME_DIR], VARIANT_DEFINES[variant])


def terms_per_output(fmt: str, cols: int, weight_arrays: list[np.ndarray]) -> int:
    """Products an output sums, as the device counts them (bind_check.c)."""
    fields = BLOB_WEIGHT_FIELDS[fmt]
    if "row_ptr" not in fields:
        return cols
    row_ptr = weight_arrays[fields.index("row_ptr")].astype(np.int64)
    return int(np.diff(row_ptr).max(initial=0)) * (4 if fmt == "block4" else 1)


def valid(bias: np.ndarray, multiplier: np.ndarray, shift: np.ndarray, quant: np.ndarray, terms: int,
          bits: int) -> bool:
    """What mcup_bind must accept: TFLite's ranges (QuantizeMultiplier: multiplier 0 or in
    [2^30, 2^31), shift in [-31, 30]; int8 zero points; a clamp inside int8) and the accumulator
    bound."""
    input_offset, output_offset, act_min, act_max = (int(v) for v in quant)
    m = multiplier.astype(np.int64)
    return bool(((m == 0) | (m >= 2**30)).all() and (shift >= -31).all() and (shift <= 30).all()
                and -127 <= input_offset <= 128 and -128 <= output_offset <= 127
                and -128 <= act_min <= act_max <= 127
                and np.abs(bias.astype(np.int64)).max() <= bias_limit(terms, bits))


class Layer:
    """One FC layer's blob arrays, its dense weights, an input, and what the device must answer."""

    def __init__(self, fmt: str, bits: int, weights: np.ndarray, x: np.ndarray, bias: np.ndarray,
                 multiplier: np.ndarray, shift: np.ndarray, quant: tuple[int, int, int, int]) -> None:
        rows, cols = weights.shape
        packed = pack(weights, fmt, bits)
        self.weight_arrays = [np.asarray(getattr(packed, name)) for name in BLOB_WEIGHT_FIELDS[fmt]]
        self.fmt, self.bits, self.rows, self.cols, self.x = fmt, bits, rows, cols, x
        self.quant = np.array(quant, dtype=np.int64)
        self.arrays = [*self.weight_arrays, bias.astype(np.int32), multiplier.astype(np.int32),
                       shift.astype(np.int32), self.quant.astype(np.int32)]
        terms = terms_per_output(fmt, cols, self.weight_arrays)
        self.accepted = valid(bias, multiplier, shift, self.quant, terms, bits)
        if self.accepted:  # exact int64 arithmetic: what overflow-free int32 must give
            acc = bias.astype(np.int64) + weights.astype(np.int64) @ (x.astype(np.int64) + self.quant[0])
            self.expected = requantize_s8(acc, multiplier, shift, int(self.quant[1]), int(self.quant[2]),
                                          int(self.quant[3]))

    def wire(self) -> bytes:
        out = struct.pack("<5I", FMT_CODE[self.fmt], self.rows, self.cols, self.bits, len(self.arrays))
        for a in self.arrays:
            raw = np.ascontiguousarray(a).tobytes()
            out += struct.pack("<I", len(raw)) + raw
        return out + self.x.astype(np.int8).tobytes()


def run_cases(exe: Path, layers: list[Layer]) -> None:
    proc = subprocess.run([str(exe)], input=b"".join(layer.wire() for layer in layers), capture_output=True,
                          check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-4000:]  # ASan / UBSan findings
    out, pos = proc.stdout, 0
    for i, layer in enumerate(layers):
        accepted = out[pos] == 1
        pos += 1
        assert accepted == layer.accepted, f"case {i} ({layer.fmt}, int{layer.bits}): bind said {accepted}"
        if accepted:
            got = np.frombuffer(out, dtype=np.int8, count=layer.rows, offset=pos)
            pos += layer.rows
            np.testing.assert_array_equal(got, layer.expected, err_msg=f"case {i} ({layer.fmt}, int{layer.bits})")
    assert pos == len(out)


def _weights(rng: np.random.Generator, fmt: str, bits: int, rows: int, cols: int, extreme: bool) -> np.ndarray:
    lo, hi = WEIGHT_RANGE[bits]
    w = np.full((rows, cols), lo) if extreme else rng.integers(lo, hi + 1, (rows, cols))
    if fmt == "block4":  # whole 1x4 blocks pruned
        keep = np.repeat(rng.random((rows, -(-cols // 4))) < 0.6, 4, axis=1)[:, :cols]
    else:
        keep = rng.random((rows, cols)) < (1.0 if fmt == "dense" else 0.5)
    return np.where(keep, w, 0).astype(np.int8)


def extreme_layers(seed: int, count: int) -> list[Layer]:
    """Random layers of every format and width whose quantization values are drawn from the edges."""
    rng = np.random.default_rng(seed)
    layers = []
    for i in range(count):
        fmt, bits = FORMATS[i % len(FORMATS)], (8, 4)[(i // len(FORMATS)) % 2]
        rows, cols = int(rng.integers(1, 6)), int(rng.choice([1, 3, 8, 17, 40, 300]))
        extreme = rng.random() < 0.4
        w = _weights(rng, fmt, bits, rows, cols, extreme)
        x = np.full(cols, -128 if rng.random() < 0.5 else 127) if extreme else rng.integers(-128, 128, cols)
        limit = bias_limit(cols, bits)

        def pick(good: list[int], bad: list[int], size: int | None = None) -> np.ndarray:
            """Valid edge values, or (one case in 12) values just past the edge."""
            return rng.choice(bad if rng.random() < 1 / 12 else good, size=size)

        bias = pick([0, 1, 2, limit, -limit, int(rng.integers(-limit, limit + 1))],
                    [limit + 1, -limit - 1, INT32_MAX, INT32_MIN], rows)
        mult = pick([0, 2**30, INT32_MAX, int(rng.integers(2**30, 2**31))], [2**30 - 1, 1, -1, INT32_MIN], rows)
        shift = pick([-31, 30, 0, 1, -1, int(rng.integers(-31, 31))], [-32, 31, 100, INT32_MIN], rows)
        in_off = int(pick([-127, 128, 0, int(rng.integers(-127, 129))], [-128, 129]))
        out_off = int(pick([-128, 127, 0, int(rng.integers(-128, 128))], [128, -129]))
        act_min, act_max = sorted(int(v) for v in pick([-128, 127, 0, -5, 5], [-129, 128], 2))
        if rng.random() < 1 / 12:
            act_min, act_max = act_max + 1, act_min  # an empty clamp
        layers.append(Layer(fmt, bits, w, x.astype(np.int8), bias.astype(np.int64), mult, shift,
                            (in_off, out_off, act_min, act_max)))
    return layers


def test_extreme_quantization_binds_exactly_the_valid_layers_and_runs_them_exactly(harness: Path) -> None:
    layers = extreme_layers(seed=12, count=1200)
    accepted = sum(layer.accepted for layer in layers)
    assert 200 < accepted < len(layers) - 200  # both sides of every edge are exercised
    run_cases(harness, layers)


def test_bias_at_the_bound_with_extreme_inputs_and_weights(harness: Path) -> None:
    """The worst accumulator: every product -128 * (-128 + 128 offset)... at its largest magnitude,
    with the bias at the bound (accepted, exact) and one past it (refused), both signs, every format."""
    layers = []
    for fmt in FORMATS:
        for bits in (8, 4):
            lo = WEIGHT_RANGE[bits][0]
            cols = 40
            w = np.full((2, cols), lo, dtype=np.int8)
            for x_value, in_off, sign in ((127, 128, -1), (-128, -127, 1)):  # |x + off| = 255
                x = np.full(cols, x_value, dtype=np.int8)
                terms = terms_per_output(fmt, cols, [np.asarray(getattr(pack(w, fmt, bits), n))
                                                     for n in BLOB_WEIGHT_FIELDS[fmt]])
                limit = bias_limit(terms, bits)
                for bias in (sign * limit, sign * (limit + 1)):
                    layers.append(Layer(fmt, bits, w, x, np.array([bias, -bias]), np.array([INT32_MAX, 2**30]),
                                        np.array([-31, 0]), (in_off, 0, -128, 127)))
    assert [layer.accepted for layer in layers] == [True, False] * (len(layers) // 2)
    run_cases(harness, layers)


def test_largest_multiplier_with_shift_30_matches_the_reference(harness: Path) -> None:
    """Issue 12's case: multiplier 2^31 - 1 with shift 30 passed bind_check.c and the device's output
    differed from the reference (signed overflow adding the output zero point in mcup_requant.h).
    An accumulator of 2 shifted left by 30 wraps to -2^31; requantized that is about -2^31, and the
    output zero point -128 took it past INT32_MIN. The reference saturates to act_min."""
    cols = 8
    w = np.zeros((3, cols), dtype=np.int8)
    x = np.zeros(cols, dtype=np.int8)
    layers = [Layer(fmt, 8, w, x, np.array([2, 1, -2]), np.full(3, INT32_MAX), np.full(3, 30), (0, zp, -128, 127))
              for fmt in FORMATS for zp in (-128, 127)]
    assert all(layer.accepted for layer in layers)
    assert layers[0].expected.tolist() == [-128, 127, -128]
    run_cases(harness, layers)
