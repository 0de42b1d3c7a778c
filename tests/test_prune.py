"""Pruning: structured removal, mask layout, τ candidates, budgets, baselines, errors, end to end."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcuprune.compress.activations import capture_activations
from mcuprune.compress.budget import (
    Candidate,
    choose_by_bytes,
    choose_by_kl,
    emitted,
    mask_bytes,
    packed_layer_bytes,
    pareto,
    plan_bytes,
)
from mcuprune.compress.importance import SPARSITY_LEVELS, layer_candidates, layer_front
from mcuprune.compress.magnitude import cubic_sparsity, global_magnitude_masks, sparsity_for_budget
from mcuprune.compress.prune import check_arguments, fp32_params, prune_run
from mcuprune.compress.structured import channel_groups, remove_channels
from mcuprune.errors import UserError
from mcuprune.model.interpreter import run_f32, run_layer_f32, trace_f32
from mcuprune.model.ir import Op, QParams, QuantLayer
from mcuprune.quantize import quantize_weights
from mcuprune.train.datasets import to_float
from mcuprune.train.training import load_run_model

INPUT = (8, 8, 1)
SPECS = [
    {"op": "conv2d", "out": 4, "k": 3, "pad": 1, "relu": True},
    {"op": "maxpool2d", "pool": 2},
    {"op": "conv2d", "out": 6, "k": 3, "pad": 1, "relu": True},
    {"op": "maxpool2d", "pool": 2},
    {"op": "dense", "out": 8, "relu": True},
    {"op": "dense", "out": 3, "relu": False},
]


def _model(seed: int = 0):
    """A small CNN in the float IR (conv2d0, maxpool2d1, conv2d2, maxpool2d3, dense4, dense5) with
    positive biases: a removed row whose weights alone were zeroed would still fire through ReLU(b)."""
    import torch

    from mcuprune.train.training import build_torch_model, export_float_model

    torch.manual_seed(seed)
    net = build_torch_model(SPECS, INPUT)
    with torch.no_grad():
        for m in net:
            if hasattr(m, "bias") and m.bias is not None:
                m.bias.uniform_(0.05, 0.3)
    return export_float_model(net.eval(), SPECS, INPUT, "t", 3)


def _x(n: int = 16, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *INPUT)).astype(np.float32)


def _group(model, first: str) -> int:
    return next(i for i, g in enumerate(channel_groups(model)) if g.tensors[0] == first)


def _zero_rows(model, name: str, rows: list[int], bias: bool = True):
    layers = []
    for layer in model.layers:
        if layer.name == name:
            w, b = layer.weights.copy(), layer.bias.copy()
            w[rows] = 0.0
            if bias:
                b[rows] = 0.0
            layer = replace(layer, weights=w, bias=b)
        layers.append(layer)
    return replace(model, layers=tuple(layers))


# --- structured removal ---------------------------------------------------------------------


def test_removing_channels_really_shrinks_every_layer_they_touch() -> None:
    model = _model()
    small = remove_channels(model, {_group(model, "conv2d0"): [1], _group(model, "conv2d2"): [0, 5],
                                    _group(model, "dense4"): [2, 3]})
    shapes = [layer.weights.shape for layer in small.layers if layer.weights is not None]
    assert shapes == [(3, 3, 3, 1), (4, 3, 3, 3), (6, 2 * 2 * 4), (3, 6)]
    assert [layer.out_shape for layer in small.layers] == [(8, 8, 3), (4, 4, 3), (4, 4, 4), (2, 2, 4), (6,), (3,)]
    assert fp32_params(small) < fp32_params(model)


@pytest.mark.parametrize(("first", "channels"), [("conv2d0", [1, 2]), ("conv2d2", [0, 5]), ("dense4", [2, 3, 7])])
def test_removed_channels_equal_their_rows_and_bias_zeroed(first, channels) -> None:
    """Exact statement 1 (structured.py): removing == zeroing the writers' weights AND bias."""
    model = _model()
    small = remove_channels(model, {_group(model, first): channels})
    np.testing.assert_allclose(run_f32(small, _x()), run_f32(_zero_rows(model, first, channels), _x()),
                               rtol=1e-5, atol=1e-6)


def test_zeroing_only_the_weights_is_not_equivalent() -> None:
    """With a positive bias the 'removed' neuron still outputs ReLU(b) > 0, which its reader reads."""
    model = _model()
    small = remove_channels(model, {_group(model, "dense4"): [2, 3]})
    assert not np.allclose(run_f32(small, _x()), run_f32(_zero_rows(model, "dense4", [2, 3], bias=False), _x()),
                           atol=1e-4)


@pytest.mark.parametrize(("first", "channels", "reader"), [("conv2d2", [1, 4], "dense4"), ("dense4", [0, 6], "dense5")])
def test_folded_means_equal_replacing_the_reader_inputs_by_their_means(first, channels, reader) -> None:
    """Exact statement 2: a dense reader with folding == the original with its lost input columns set
    to the given means (H, W, C column order)."""
    model = _model()
    index = next(i for i, layer in enumerate(model.layers) if layer.name == reader)
    fan_in = model.layers[index].weights.shape[1]
    means = np.random.default_rng(0).random(fan_in).astype(np.float32)
    small = remove_channels(model, {_group(model, first): channels}, {reader: means})
    tensors = trace_f32(model, _x())
    h = tensors[model.layers[index].inputs[0]].reshape(len(_x()), -1).copy()
    lost = np.isin(np.arange(fan_in) % model.layers[index - 1].out_shape[-1], channels)
    h[:, lost] = means[lost]
    for layer in model.layers[index:]:
        h = run_layer_f32(layer, h)
    np.testing.assert_allclose(run_f32(small, _x()), h, rtol=1e-5, atol=1e-5)


def test_removing_every_channel_or_the_logits_is_refused() -> None:
    model = _model()
    with pytest.raises(ValueError, match="cut the network"):
        remove_channels(model, {_group(model, "conv2d0"): np.arange(4)})
    with pytest.raises(ValueError, match="cannot lose channels"):
        remove_channels(model, {_group(model, "dense5"): [0]})


# --- byte accounting ------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.sampled_from([3, 9, 16, 64, 300, 700]), st.floats(0.0, 1.0), st.integers(0, 2**31))
def test_mask_bytes_bound_the_bytes_of_quantized_weights(rows, cols, density, seed) -> None:
    """Planning counts every kept weight; kept weights that quantize to 0 only make it smaller."""
    rng = np.random.default_rng(seed)
    mask = rng.random((rows, cols)) < density
    w = rng.normal(size=(rows, cols)) * (rng.random((rows, cols)) < 0.7)  # some kept weights are 0
    q, _ = quantize_weights(w * mask)
    assert packed_layer_bytes(q, rows) <= mask_bytes(mask)


def test_emitted_bytes_of_a_mask_plan_bound_the_final_weights(digits_capture) -> None:
    """Planning counts every kept weight as non-zero; quantized zeros can only make the model smaller."""
    from dataclasses import replace

    model, _ = digits_capture
    rng = np.random.default_rng(0)
    masks = {layer.name: rng.random(layer.weights.shape) < 0.3 for layer in model.layers if layer.weights is not None}
    planned = plan_bytes(model, masks)
    layers = []
    for layer in model.layers:
        if layer.weights is not None:  # a quarter of the kept weights become exact zeros
            layer = replace(layer, weights=layer.weights * (rng.random(layer.weights.shape) < 0.75),
                            mask=masks[layer.name])
        layers.append(layer)
    final = emitted(replace(model, layers=tuple(layers)))
    assert final.bytes == sum(final.layer_bytes.values()) <= planned
    assert set(final.formats) == set(masks)


def test_packed_layer_bytes_is_sparse_layer_bytes_in_the_smallest_format() -> None:
    from mcuprune.model.formats import layer_bytes
    from mcuprune.model.ops import FORMATS

    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, size=(8, 3, 3, 5)).astype(np.int8)
    w[rng.random(w.shape) < 0.85] = 0
    layer = QuantLayer("c", Op.CONV2D, (6, 6, 5), (6, 6, 8), QParams(1.0, 0), QParams(1.0, 0), weights=w,
                       bias=np.zeros(8, np.int32), multiplier=np.zeros(8, np.int32), shift=np.zeros(8, np.int32))
    assert packed_layer_bytes(w, 8) == min(layer_bytes(layer, fmt) for fmt in FORMATS)


# --- τ candidates ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_capture(digits_run):
    from mcuprune.train.training import load_float_model

    run_dir, ds = digits_run
    model, _ = load_float_model(run_dir)
    return model, capture_activations(model, to_float(ds.x_train[:400]), seed=0)


def test_larger_tau_prunes_more_and_the_front_trades_bytes_for_kl(digits_capture) -> None:
    model, caps = digits_capture
    for layer in (layer for layer in model.layers if layer.weights is not None):
        raw = layer_candidates(layer, caps[layer.name])
        taus = [c.tau for c in raw]
        assert taus == sorted(taus) and len(raw) >= len(SPARSITY_LEVELS) // 2
        assert np.all(np.diff([c.sparsity for c in raw]) >= 0)
        assert raw[0].tau == 0.0 and raw[0].kl == pytest.approx(0.0, abs=1e-12)
        assert raw[-1].kl > 0.05  # pruning 99.5 % of a layer changes its outputs
        front = layer_front(layer, caps[layer.name])
        assert np.all(np.diff([c.tau for c in front]) > 0)
        assert np.all(np.diff([c.sparsity for c in front]) >= 0)
        assert np.all(np.diff([c.kl for c in front]) >= 0)
        assert np.all(np.diff([c.bytes for c in front]) <= 0)


@pytest.mark.parametrize("budget", [3000, 4500, 6000, 9000])
def test_flash_plan_fits_as_the_code_generator_emits_it(digits_capture, budget) -> None:
    from mcuprune.compress.prune import _masks, _plan_flash

    model, caps = digits_capture
    fronts = {layer.name: layer_front(layer, caps[layer.name]) for layer in model.layers if layer.weights is not None}
    plan = _plan_flash(model, caps, fronts, budget)
    used = plan_bytes(model, _masks(model, caps, plan))
    assert used <= budget
    assert used >= 0.9 * budget  # the bisection uses the budget, not just any plan that fits
    with pytest.raises(UserError, match="smallest reachable model is"):
        _plan_flash(model, caps, fronts, 1000)


def test_pareto_drops_exactly_the_dominated_candidates() -> None:
    cands = [Candidate(0.0, 0.0, 100, 0.0), Candidate(1.0, 0.5, 60, 0.3), Candidate(2.0, 0.6, 70, 0.1),
             Candidate(3.0, 0.7, 50, 0.2), Candidate(4.0, 0.9, 20, 0.9)]
    assert [c.tau for c in pareto(cands)] == [0.0, 2.0, 3.0, 4.0]  # τ=1 is beaten by τ=3 on both counts


# --- budgets --------------------------------------------------------------------------------


@st.composite
def candidate_lists(draw):
    layers = {}
    for i in range(draw(st.integers(1, 3))):
        n = draw(st.integers(1, 4))
        byts = draw(st.lists(st.integers(1, 60), min_size=n, max_size=n))
        kls = draw(st.lists(st.floats(0.0, 5.0), min_size=n, max_size=n))
        layers[f"l{i}"] = [Candidate(float(j), 0.0, b, k) for j, (b, k) in enumerate(zip(byts, kls, strict=True))]
    return layers


@settings(max_examples=200, deadline=None)
@given(candidate_lists(), st.integers(1, 200))
def test_flash_budget_knapsack_is_optimal_and_honoured(cands, budget) -> None:
    combos = list(itertools.product(*cands.values()))
    feasible = [c for c in combos if sum(x.bytes for x in c) <= budget]
    if not feasible:
        with pytest.raises(UserError, match="unreachable"):
            choose_by_bytes(cands, budget)
        return
    chosen = choose_by_bytes(cands, budget)
    assert sum(c.bytes for c in chosen.values()) <= budget
    best = min(sum(x.kl for x in c) for c in feasible)
    assert sum(c.kl for c in chosen.values()) == pytest.approx(best, abs=1e-9)


def test_unreachable_flash_budget_names_the_smallest_size() -> None:
    cands = {"a": [Candidate(0.0, 0.0, 100, 0.0), Candidate(1.0, 0.9, 30, 1.0)],
             "b": [Candidate(0.0, 0.0, 50, 0.0), Candidate(1.0, 0.9, 12, 2.0)]}
    with pytest.raises(UserError, match=r"flash budget 41 B is unreachable: the smallest reachable model is 42 B"):
        choose_by_bytes(cands, 41)
    assert {n: c.tau for n, c in choose_by_bytes(cands, 42).items()} == {"a": 1.0, "b": 1.0}


def test_kl_budget_takes_the_largest_tau_within_eps_per_layer(digits_capture) -> None:
    model, caps = digits_capture
    fronts = {layer.name: layer_front(layer, caps[layer.name]) for layer in model.layers if layer.weights is not None}
    for eps in (1e-3, 0.05, 0.5):
        chosen = choose_by_kl(fronts, eps)
        for name, c in chosen.items():
            assert c.kl <= eps
            assert all(o.tau <= c.tau for o in fronts[name] if o.kl <= eps)
    loose, tight = choose_by_kl(fronts, 0.5), choose_by_kl(fronts, 1e-3)
    assert all(loose[n].sparsity >= tight[n].sparsity for n in fronts)


# --- baselines ------------------------------------------------------------------------------


def test_cubic_schedule_follows_zhu_and_gupta() -> None:
    s = [cubic_sparsity(t, 100, 0.0, 0.9) for t in range(0, 131)]
    assert s[0] == 0.0 and s[100] == pytest.approx(0.9) and s[130] == pytest.approx(0.9)
    assert s[50] == pytest.approx(0.9 - 0.9 / 8)  # s_f + (s_i - s_f)(1 - 1/2)^3
    assert np.all(np.diff(s) >= 0)


def test_global_magnitude_meets_the_budget_with_the_least_sparsity(digits_capture) -> None:
    model, _ = digits_capture
    masks = global_magnitude_masks(model, 0.8)
    kept = np.concatenate([np.abs(layer.weights)[masks[layer.name]] for layer in model.layers if layer.mask is None
                           and layer.weights is not None])
    pruned = np.concatenate([np.abs(layer.weights)[~masks[layer.name]] for layer in model.layers
                             if layer.weights is not None])
    assert kept.min() >= pruned.max()  # one global threshold across layers
    assert pruned.size / (pruned.size + kept.size) == pytest.approx(0.8, abs=1e-3)
    budget = 5000
    s = sparsity_for_budget(model, budget)
    assert plan_bytes(model, global_magnitude_masks(model, s)) <= budget
    assert plan_bytes(model, global_magnitude_masks(model, s - 2e-3)) > budget
    with pytest.raises(UserError, match="unreachable: the smallest reachable model is"):
        sparsity_for_budget(model, 100)


# --- arguments and errors -------------------------------------------------------------------


@pytest.mark.parametrize(("method", "flash", "kl", "epochs", "message"), [
    ("qsae", None, None, 1, "give a budget"),
    ("qsae", 1000, 0.1, 1, "not both"),
    ("qsae", None, 0.0, 1, "KL budget must be a finite number > 0"),
    ("qsae", None, -1.0, 1, "KL budget must be a finite number > 0"),
    ("qsae", None, float("nan"), 1, "KL budget must be a finite number > 0"),
    ("qsae", None, float("inf"), 1, "KL budget must be a finite number > 0"),
    ("qsae", 0, None, 1, "flash budget must be a whole number of bytes > 0"),
    ("qsae", 12.5, None, 1, "flash budget must be a whole number of bytes > 0"),
    ("magnitude", None, 0.1, 1, "needs method 'qsae'"),
    ("random", 1000, None, 1, "unknown pruning method 'random'"),
    ("qsae", 1000, None, -1, "fine-tune epochs must be a whole number >= 0"),
])
def test_bad_arguments_give_one_clear_line(method, flash, kl, epochs, message) -> None:
    with pytest.raises(UserError, match=message) as info:
        check_arguments(method, flash, kl, epochs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("method", ["qsae", "magnitude-oneshot"])
def test_unreachable_budget_from_prune_run(digits_run, tmp_path, method) -> None:
    run_dir, _ = digits_run
    with pytest.raises(UserError, match=r"flash budget 500 B is unreachable: the smallest reachable model is \d+ B"):
        prune_run(run_dir, method, 500, None, 0, tmp_path / "out", qsae_steps=200, evaluate_int8=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="new directory"):
        prune_run(run_dir, method, 5000, None, 0, run_dir)


# --- end to end -----------------------------------------------------------------------------


def _int8_acc(run_dir, ds) -> float:
    from mcuprune.compress.prune import int8_accuracy
    from mcuprune.train.training import load_float_model

    model, _ = load_float_model(run_dir)
    return int8_accuracy(model, ds)


def test_digits_qsae_prune_end_to_end(digits_run, tmp_path) -> None:
    from mcuprune.target.compile import quantize_run
    from mcuprune.train.training import load_run_model

    run_dir, ds = digits_run
    budget = 6000  # fp32 is 54,824 B, dense int8 about 15 KB
    report = prune_run(run_dir, "qsae", budget, None, 10, tmp_path / "p", qsae_steps=400)
    meta = json.loads((tmp_path / "p" / "run.json").read_text())
    assert meta["pruning"]["model_bytes"] == report["model_bytes"] <= budget
    assert report["model_bytes"] == sum(layer["bytes"] for layer in report["layers"])
    assert report["ratio_vs_fp32"] == pytest.approx(report["fp32_bytes"] / report["model_bytes"], rel=1e-3)
    assert report["fp32_bytes"] == 4 * 13706 == 4 * meta["fp32_params"]  # the model the user started from
    assert {"name", "sparsity", "format", "bytes", "tau", "kl", "weight_bits"} <= set(report["layers"][0])
    pruned, _ = load_run_model(tmp_path / "p")  # the pruned run loads with its masks
    assert all(layer.mask is not None for layer in pruned.layers if layer.weights is not None)
    removed = sum(len(s["removed"]) for s in report["structured"])
    original, _ = load_run_model(run_dir)
    assert (fp32_params(pruned) < fp32_params(original)) == (removed > 0)
    qmodel = quantize_run(tmp_path / "p")  # what `mcuprune compile` does with it
    from mcuprune.model.formats import layer_bytes

    for qlayer in (layer for layer in qmodel.layers if layer.has_weights):
        row = next(r for r in report["layers"] if r["name"] == qlayer.name)
        assert layer_bytes(qlayer, row["format"]) == row["bytes"]
        assert packed_layer_bytes(qlayer.weights, qlayer.out_channels) == row["smallest_bytes"] <= row["bytes"]
    assert report["within_flash_budget"]
    assert report["int8_reference_accuracy"] >= _int8_acc(run_dir, ds) - 0.03
    assert (tmp_path / "p" / "qsae.npz").exists()
    from mcuprune.codegen.emit import generate_model_sources

    gen = generate_model_sources(qmodel, "dsp", tmp_path / "src", source="test", objective="smallest")
    assert report["model_bytes"] == gen.param_bytes  # the report counts what the generator emits
    assert gen.formats == {r["name"]: r["format"] for r in report["layers"]}


def test_digits_kl_budget_holds_per_layer(digits_run, tmp_path) -> None:
    run_dir, _ = digits_run
    report = prune_run(run_dir, "qsae", None, 0.05, 0, tmp_path / "k", structured=False, evaluate_int8=False)
    assert all(layer["kl"] <= 0.05 for layer in report["layers"])
    assert report["kl_budget"] == 0.05 and report["flash_budget"] is None


@pytest.mark.parametrize("method", ["magnitude", "magnitude-oneshot"])
def test_digits_magnitude_baselines_honour_the_budget(digits_run, tmp_path, method) -> None:
    run_dir, ds = digits_run
    report = prune_run(run_dir, method, 6000, None, 10, tmp_path / method)
    assert report["model_bytes"] <= 6000
    assert report["int8_reference_accuracy"] >= _int8_acc(run_dir, ds) - 0.05
    assert len({layer["tau"] for layer in report["layers"]}) == 1  # one global threshold


@pytest.mark.qemu
@pytest.mark.slow
def test_sweep_compiles_and_evaluates_every_point(digits_run, tmp_path) -> None:
    import shutil

    from mcuprune.compress.prune import pruned_widths
    from mcuprune.compress.sweep import sweep_run
    from mcuprune.device.evaluate import CompileAndEvaluate

    if shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None:
        pytest.skip("needs the ARM toolchain and QEMU")
    run_dir, _ = digits_run
    rows = sweep_run(run_dir, [7000, 300], ["magnitude-oneshot", "qsae"], tmp_path, CompileAndEvaluate(limit=60),
                     finetune_epochs=2, qsae_steps=200, weights=("int8", "mixed"))
    assert [(r["method"], r["weights"]) for r in rows] == [("unpruned", "int8")] + 2 * [
        ("qsae", "int8"), ("magnitude-oneshot", "int8"), ("qsae", "mixed"), ("magnitude-oneshot", "mixed")]
    for r in rows[1:5]:
        work = f"{r['method']}-7000" if r["weights"] == "int8" else f"{r['method']}-mixed-7000"
        fw = json.loads((tmp_path / work / "fw" / "firmware.json").read_text())
        assert r["model_flash_bytes"] == fw["model_flash_bytes"] <= 7000 < rows[0]["model_flash_bytes"]
        assert r["mismatches"] == 0 and r["samples"] == 60
    # the mixed baseline is pruned at the widths the QSAE plan picked at the same budget
    qsae_widths = pruned_widths(tmp_path / "qsae-mixed-7000" / "run")
    assert pruned_widths(tmp_path / "magnitude-oneshot-mixed-7000" / "run") == qsae_widths
    assert 4 in qsae_widths.values()
    assert all("unreachable" in r["error"] for r in rows[5:7])
    assert all("no QSAE run" in r["error"] for r in rows[8:])  # the QSAE run at 300 B failed: no widths to take
    assert (tmp_path / "sweep.png").stat().st_size > 1000
    table = (tmp_path / "sweep.md").read_text()
    assert table.count("\n") == 2 + len(rows) and "unreachable" in table
    assert json.loads((tmp_path / "sweep.json").read_text())["rows"] == rows


def test_block_importance_sums_each_row_in_blocks_padded_with_zeros() -> None:
    from mcuprune.compress.importance import block_importance

    imp = np.arange(2 * 6, dtype=np.float64).reshape(2, 6)
    np.testing.assert_array_equal(block_importance(imp, 4), [[0 + 1 + 2 + 3, 4 + 5], [6 + 7 + 8 + 9, 10 + 11]])


@pytest.mark.qemu
def test_block_masks_prune_whole_blocks_and_run_in_the_block4_kernels(digits_run, tmp_path: Path) -> None:
    """prune --block 4: every 1x4 block of every weight row is kept or pruned whole; compile's default
    picks the block4 kernels, which run bit-exact and within the cost model's error of the prediction."""
    from mcuprune.device.evaluate import evaluate_firmware
    from mcuprune.target.compile import compile_run

    run_dir, _ = digits_run
    report = prune_run(run_dir, "qsae", 6000, None, 2, tmp_path / "p", qsae_steps=200, block=4)
    assert report["block"] == 4 and report["model_bytes"] <= 6000
    model, _ = load_run_model(tmp_path / "p")
    for layer in model.layers:
        if layer.mask is None:
            continue
        rows = layer.mask.reshape(layer.mask.shape[0], -1)
        whole = rows[:, : rows.shape[1] // 4 * 4].reshape(rows.shape[0], -1, 4)
        assert np.all(whole.all(axis=2) | ~whole.any(axis=2)), layer.name
    compile_run(tmp_path / "p", "mps2-an386", tmp_path / "fw")
    fw = json.loads((tmp_path / "fw" / "firmware.json").read_text())
    assert "block4" in fw["formats"].values() and fw["param_bytes"] <= 6000
    result = evaluate_firmware(tmp_path / "fw", limit=60, progress=False, transport="semihosting")
    assert result.mismatches == 0
    assert abs(result.instructions_per_inference - report["predicted_instructions"]) <= 0.15 * report[
        "predicted_instructions"]


def test_block_masks_need_qsae_and_a_known_block() -> None:
    with pytest.raises(UserError, match="unknown block size 3"):
        check_arguments("qsae", 5000, None, 1, block=3)
    with pytest.raises(UserError, match="block-structured masks need method 'qsae'"):
        check_arguments("magnitude", 5000, None, 1, block=4)
