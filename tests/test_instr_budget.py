"""Instruction budgets: the predicted instructions of a plan, which channels go, prune --instr-budget
end to end (predicted, then measured in QEMU), and budgets that hold as compile emits them."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mcuprune.compress.activations import capture_activations
from mcuprune.compress.instructions import (
    MIN_KEEP,
    channel_damage,
    predict_instructions,
    remove_for_instructions,
    total_instructions,
)
from mcuprune.compress.prune import check_arguments, prune_run
from mcuprune.compress.structured import channel_groups
from mcuprune.errors import UserError
from mcuprune.model.interpreter import run_f32
from mcuprune.train.datasets import to_float
from mcuprune.train.training import load_run_model


@pytest.fixture(scope="module")
def digits_model(digits_run):
    run_dir, ds = digits_run
    model, _ = load_run_model(run_dir)
    return model, capture_activations(model, to_float(ds.x_train[:400]), seed=0), ds


def test_prediction_covers_every_layer_and_shrinks_with_channels(digits_model) -> None:
    model, caps, _ = digits_model
    per_layer = predict_instructions(model)
    assert list(per_layer) == [layer.name for layer in model.layers]
    assert all(v > 0 for v in per_layer.values())
    smaller, _, predicted = remove_for_instructions(model, caps, 0.7 * sum(per_layer.values()))
    assert predicted == pytest.approx(total_instructions(smaller)) and predicted <= 0.7 * sum(per_layer.values())
    assert all(len(b.weights) <= len(a.weights) for a, b in zip(model.layers, smaller.layers, strict=True)
               if a.weights is not None)


def test_a_channel_nobody_reads_does_no_damage_and_damage_follows_the_readers_weights(digits_model) -> None:
    model, caps, _ = digits_model
    group = next(g for g in channel_groups(model) if g.tensors[0] == "conv2d2")
    reader = next(layer for layer in model.layers if layer.name == "dense4")
    w = reader.weights.copy()
    w[:, np.arange(w.shape[1]) % group.channels == 3] = 0.0  # channel 3's columns (H, W, C flattening)
    w[:, np.arange(w.shape[1]) % group.channels == 5] *= 10.0
    muted = replace(model, layers=tuple(replace(layer, weights=w) if layer.name == "dense4" else layer
                                        for layer in model.layers))
    before, after = channel_damage(model, group, caps), channel_damage(muted, group, caps)
    assert after[3] == 0.0 and before[3] > 0.0
    assert after[5] == pytest.approx(100.0 * before[5], rel=1e-6)  # squared column norms


def test_damage_ranks_channels_by_what_their_removal_does(digits_model) -> None:
    """Removing the least-damaging channels changes the float model's logits less than removing the
    most-damaging ones (same count)."""
    from mcuprune.compress.structured import remove_channels

    model, caps, ds = digits_model
    index, group = next((i, g) for i, g in enumerate(channel_groups(model)) if g.tensors[0] == "conv2d2")
    order = np.argsort(channel_damage(model, group, caps))
    x = to_float(ds.x_test[:200])
    base = run_f32(model, x)

    def change(channels) -> float:
        return float(np.abs(run_f32(remove_channels(model, {index: channels}), x) - base).mean())

    assert change(order[:8]) < change(order[-8:])


def test_an_unreachable_instruction_budget_names_the_smallest_reachable(digits_model) -> None:
    model, caps, _ = digits_model
    unreachable = r"instruction budget 10 is unreachable .* smallest reachable is [\d,]+ "
    with pytest.raises(UserError, match=unreachable) as info:
        remove_for_instructions(model, caps, 10)
    assert "\n" not in str(info.value) and f"{MIN_KEEP:.0%}" in str(info.value)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"instr_budget": 0}, "instruction budget must be a whole number"),
    ({"instr_budget": 1.5}, "instruction budget must be a whole number"),
    ({"method": "magnitude", "instr_budget": 10_000}, "instruction budget needs method 'qsae'"),
    ({"flash_budget": None, "kl_budget": None}, "give a budget"),
    ({"kl_budget": 0.1}, "not both"),
    ({"weights": "int2"}, "unknown weights 'int2'"),
    ({"method": "magnitude", "weights": "mixed"}, "mixed widths need method 'qsae'"),
])
def test_bad_budget_arguments_give_one_clear_line(kwargs, message) -> None:
    args = {"method": "qsae", "flash_budget": 5000, "kl_budget": None, "finetune_epochs": 1, "weights": "int8",
            "instr_budget": None, **kwargs}
    with pytest.raises(UserError, match=message) as info:
        check_arguments(**args)
    assert "\n" not in str(info.value)


@pytest.mark.qemu
def test_prune_to_an_instruction_budget_then_measure_it_in_qemu(digits_run, digits_model, tmp_path: Path) -> None:
    """The budget holds as predicted; the firmware compile emits runs within the cost models' error of
    the prediction, bit-exact."""
    from mcuprune.device.evaluate import evaluate_firmware
    from mcuprune.target.compile import compile_run

    run_dir, ds = digits_run
    model, _, _ = digits_model
    dense = total_instructions(model)
    budget = int(0.6 * dense)
    report = prune_run(run_dir, "qsae", 6000, None, 4, tmp_path / "p", qsae_steps=200, instr_budget=budget)
    assert report["instruction_removals"] and report["within_instr_budget"]
    assert report["predicted_instructions"] <= budget and report["model_bytes"] <= 6000
    compile_run(tmp_path / "p", "mps2-an386", tmp_path / "fw")
    fw = json.loads((tmp_path / "fw" / "firmware.json").read_text())
    assert fw["param_bytes"] <= 6000 == fw["flash_budget"]  # the default compile keeps the flash budget
    result = evaluate_firmware(tmp_path / "fw", limit=60, progress=False, transport="semihosting")
    assert result.mismatches == 0
    measured = result.instructions_per_inference
    assert abs(measured - report["predicted_instructions"]) <= 0.15 * report["predicted_instructions"]
    assert result.fp32_model_bytes == report["fp32_bytes"] == 4 * json.loads((run_dir / "run.json").read_text())[
        "param_count"]  # ratios stay against the model the user started from


def test_a_byte_budget_between_fastest_and_smallest_costs_the_fewest_instructions() -> None:
    """choose_formats(byte_budget=b) with the fastest formats over b: parameter bytes <= b, never more
    instructions than all-smallest, and no single move to a faster format of one layer would still fit."""
    from kernel_cases import Case, make_layer

    from mcuprune.model.costs import choose_formats, predict_instructions
    from mcuprune.model.formats import layer_bytes
    from mcuprune.model.ir import Op
    from mcuprune.model.ops import FORMATS

    layers = [make_layer(Case("fc", Op.DENSE, (1568,), 64, sparsity=0.9, in_zp=-128))[0],
              make_layer(Case("conv", Op.CONV2D, (14, 14, 16), 32, sparsity=0.8, pad=1, in_zp=-128))[0],
              make_layer(Case("head", Op.DENSE, (64,), 10, sparsity=0.5))[0]]

    def size(picks):
        return sum(layer_bytes(layer, picks[layer.name]) for layer in layers)

    def instructions(picks):
        return sum(predict_instructions(layer, picks[layer.name], "dsp") for layer in layers)

    fastest, smallest = choose_formats(layers, "dsp"), choose_formats(layers, "dsp", "smallest")
    assert size(smallest) < size(fastest) and instructions(smallest) > instructions(fastest)
    assert choose_formats(layers, "dsp", byte_budget=size(fastest)) == fastest
    for budget in np.linspace(size(smallest), size(fastest) - 1, 6).astype(int):
        picks = choose_formats(layers, "dsp", byte_budget=int(budget))
        assert size(picks) <= budget and instructions(picks) <= instructions(smallest)
        for layer in layers:
            for fmt in FORMATS:
                faster = {**picks, layer.name: fmt}
                cheaper = instructions(faster) < instructions(picks)
                assert not (cheaper and size(faster) <= budget and size(faster) > size(picks)), (budget, fmt)
    fewest = {la.name: min(layer_bytes(la, f) for f in FORMATS) for la in layers}
    too_small = choose_formats(layers, "dsp", byte_budget=sum(fewest.values()) - 1)  # all at their fewest bytes
    assert all(layer_bytes(la, too_small[la.name]) == fewest[la.name] for la in layers)
