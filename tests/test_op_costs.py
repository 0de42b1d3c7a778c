"""The instruction model of the ops without weight formats (mcuprune.model.op_costs, op_costs.json).

The fast tests check the fitted table against the points it was fitted to
(bench/op_costs/results/points.json, made by bench/op_costs/measure.py) and that predictions behave;
the QEMU test measures a small model afresh and compares each layer with its prediction.
"""

from __future__ import annotations

import doctest
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import mcuprune.model.op_costs
from mcuprune.model.costs import DEFAULT_CORE
from mcuprune.model.ir import INPUT, FloatLayer, FloatModel, Op, QParams, QuantLayer, verify
from mcuprune.model.op_costs import (
    COSTED_OPS,
    load_op_costs,
    op_cost_features,
    op_cost_key,
    op_cost_model,
    predict_op_instructions,
)
from mcuprune.model.ops import VARIANTS

ROOT = Path(__file__).resolve().parent.parent
POINTS = ROOT / "bench" / "op_costs" / "results" / "points.json"
TICK = 40.0  # instructions per SysTick tick: counts below it are compared with it (bench/op_costs/fit.py)


def _layer(geometry: dict) -> QuantLayer:
    """A QuantLayer with a recorded point's shapes and geometry (all op_cost_features reads)."""
    unit = QParams(1.0, 0)
    weights = np.zeros(geometry["weights_shape"], np.int8) if "weights_shape" in geometry else None
    return QuantLayer(name="point", op=Op(geometry["op"]), in_shape=tuple(geometry["in_shape"]),
                      out_shape=tuple(geometry["out_shape"]), input_q=unit, output_q=unit, weights=weights,
                      stride=tuple(geometry["stride"]), padding=tuple(geometry["padding"]),
                      dilation=tuple(geometry["dilation"]), window=tuple(geometry["window"]),
                      depth_multiplier=geometry["depth_multiplier"], act_min=geometry["act_min"],
                      act_max=geometry["act_max"])  # fmt: skip


def _depthwise(hwc: tuple[int, int, int], k: int, stride: int = 1) -> FloatLayer:
    h, w, c = hwc
    pad = k // 2
    out = ((h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1, c)
    return FloatLayer("dw", Op.DEPTHWISE_CONV2D, hwc, out, weights=np.zeros((c, k, k, 1), np.float32),
                      bias=np.zeros(c, np.float32), stride=(stride, stride), padding=(pad,) * 4)


def _sized(op: Op, n: int) -> FloatLayer:
    """One layer of `op` whose size grows with n (geometry fixed)."""
    hwc = (4 * n, 4 * n, 8)
    if op in (Op.MAXPOOL2D, Op.AVGPOOL2D):
        return FloatLayer("p", op, hwc, (2 * n, 2 * n, 8), window=(2, 2), stride=(2, 2))
    if op is Op.MEAN:
        return FloatLayer("m", op, hwc, (8,))
    if op is Op.ADD:
        return FloatLayer("a", op, hwc, hwc, inputs=("x", "y"))
    if op is Op.PAD:
        return FloatLayer("p", op, hwc, (4 * n + 2, 4 * n + 2, 8), padding=(1, 1, 1, 1))
    if op is Op.RESHAPE:
        return FloatLayer("r", op, hwc, (16 * n * n * 8,))
    if op is Op.SOFTMAX:
        return FloatLayer("s", op, hwc, hwc)
    return _depthwise(hwc, 3)


def test_doctests():
    assert doctest.testmod(mcuprune.model.op_costs).failed == 0


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("op", COSTED_OPS, ids=lambda op: op.value)
def test_every_op_has_a_model_with_the_kernels_terms(op: Op, variant: str):
    model = op_cost_model(op, variant)
    assert op_cost_key(op, variant, DEFAULT_CORE[variant]) in load_op_costs()["models"]
    assert set(model["features"]) == set(op_cost_features(_sized(op, 1), variant))
    assert set(model["coefficients"]) == set(model["features"])
    assert model["points"] >= 4
    if op is Op.RESHAPE:  # no kernel: a count under one timer tick, so only the tick bounds its error
        assert 0 < model["coefficients"]["call"] < TICK
    else:
        assert 0 <= model["max_relative_error"] < 0.1


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("op", COSTED_OPS, ids=lambda op: op.value)
def test_predictions_are_positive_and_grow_with_size(op: Op, variant: str):
    small, large = (predict_op_instructions(_sized(op, n), variant) for n in (1, 3))
    assert small > 0
    if op is Op.RESHAPE:  # no kernel: the same few instructions around the call at any size
        assert large == small
    else:
        assert large > 1.5 * small


def test_an_unmeasured_core_takes_the_variants_own():
    layer = _sized(Op.ADD, 2)
    assert predict_op_instructions(layer, "dsp", "cortex-m7") == predict_op_instructions(layer, "dsp")


def test_float_and_quant_layers_cost_the_same():
    unit = QParams(0.1, 0)
    for op in COSTED_OPS:
        f = _sized(op, 2)
        weights = None if f.weights is None else np.zeros(f.weights.shape, np.int8)
        q = QuantLayer(name=f.name, op=f.op, in_shape=f.in_shape, out_shape=f.out_shape, input_q=unit, output_q=unit,
                       weights=weights, stride=f.stride, padding=f.padding, window=f.window)  # fmt: skip
        for variant in VARIANTS:
            assert op_cost_features(f, variant) == op_cost_features(q, variant), (op, variant)


def test_ops_it_does_not_cost_are_refused():
    conv = FloatLayer("c", Op.CONV2D, (8, 8, 3), (8, 8, 4), weights=np.zeros((4, 3, 3, 3), np.float32),
                      bias=np.zeros(4, np.float32), padding=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="predict_instructions"):
        predict_op_instructions(conv)
    dense = FloatLayer("d", Op.DENSE, (10,), (2,), weights=np.zeros((2, 10), np.float32),
                       bias=np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="costs.py|predict_instructions"):
        predict_op_instructions(dense)
    int4 = replace(_depthwise((8, 8, 8), 3), weight_bits=4)
    with pytest.raises(ValueError, match="4-bit"):
        predict_op_instructions(int4)
    with pytest.raises(ValueError, match="variant"):
        predict_op_instructions(_sized(Op.ADD, 1), "neon")


@pytest.mark.skipif(not POINTS.is_file(), reason="no measured points (bench/op_costs/measure.py)")
def test_fit_reproduces_the_measured_points():
    """Each recorded count is predicted within its model's max_relative_error (coefficients are
    rounded to 4 decimals in the JSON: a hair of slack)."""
    points = json.loads(POINTS.read_text())["points"]
    models = load_op_costs()["models"]
    assert {op_cost_key(p["op"], p["variant"], p["core"]) for p in points} == set(models)
    for p in points:
        model = models[op_cost_key(p["op"], p["variant"], p["core"])]
        predicted = predict_op_instructions(_layer(p["geometry"]), p["variant"], p["core"])
        error = abs(predicted - p["instructions"]) / max(p["instructions"], TICK)
        assert error <= model["max_relative_error"] + 1e-3, (p["case"], p["layer"], p["variant"], p["core"])


@pytest.mark.qemu
def test_measured_layers_match_predictions(tmp_path: Path):
    """A model with a maxpool and a residual add, compiled for mps2-an386 (DSP kernels) and run in
    QEMU: every costed layer's count is within its model's max_relative_error (plus 2 % and one tick
    of timer resolution) of the prediction."""
    from mcuprune.device.evaluate import evaluate_firmware
    from mcuprune.quantize import quantize_model
    from mcuprune.target.compile import compile_run
    from mcuprune.train.runs import write_imported_run

    rng = np.random.default_rng(0)
    dw = FloatLayer("dw", Op.DEPTHWISE_CONV2D, (18, 18, 12), (18, 18, 12), inputs=(INPUT,),
                    weights=rng.normal(size=(12, 3, 3, 1)).astype(np.float32) / 3,
                    bias=rng.normal(scale=0.1, size=12).astype(np.float32), padding=(1, 1, 1, 1))
    pool = FloatLayer("pool", Op.MAXPOOL2D, (18, 18, 12), (9, 9, 12), window=(2, 2), stride=(2, 2))
    branch = FloatLayer("branch", Op.DEPTHWISE_CONV2D, (9, 9, 12), (9, 9, 12),
                        weights=rng.normal(size=(12, 1, 1, 1)).astype(np.float32),
                        bias=np.zeros(12, np.float32))
    add = FloatLayer("add", Op.ADD, (9, 9, 12), (9, 9, 12), inputs=("pool", "branch"))
    mean = FloatLayer("mean", Op.MEAN, (9, 9, 12), (12,))
    model = FloatModel("op-costs-check", (18, 18, 12), 12, (dw, pool, branch, add, mean))
    verify(model)
    quant = quantize_model(model, rng.uniform(-1, 1, (32, 18, 18, 12)).astype(np.float32))
    write_imported_run(tmp_path / "run", quant, {"source": "tests/test_op_costs.py"})
    compile_run(tmp_path / "run", "mps2-an386", tmp_path / "fw", kernels_choice="dsp")
    result = evaluate_firmware(tmp_path / "fw", limit=3, progress=False, transport="semihosting")
    assert result.mismatches == 0
    checked = []
    for layer in quant.layers:
        measured = result.layer_instructions[layer.name]
        predicted = predict_op_instructions(layer, "dsp", "cortex-m4")
        allowed = (op_cost_model(layer.op, "dsp", "cortex-m4")["max_relative_error"] + 0.02) * measured + TICK
        assert abs(predicted - measured) <= allowed, (layer.name, predicted, measured)
        checked.append(layer.op)
    assert {Op.MAXPOOL2D, Op.ADD} <= set(checked)
