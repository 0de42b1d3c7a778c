"""Quantization and the numpy interpreters against PyTorch and independent loops."""

from __future__ import annotations

import numpy as np
import pytest

from mcuprune.model.arena import plan_arena
from mcuprune.model.fixedpoint import quantize_multipliers
from mcuprune.model.interpreter import run_f32, run_s8
from mcuprune.model.ir import INPUT, FloatLayer, FloatModel, Op, QParams, QuantLayer, shape_product, verify
from mcuprune.model.reference import conv2d_s8
from mcuprune.quantize import activation_qparams, quantize_image_model, quantize_weights
from mcuprune.train.datasets import to_float, to_int8


def test_numpy_float_forward_equals_torch(digits_run) -> None:
    from mcuprune.train.training import load_float_model, load_torch_model, torch_predict_logits

    run_dir, ds = digits_run
    net, _, _ = load_torch_model(run_dir)
    model, _ = load_float_model(run_dir)
    torch_logits = torch_predict_logits(net, ds.x_test)
    assert np.allclose(run_f32(model, to_float(ds.x_test)), torch_logits, atol=1e-4)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_int8_reference_agrees_with_torch_float(arch: str, tmp_path) -> None:
    from mcuprune.train.datasets import load_digits
    from mcuprune.train.training import load_float_model, load_torch_model, torch_predict_logits, train_run

    ds = load_digits()
    train_run(ds, "digits", arch, epochs=40, out=tmp_path, seed=1)
    net, _, _ = load_torch_model(tmp_path)
    model, _ = load_float_model(tmp_path)
    qmodel = quantize_image_model(model, ds.x_train)
    torch_pred = torch_predict_logits(net, ds.x_test).argmax(1)
    int8_pred = run_s8(qmodel, to_int8(ds.x_test)).argmax(1)
    agreement = (torch_pred == int8_pred).mean()
    assert agreement >= 0.97, agreement
    assert abs((torch_pred == ds.y_test).mean() - (int8_pred == ds.y_test).mean()) <= 0.015


def test_weights_per_channel_symmetric() -> None:
    w = np.array([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [2.0, 1.0, -0.5]], dtype=np.float32)
    q, scales = quantize_weights(w)
    assert q.dtype == np.int8 and np.abs(q).max() == 127
    assert q[0].tolist() == [64, -127, 32] and q[1].tolist() == [0, 0, 0]
    assert np.allclose(scales[[0, 2]], [1.0 / 127, 2.0 / 127])


@pytest.mark.parametrize("lo, hi", [(0.0, 6.0), (-1.0, 3.0), (-2.0, -0.5), (0.5, 4.0)])
def test_activation_range_contains_exact_zero(lo: float, hi: float) -> None:
    q = activation_qparams(lo, hi)
    assert -128 <= q.zero_point <= 127
    assert q.scale * (-128 - q.zero_point) <= min(lo, 0.0) + q.scale
    assert q.scale * (127 - q.zero_point) >= max(hi, 0.0) - q.scale
    if lo == 0.0:
        assert q.zero_point == -128  # ReLU outputs use the whole int8 range


def naive_conv(x: np.ndarray, layer: QuantLayer) -> np.ndarray:
    """Independent oracle: four nested loops over one image."""
    c_out, k_h, k_w, c_in = layer.weights.shape
    h, w, _ = x.shape
    oh, ow, _ = layer.out_shape
    out = np.zeros(layer.out_shape, dtype=np.int64)
    for oy in range(oh):
        for ox in range(ow):
            for co in range(c_out):
                acc = int(layer.bias[co])
                for ky in range(k_h):
                    for kx in range(k_w):
                        iy = oy * layer.stride[0] - layer.padding[0] + ky
                        ix = ox * layer.stride[1] - layer.padding[2] + kx
                        if 0 <= iy < h and 0 <= ix < w:
                            for ci in range(c_in):
                                pixel = int(x[iy, ix, ci]) - layer.input_q.zero_point
                                acc += pixel * int(layer.weights[co, ky, kx, ci])
                out[oy, ox, co] = acc
    return out


@pytest.mark.parametrize("stride, pad", [(1, 1), (2, 0), (2, 1)])
def test_conv_reference_matches_loops(stride: int, pad: int) -> None:
    from mcuprune.model.fixedpoint import requantize_s8

    rng = np.random.default_rng(stride * 10 + pad)
    h, w, c_in, c_out = 7, 6, 3, 5
    oh, ow = (h + 2 * pad - 3) // stride + 1, (w + 2 * pad - 3) // stride + 1
    mult, shift = quantize_multipliers(rng.uniform(0.001, 0.01, c_out))
    layer = QuantLayer("c", Op.CONV2D, (h, w, c_in), (oh, ow, c_out), QParams(0.1, 7), QParams(0.2, -3),
                       weights=rng.integers(-127, 128, (c_out, 3, 3, c_in)).astype(np.int8),
                       bias=rng.integers(-5000, 5000, c_out).astype(np.int32), multiplier=mult, shift=shift,
                       act_min=-3, stride=(stride, stride), padding=(pad, pad, pad, pad))
    x = rng.integers(-128, 128, (1, h, w, c_in)).astype(np.int8)
    expected = requantize_s8(naive_conv(x[0], layer), mult, shift, -3, layer.act_min, 127)
    assert (conv2d_s8(x, layer)[0] == expected).all()


def _random_graph(rng: np.random.Generator) -> FloatModel:
    """A random chain of dense layers with residual adds and reshapes: tensors of many sizes and lifetimes."""
    layers: list[FloatLayer] = []
    names, width = [INPUT], int(rng.integers(4, 64))
    for i in range(int(rng.integers(2, 12))):
        previous = names[-1]
        kind = rng.integers(0, 4)
        if kind == 0 and i > 1:  # a residual add of the last tensor and an earlier one of the same width
            same = [n for n, layer in zip(names[1:], layers, strict=True) if layer.out_shape == (width,)][:-1]
            if same:
                layers.append(FloatLayer(f"add{i}", Op.ADD, (width,), (width,), inputs=(previous, same[0])))
                names.append(f"add{i}")
                continue
        if kind == 1:
            layers.append(FloatLayer(f"reshape{i}", Op.RESHAPE, (width,), (width, 1, 1), inputs=(previous,)))
            layers.append(FloatLayer(f"flat{i}", Op.RESHAPE, (width, 1, 1), (width,), inputs=(f"reshape{i}",)))
            names += [f"reshape{i}", f"flat{i}"]
            continue
        out = int(rng.integers(4, 64)) if kind == 2 else width
        layers.append(FloatLayer(f"dense{i}", Op.DENSE, (width,), (out,), np.ones((out, width), np.float32),
                                 np.zeros(out, np.float32), inputs=(previous,)))
        names.append(f"dense{i}")
        width = out
    return FloatModel("g", (layers[0].in_shape[0],), width, tuple(layers))


def test_arena_never_overlaps_live_tensors() -> None:
    """Every two tensors live at the same layer get disjoint bytes; reshapes share their input's bytes."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        model = _random_graph(rng)
        verify(model)
        plan = plan_arena(model)
        for name, (first, last) in plan.lifetimes.items():
            size = shape_product(next(layer.out_shape for layer in model.layers if layer.name == name))
            off = plan.offsets[name]
            assert off % 4 == 0 and off + size <= plan.size
            for other, (o_first, o_last) in plan.lifetimes.items():
                if other != name and first <= o_last and o_first <= last:
                    o_off = plan.offsets[other]
                    o_size = shape_product(next(layer.out_shape for layer in model.layers if layer.name == other))
                    assert off >= o_off + o_size or o_off >= off + size, (name, other)
        for layer in model.layers[:-1]:
            if layer.op is Op.RESHAPE:
                assert plan.storage[layer.name] == plan.storage[layer.inputs[0]]
            for name in layer.inputs:  # a reader runs inside its input's lifetime
                owner = plan.storage[name]
                if owner in plan.lifetimes:
                    first, last = plan.lifetimes[owner]
                    assert first <= model.layers.index(layer) <= last


def test_arena_of_a_chain_is_two_tensors() -> None:
    """In a chain two tensors are live at a time, so the plan needs max(size[i] + size[i+1]) bytes."""
    sizes = [12544, 3136, 6272, 1568, 64, 10]
    layers, width = [], 16
    for i, size in enumerate(sizes):
        layers.append(FloatLayer(f"d{i}", Op.DENSE, (width,), (size,), np.ones((size, width), np.float32),
                                 np.zeros(size, np.float32)))
        width = size
    plan = plan_arena(FloatModel("chain", (16,), sizes[-1], tuple(layers)))
    assert plan.size == max(a + b for a, b in zip(sizes[:-2], sizes[1:-1], strict=True))


def test_pruning_masks_survive_save_and_follow_the_hwc_layout(digits_run, tmp_path) -> None:
    import torch

    from mcuprune.train.training import _weight_modules, load_float_model, load_torch_model, save_run

    run_dir, _ = digits_run
    net, meta, _ = load_torch_model(run_dir)
    rng = np.random.default_rng(0)
    masks = []
    with torch.no_grad():
        for module in _weight_modules(net):
            mask = rng.random(tuple(module.weight.shape)) > 0.6
            module.weight.mul_(torch.from_numpy(mask).float())
            masks.append(mask)
    save_run(tmp_path, net, meta, masks)
    model, _ = load_float_model(tmp_path)
    weighted = [layer for layer in model.layers if layer.weights is not None]
    for layer, mask in zip(weighted, masks, strict=True):
        assert layer.mask.shape == layer.weights.shape and layer.mask.sum() == mask.sum()
        assert (layer.weights[~layer.mask] == 0).all()  # the mask moved together with the weights
