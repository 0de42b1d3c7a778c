"""Pruning graphs: channel groups across residual adds and depthwise layers, the IR as a trainable
module, and prune_run on an MLPerf-shaped network (ResNet-8 and DS-CNN on digits)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mcuprune.compress.prune import prune_run
from mcuprune.compress.structured import channel_groups, dead_channels, remove_channels
from mcuprune.frontend.torch_export import import_module
from mcuprune.model.interpreter import run_f32
from mcuprune.model.ir import Op, verify
from mcuprune.train.archs import build_arch
from mcuprune.train.datasets import load_digits, to_float
from mcuprune.train.ir_module import IRModule, with_masks
from mcuprune.train.runs import read_run_meta
from mcuprune.train.training import load_run_model, train_run


def _imported(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    net = build_arch(arch, (28, 28, 1), 10)
    for module in net.modules():  # batch-norm statistics that are not the identity, so folding matters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return net, import_module(net, torch.zeros(1, 1, 28, 28), arch)


def _inputs(n: int = 6) -> np.ndarray:
    return np.random.default_rng(1).random((n, 28, 28, 1)).astype(np.float32)


@pytest.mark.parametrize("arch", ["resnet8", "dscnn"])
def test_ir_module_computes_the_ir_model(arch: str) -> None:
    net, model = _imported(arch)
    x = _inputs()
    got = IRModule(model)(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy()
    np.testing.assert_allclose(got, run_f32(model, x), rtol=1e-5, atol=1e-5)


def test_ir_module_keeps_masked_weights_zero_and_writes_back() -> None:
    _, model = _imported("resnet8")
    rng = np.random.default_rng(0)
    masks = {layer.name: rng.random(layer.weights.shape) > 0.5 for layer in model.layers if layer.op is Op.CONV2D}
    module = IRModule(with_masks(model, masks))
    with torch.no_grad():
        for p in module.weights.values():
            p.add_(1.0)  # what an optimizer step might do to a masked weight
    module.apply_masks()
    back = module.to_float_model()
    for layer in back.layers:
        if layer.name in masks:
            assert not layer.weights[~masks[layer.name]].any()


def test_channel_groups_follow_residual_adds_and_depthwise_layers() -> None:
    _, resnet = _imported("resnet8")
    groups = {g.tensors[0]: g for g in channel_groups(resnet)}
    # the stem's channels run through stage 1's identity shortcut: one group with stage 1's second conv
    assert set(groups["conv1"].writers) == {"conv1", "stage1_conv2"} and groups["conv1"].removable
    assert set(groups["stage2_conv2"].writers) == {"stage2_conv2", "stage2_shortcut"}
    assert not groups["fc"].removable  # the model's output
    _, dscnn = _imported("dscnn")
    groups = {g.tensors[0]: g for g in channel_groups(dscnn)}
    assert groups["conv1"].tensors == ("conv1", "blocks_0_depthwise")  # a depthwise layer keeps channel c


@pytest.mark.parametrize("arch", ["resnet8", "dscnn"])
def test_removing_dead_channels_is_exact_and_shrinks_every_layer_they_touch(arch: str) -> None:
    _, model = _imported(arch)
    groups = channel_groups(model)
    writers = {w: np.array([1, 4]) for g in groups if g.removable for w in g.writers}
    layers = []
    for layer in model.layers:  # zero channels 1 and 4 of every removable group: they are dead
        if layer.name in writers:
            w, b = layer.weights.copy(), layer.bias.copy()
            w[writers[layer.name]], b[writers[layer.name]] = 0, 0
            layer = replace(layer, weights=w, bias=b)
        layers.append(layer)
    zeroed = replace(model, layers=tuple(layers))
    dead = dead_channels(zeroed)
    assert {i for i, g in enumerate(groups) if g.removable} == set(dead)
    shrunk = remove_channels(zeroed, dead)
    verify(shrunk)
    x = _inputs()
    np.testing.assert_allclose(run_f32(shrunk, x), run_f32(zeroed, x), rtol=1e-5, atol=1e-5)
    before = sum(layer.weights.size for layer in zeroed.layers if layer.weights is not None)
    after = sum(layer.weights.size for layer in shrunk.layers if layer.weights is not None)
    assert after < before


def test_output_channels_cannot_be_removed() -> None:
    _, model = _imported("resnet8")
    index = next(i for i, g in enumerate(channel_groups(model)) if g.tensors[0] == "fc")
    with pytest.raises(ValueError, match="cannot lose channels"):
        remove_channels(model, {index: np.array([0])})


@pytest.mark.slow
def test_prune_run_on_resnet8_meets_the_flash_budget(tmp_path: Path) -> None:
    """train --arch resnet8 on digits (PyTorch module -> importer), then QSAE pruning under a flash budget:
    a float run of the pruned graph that the compile stage quantizes."""
    ds = load_digits()
    train_run(ds, "digits", "resnet8", 10, tmp_path / "run", seed=0)
    report = prune_run(tmp_path / "run", "qsae", 24_000, None, 6, tmp_path / "pruned", qsae_steps=200)
    assert report["within_flash_budget"] and report["model_bytes"] <= 24_000 < report["fp32_bytes"] / 10
    assert read_run_meta(tmp_path / "pruned")["kind"] == "float"
    model, _ = load_run_model(tmp_path / "pruned")
    assert any(layer.mask is not None for layer in model.layers)
    accuracy = float((run_f32(model, to_float(ds.x_test)).argmax(1) == ds.y_test).mean())
    assert accuracy == pytest.approx(report["float_test_accuracy"])
    assert accuracy > report["source_float_test_accuracy"] - 0.1  # 12x smaller, 6 fine-tune epochs of 12 steps
    assert report["int8_reference_accuracy"] > accuracy - 0.05


def test_training_the_module_leaves_the_float_model_alone() -> None:
    """The IRModule owns copies: a teacher built from the same FloatModel must not learn along."""
    _, model = _imported("dscnn")
    before = {layer.name: layer.weights.copy() for layer in model.layers if layer.weights is not None}
    module = IRModule(model)
    with torch.no_grad():
        for p in module.weights.values():
            p.add_(1.0)
    for layer in model.layers:
        if layer.weights is not None:
            np.testing.assert_array_equal(layer.weights, before[layer.name])
