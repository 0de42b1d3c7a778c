"""Telemetry: the integer definitions, a C implementation of them, and the monitor QSAE's int8 export."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mcuprune.controller.drift_qsae import (
    build_monitor_qsae,
    device_telemetry,
    penultimate_activations,
    penultimate_q,
    reconstruct_s8,
)
from mcuprune.model.interpreter import run_s8
from mcuprune.model.telemetry import (
    MAX_RECON_DIM,
    activation_histogram,
    exp_table,
    reconstruction_error,
    telemetry_from_tensors,
    top1,
    top1_confidence,
    top1_confidence_q15,
)
from mcuprune.quantize import INPUT_Q
from mcuprune.target.compile import quantize_run

int8_rows = arrays(np.int8, st.tuples(st.integers(1, 5), st.integers(1, 70)))


def _hist_loop(row: np.ndarray) -> list[int]:
    """The C expression, literally: hist[((uint8_t)(a + 128)) >> 4]++."""
    hist = [0] * 16
    for a in row.tolist():
        hist[((a + 128) & 0xFF) >> 4] += 1
    return hist


def test_histogram_bins_by_hand() -> None:
    a = np.array([[-128, -113, -112, -1, 0, 15, 16, 127]], dtype=np.int8)
    expected = np.zeros(16, dtype=np.int64)
    for b in (0, 0, 1, 7, 8, 8, 9, 15):
        expected[b] += 1
    np.testing.assert_array_equal(activation_histogram(a)[0], expected)


@given(int8_rows)
@settings(max_examples=50, deadline=None)
def test_histogram_matches_the_c_expression_and_sums_to_d(a: np.ndarray) -> None:
    h = activation_histogram(a)
    assert h.shape == (len(a), 16)
    assert [list(r) for r in h] == [_hist_loop(r) for r in a]
    assert (h.sum(axis=1) == a.shape[1]).all()


@given(int8_rows, st.integers(0, 2**31))
@settings(max_examples=50, deadline=None)
def test_reconstruction_error_is_the_integer_sum_of_squares(a: np.ndarray, seed: int) -> None:
    r = np.random.default_rng(seed).integers(-128, 128, size=a.shape).astype(np.int8)
    expected = [sum((int(x) - int(y)) ** 2 for x, y in zip(ra, rr, strict=True)) for ra, rr in zip(a, r, strict=True)]
    assert reconstruction_error(a, r).tolist() == expected
    assert reconstruction_error(a, a).tolist() == [0] * len(a)


def test_reconstruction_error_worst_case_and_limits() -> None:
    a = np.full((1, 64), 127, dtype=np.int8)
    r = np.full((1, 64), -128, dtype=np.int8)
    assert reconstruction_error(a, r)[0] == 64 * 255**2
    assert MAX_RECON_DIM * 255**2 < 2**32 <= (MAX_RECON_DIM + 1) * 255**2  # the largest D a uint32 holds
    with pytest.raises(ValueError, match="shape"):
        reconstruction_error(a, r[:, :10])


def test_exp_table() -> None:
    t = exp_table(0.197)
    assert t.dtype == np.uint16 and t.shape == (256,)
    assert t[0] == 32768 and t[1] == round(32768 * np.exp(-0.197))
    assert (np.diff(t.astype(np.int64)) <= 0).all()
    with pytest.raises(ValueError):
        exp_table(0.0)


def test_confidence_special_cases() -> None:
    table = exp_table(1.0)
    equal = np.zeros((1, 10), dtype=np.int8)
    assert top1_confidence_q15(equal, table)[0] == (1 << 30) // (10 * 32768)  # 1/10 in Q15, floored
    dominant = np.full((1, 10), -128, dtype=np.int8)
    dominant[0, 3] = 127  # every other term is exp(-255) -> 0 in the table
    assert top1_confidence_q15(dominant, table)[0] == 32768
    assert top1(np.array([[5, 9, 9, -1]], dtype=np.int8))[0] == 1  # first maximum wins


@pytest.mark.parametrize("scale", [0.05, 0.197, 0.5])
def test_confidence_q15_is_the_softmax_to_a_thousandth(scale: float) -> None:
    logits = np.random.default_rng(0).integers(-128, 128, size=(2000, 10)).astype(np.int8)
    q15 = top1_confidence_q15(logits, exp_table(scale)) / 32768.0
    exact = top1_confidence(logits, scale)
    assert np.abs(q15 - exact).max() < 1e-3
    assert ((q15 > 0.0999) & (q15 <= 1.0)).all()


C_PROGRAM = r"""
#include <stdint.h>
#include <stdio.h>
#include "data.h"
int main(void) {
    for (int n = 0; n < N; ++n) {
        const int8_t *a = ACT[n], *r = RECON[n], *l = LOGITS[n];
        uint16_t hist[16] = {0};
        uint32_t err = 0;
        for (int j = 0; j < D; ++j) {
            hist[((uint8_t)(a[j] + 128)) >> 4]++;
            int32_t d = (int32_t)a[j] - r[j];
            err += (uint32_t)(d * d);
        }
        int8_t max = l[0];
        uint8_t top = 0;
        for (int k = 1; k < K; ++k) if (l[k] > max) { max = l[k]; top = (uint8_t)k; }
        uint32_t s = 0;
        for (int k = 0; k < K; ++k) s += EXP_Q15[max - l[k]];
        uint32_t conf = (UINT32_C(1) << 30) / s;
        printf("%u %u %lu", (unsigned)top, (unsigned)conf, (unsigned long)err);
        for (int b = 0; b < 16; ++b) printf(" %u", (unsigned)hist[b]);
        printf("\n");
    }
    return 0;
}
"""


def _c_array(name: str, ctype: str, values: np.ndarray) -> str:
    if values.ndim == 1:
        body = ", ".join(str(int(v)) for v in values)
    else:
        body = ", ".join("{" + ", ".join(str(int(v)) for v in row) + "}" for row in values)
    dims = "".join(f"[{d}]" for d in values.shape)
    return f"static const {ctype} {name}{dims} = {{{body}}};\n"


def test_a_c_implementation_of_the_definitions_matches_bit_for_bit(tmp_path) -> None:
    """The documented C, compiled for the host with -Wall -Wextra -Werror, agrees on every field."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed (apt-get install gcc)")
    rng = np.random.default_rng(1)
    n, d, k = 200, 64, 10
    act = rng.integers(-128, 128, size=(n, d)).astype(np.int8)
    act[:, : d // 2] = -128  # a ReLU layer's zero spike
    recon = rng.integers(-128, 128, size=(n, d)).astype(np.int8)
    logits = rng.integers(-128, 128, size=(n, k)).astype(np.int8)
    logits[::7, 4] = logits[::7, 2] = 127  # ties: the first index wins
    table = exp_table(0.197)
    header = (f"#define N {n}\n#define D {d}\n#define K {k}\n" + _c_array("ACT", "int8_t", act)
              + _c_array("RECON", "int8_t", recon) + _c_array("LOGITS", "int8_t", logits)
              + _c_array("EXP_Q15", "uint16_t", table))
    (tmp_path / "data.h").write_text(header)
    (tmp_path / "main.c").write_text(C_PROGRAM)
    subprocess.run([gcc, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(tmp_path / "tel"),
                    str(tmp_path / "main.c")], check=True, cwd=tmp_path)
    out = subprocess.run([str(tmp_path / "tel")], capture_output=True, text=True, check=True).stdout
    got = np.array([[int(v) for v in line.split()] for line in out.splitlines()])
    tel = telemetry_from_tensors(logits, act, recon, table)
    np.testing.assert_array_equal(got[:, 0], tel.top1)
    np.testing.assert_array_equal(got[:, 1], tel.confidence_q15)
    np.testing.assert_array_equal(got[:, 2], tel.recon_error)
    np.testing.assert_array_equal(got[:, 3:], tel.histogram)


# --- the monitor QSAE on a real (small) model --------------------------------------------------


@pytest.fixture(scope="module")
def digits_monitor(digits_run):
    run_dir, dataset = digits_run
    model = quantize_run(run_dir)
    monitor = build_monitor_qsae(model, dataset.x_train[:800], steps=300, seed=0)
    return model, dataset, monitor


def test_monitor_qsae_reads_and_writes_the_penultimate_quantization(digits_monitor) -> None:
    model, _, monitor = digits_monitor
    enc, dec = monitor.model.layers
    assert enc.input_q == INPUT_Q  # the penultimate buffer is the QSAE's int8 input, unchanged
    q = penultimate_q(model)
    assert q == model.layers[-2].output_q
    assert dec.output_q.zero_point == q.zero_point and np.isclose(dec.output_q.scale, q.scale)
    assert monitor.model.input_shape == (1, 1, model.layers[-1].in_shape[0])


def test_monitor_qsae_int8_reconstruction_tracks_the_float_qsae(digits_monitor) -> None:
    model, dataset, monitor = digits_monitor
    act = penultimate_activations(model, dataset.x_test)
    recon = reconstruct_s8(monitor.model, act)
    q = penultimate_q(model)
    x = q.scale * (act.astype(np.float64) - q.zero_point)
    x_hat_int8 = q.scale * (recon.astype(np.float64) - q.zero_point)
    x_hat_float = np.clip(monitor.qsae.reconstruct(x.astype(np.float32)), q.scale * (-128 - q.zero_point),
                          q.scale * (127 - q.zero_point))
    # The int8 pipeline only adds rounding (of the hidden code and the output): measured here, a mean
    # of 0.2 output steps and a maximum of 5.4.
    steps = np.abs(x_hat_int8 - x_hat_float) / q.scale
    assert steps.mean() < 0.5 and steps.max() < 8
    # It reconstructs better than predicting the mean activation.
    assert np.sum((x - x_hat_int8) ** 2) < np.sum((x - x.mean(axis=0)) ** 2)


def test_device_telemetry_is_the_reference_interpreter_plus_the_definitions(digits_monitor) -> None:
    model, dataset, monitor = digits_monitor
    x = dataset.x_test[:100]
    tel = device_telemetry(model, monitor.model, x, first_count=7)
    logits = run_s8(model, (x.astype(np.int16) - 128).astype(np.int8))
    act = penultimate_activations(model, x)
    np.testing.assert_array_equal(tel.top1, top1(logits))
    np.testing.assert_array_equal(tel.count, np.arange(7, 107))
    np.testing.assert_array_equal(tel.histogram, activation_histogram(act))
    np.testing.assert_array_equal(tel.recon_error, reconstruction_error(act, reconstruct_s8(monitor.model, act)))
    np.testing.assert_array_equal(tel.confidence_q15, top1_confidence_q15(logits, exp_table(model.output_q.scale)))
    record = tel.record(3)
    assert set(record) == {"count", "top1", "confidence_q15", "recon_error", "histogram"}
    assert record["count"] == 10 and sum(record["histogram"]) == act.shape[1]
