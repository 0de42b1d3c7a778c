"""Activation capture: what every conv/dense layer sees and produces on calibration data.

For each conv/dense layer of a FloatModel (HWC layout, see ir.py; depthwise layers are not
matrices over a shared input, so they are pruned only structurally) the capture holds

* ``inputs``  (rows, fan_in): the layer's input vectors — the flattened input of a dense layer,
  or im2col patches ([k_h][k_w][c_in] order, zero padding) of a conv layer at sampled output
  positions;
* ``outputs`` (rows, C_out): the layer's output (after its fused ReLU) for exactly those rows, so
  ``outputs == act(inputs @ W.T + b)``; for a conv these are per-pixel channel vectors;
* ``input_norms`` (fan_in,): ‖x_j‖₂ of every input feature over *all* positions of *all*
  calibration images (streamed, not sampled) — the activation statistic of the importance
  |w_ij|·‖x_j‖₂;
* ``input_means`` (fan_in,): the mean of every input feature over the same data.

Memory is bounded: images are processed in batches, a conv layer keeps ``positions`` random
output pixels per image (seeded), and each layer keeps at most ``max_rows`` rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mcuprune.model.interpreter import run_layer_f32, trace_f32
from mcuprune.model.ir import INPUT, FloatLayer, FloatModel, Op

DEFAULT_POSITIONS = 8
DEFAULT_MAX_ROWS = 16384
BATCH = 256


@dataclass(frozen=True, eq=False)
class LayerCapture:
    name: str
    op: Op
    inputs: np.ndarray  # float32 (rows, fan_in)
    outputs: np.ndarray  # float32 (rows, C_out), after the fused activation
    input_norms: np.ndarray  # float64 (fan_in,)
    input_means: np.ndarray  # float64 (fan_in,)
    positions: int  # input vectors the statistics were taken over (images x output pixels)
    relu: bool  # the layer's fused ReLU (its outputs have a zero spike)


def masked_weights(layer: FloatLayer) -> np.ndarray:
    return layer.weights if layer.mask is None else layer.weights * layer.mask


def weight_matrix(layer: FloatLayer) -> np.ndarray:
    """The layer's (masked) weights as the (C_out, fan_in) matrix that multiplies input rows."""
    w = masked_weights(layer)
    return w.reshape(w.shape[0], -1)


CAPTURED_OPS = (Op.CONV2D, Op.DENSE)


def conv_patches(x: np.ndarray, layer: FloatLayer) -> np.ndarray:
    """(N, H, W, C) -> (N, OH, OW, k_h * k_w * C) patches in [kh][kw][c] order, zero padding, with the
    layer's strides, padding and dilation."""
    n, _, _, c = x.shape
    _, k_h, k_w, _ = layer.weights.shape
    (oh, ow, _), (sh, sw), (dh, dw) = layer.out_shape, layer.stride, layer.dilation
    top, bottom, left, right = layer.padding
    xp = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    cols = np.empty((n, oh, ow, k_h, k_w, c), dtype=x.dtype)
    rows, columns = sh * (oh - 1) + 1, sw * (ow - 1) + 1  # input extent one tap covers
    for i in range(k_h):
        for j in range(k_w):
            cols[:, :, :, i, j, :] = xp[:, i * dh : i * dh + rows : sh, j * dw : j * dw + columns : sw]
    return cols.reshape(n, oh, ow, k_h * k_w * c)


def layer_rows(x: np.ndarray, layer: FloatLayer) -> np.ndarray:
    """Input vectors of a weighted layer: (N, fan_in) for dense, (N, OH, OW, fan_in) for conv."""
    if layer.op is Op.DENSE:
        return x.reshape(x.shape[0], -1)
    return conv_patches(x, layer)


def apply_rows(rows: np.ndarray, weights2d: np.ndarray, bias: np.ndarray, clamp: tuple[float, float]) -> np.ndarray:
    """clamp(rows @ W.T + b): a layer's output for input vectors (float32)."""
    y = rows @ weights2d.T.astype(np.float32) + bias.astype(np.float32)
    return np.clip(y, *clamp) if np.isfinite(clamp).any() else y


class _Accumulator:
    def __init__(self, layer: FloatLayer, max_rows: int) -> None:
        self.layer = layer
        self.max_rows = max_rows
        self.inputs: list[np.ndarray] = []
        self.outputs: list[np.ndarray] = []
        self.kept = 0
        fan_in = int(np.prod(layer.weights.shape[1:]))
        self.sq_sum = np.zeros(fan_in)
        self.sum = np.zeros(fan_in)
        self.count = 0

    def add(self, rows: np.ndarray, out: np.ndarray, pick: np.ndarray | None) -> None:
        """rows/out: (N, fan_in)/(N, C) or (N, OH, OW, ...); pick: (N, P) flat pixel indices for conv."""
        flat = rows.reshape(-1, rows.shape[-1]).astype(np.float64)
        self.sq_sum += np.einsum("ij,ij->j", flat, flat)
        self.sum += flat.sum(axis=0)
        self.count += flat.shape[0]
        if self.kept >= self.max_rows:
            return
        if pick is None:
            r, o = rows.reshape(rows.shape[0], -1), out.reshape(out.shape[0], -1)
        else:
            n = rows.shape[0]
            r = rows.reshape(n, -1, rows.shape[-1])[np.arange(n)[:, None], pick].reshape(-1, rows.shape[-1])
            o = out.reshape(n, -1, out.shape[-1])[np.arange(n)[:, None], pick].reshape(-1, out.shape[-1])
        take = min(len(r), self.max_rows - self.kept)
        self.inputs.append(r[:take].astype(np.float32))
        self.outputs.append(o[:take].astype(np.float32))
        self.kept += take

    def result(self) -> LayerCapture:
        return LayerCapture(
            name=self.layer.name, op=self.layer.op,
            inputs=np.concatenate(self.inputs), outputs=np.concatenate(self.outputs),
            input_norms=np.sqrt(self.sq_sum), input_means=self.sum / max(self.count, 1), positions=self.count,
            relu=self.layer.relu,
        )


def capture_activations(model: FloatModel, x_float: np.ndarray, positions: int = DEFAULT_POSITIONS,
                        max_rows: int = DEFAULT_MAX_ROWS, seed: int = 0) -> dict[str, LayerCapture]:
    """Inputs/outputs of every conv/dense layer on float inputs (N, *input_shape), keyed by layer name."""
    rng = np.random.default_rng(seed)
    accs = {layer.name: _Accumulator(layer, max_rows) for layer in model.layers if layer.op in CAPTURED_OPS}
    for start in range(0, len(x_float), BATCH):
        tensors = {INPUT: np.asarray(x_float[start : start + BATCH], dtype=np.float32)}
        for layer in model.layers:
            ins = [tensors[name] for name in layer.inputs]
            if layer.op not in CAPTURED_OPS:
                tensors[layer.name] = run_layer_f32(layer, *ins).astype(np.float32)
                continue
            x = ins[0]
            rows = layer_rows(x, layer)
            out = apply_rows(rows, weight_matrix(layer), layer.bias, layer.clamp)
            pick = None
            if layer.op is Op.CONV2D:
                pixels = out.shape[1] * out.shape[2]
                p = min(positions, pixels)
                pick = np.argsort(rng.random((len(x), pixels)), axis=1)[:, :p]
            accs[layer.name].add(rows, out, pick)
            tensors[layer.name] = out.astype(np.float32)
    return {name: acc.result() for name, acc in accs.items()}


def tensor_rows(model: FloatModel, x_float: np.ndarray, names: list[str], positions: int = DEFAULT_POSITIONS,
                max_rows: int = DEFAULT_MAX_ROWS, seed: int = 0) -> dict[str, np.ndarray]:
    """Channel vectors (rows, C) of the named tensors on float inputs: `positions` random pixels per
    image of a feature map (seeded), the whole vector of a flat tensor; at most `max_rows` rows each."""
    rng = np.random.default_rng(seed)
    rows: dict[str, list[np.ndarray]] = {name: [] for name in names}
    kept = dict.fromkeys(names, 0)
    for start in range(0, len(x_float), BATCH):
        trace = trace_f32(model, np.asarray(x_float[start : start + BATCH], dtype=np.float32))
        for name in names:
            t = trace[name]
            if kept[name] >= max_rows:
                continue
            if t.ndim == 4:
                n, h, w, c = t.shape
                pick = np.argsort(rng.random((n, h * w)), axis=1)[:, : min(positions, h * w)]
                r = t.reshape(n, h * w, c)[np.arange(n)[:, None], pick].reshape(-1, c)
            else:
                r = t.reshape(len(t), -1)
            r = r[: max_rows - kept[name]]
            rows[name].append(r.astype(np.float32))
            kept[name] += len(r)
    return {name: np.concatenate(parts) for name, parts in rows.items()}


def dense_input_means(model: FloatModel, caps: dict[str, LayerCapture]) -> dict[str, np.ndarray]:
    """Mean input of every dense layer (flattened H, W, C), for folding removed columns into biases
    (structured.remove_channels)."""
    return {layer.name: caps[layer.name].input_means for layer in model.layers
            if layer.op is Op.DENSE and layer.name in caps}
