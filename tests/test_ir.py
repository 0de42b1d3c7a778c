"""The graph IR: what verify refuses, serialization round trips, and format-1 directories still load."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mcuprune.model.interpreter import run_s8
from mcuprune.model.ir import (
    INPUT,
    RELU6,
    FloatLayer,
    FloatModel,
    GraphError,
    Op,
    load_float_model,
    load_quant_model,
    same_padding,
    save_float_model,
    save_quant_model,
    verify,
)
from mcuprune.target.compile import quantize_run
from mcuprune.train.datasets import to_int8


def _dense(name: str, n_in: int, n_out: int, inputs: tuple[str, ...] = ()) -> FloatLayer:
    return FloatLayer(name, Op.DENSE, (n_in,), (n_out,), np.ones((n_out, n_in), np.float32),
                      np.zeros(n_out, np.float32), inputs=inputs)


def test_a_chain_names_its_inputs_when_built() -> None:
    model = FloatModel("m", (4,), 2, (_dense("a", 4, 3), _dense("b", 3, 2)))
    assert [layer.inputs for layer in model.layers] == [(INPUT,), ("a",)]
    verify(model)


@pytest.mark.parametrize(("layers", "problem"), [
    ((_dense("a", 4, 3), _dense("b", 3, 2, inputs=("c",))), "reads 'c'"),
    ((_dense("a", 4, 3), _dense("a", 3, 2)), "used twice"),
    ((_dense("a", 4, 3), _dense("b", 5, 2)), "declared input shape"),
    ((_dense("a", 4, 3), FloatLayer("s", Op.ADD, (3,), (3,), inputs=("a",))), "takes 2 input"),
    ((_dense("a", 4, 3), _dense("b", 4, 3, inputs=(INPUT,)),
      FloatLayer("s", Op.ADD, (3,), (4,), inputs=("a", "b"))), "declared output shape"),
])
def test_verify_refuses_broken_graphs(layers, problem: str) -> None:
    with pytest.raises(GraphError, match=problem):
        verify(FloatModel("m", (4,), 2, layers))


def test_same_padding_puts_the_odd_pixel_at_the_bottom_right() -> None:
    assert same_padding(49, 10, 10, 4, (2, 2)) == (4, 5, 1, 1)  # DS-CNN's first conv: 9 rows of padding
    assert same_padding(96, 96, 3, 3, (2, 2)) == (0, 1, 0, 1)
    assert same_padding(7, 7, 3, 3, (1, 1)) == (1, 1, 1, 1)


def test_float_model_round_trips_with_clamps_and_branches(tmp_path: Path) -> None:
    a = replace(_dense("a", 4, 3), clamp=RELU6)
    b = _dense("b", 4, 3, inputs=(INPUT,))
    model = FloatModel("m", (4,), 3, (a, b, FloatLayer("s", Op.ADD, (3,), (3,), inputs=("a", "b"))))
    save_float_model(model, tmp_path)
    back = load_float_model(tmp_path)
    assert back.layers[0].clamp == RELU6 and back.layers[2].inputs == ("a", "b")
    with pytest.raises(ValueError, match="float model"):
        load_quant_model(tmp_path)


def test_format_1_directories_still_load(digits_run, tmp_path: Path) -> None:
    """A model.json written before the graph IR (a chain with int stride/pad/pool and a relu flag)."""
    run_dir, dataset = digits_run
    model = quantize_run(run_dir)
    save_quant_model(model, tmp_path)
    doc = json.loads((tmp_path / "model.json").read_text())
    doc["format_version"] = 1
    for entry in doc["layers"]:
        stride, pad = entry.pop("stride")[0], entry.pop("padding")[0]
        window = entry.pop("window")[0]
        relu = entry.pop("clamp")[0] == 0.0
        for key in ("inputs", "dilation", "depth_multiplier", "other_q", "act_min", "act_max"):
            entry.pop(key)
        entry.update(stride=window if entry["op"] == "maxpool2d" else stride, pad=pad, pool=window, relu=relu)
    (tmp_path / "model.json").write_text(json.dumps(doc))
    old = load_quant_model(tmp_path)
    verify(old)
    x = to_int8(dataset.x_test[:100])
    np.testing.assert_array_equal(run_s8(old, x), run_s8(model, x))


def test_an_unknown_format_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text(json.dumps({"format_version": 99}))
    np.savez(tmp_path / "model.npz")
    with pytest.raises(ValueError, match="compile the model again"):
        load_quant_model(tmp_path)
