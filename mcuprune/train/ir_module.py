"""A float IR model as a trainable PyTorch module, and back.

Pruning fine-tunes networks of any shape: mcuprune's own, the MLPerf-shaped ones and users' imported
models. Rather than keep a hand-written torch module per architecture in step with the IR, this
module runs the IR graph itself with torch ops: every conv, depthwise and dense layer's weights and
bias are parameters (batch norm is already folded into them by the importer), the pruning masks
are fixed buffers applied in the forward pass, and ``to_float_model`` writes the trained weights
back into the IR. Feature maps flow as NCHW, flat tensors as (N, F); a dense layer after a map reads
it flattened H, W, C (the IR's order), so its weights keep the IR layout.

The forward pass equals ``interpreter.run_f32`` on the same model (tests/test_ir_module.py).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mcuprune.model.ir import INPUT, WEIGHTED_OPS, FloatLayer, FloatModel, Op


def _to_torch_layout(layer: FloatLayer, array: np.ndarray) -> np.ndarray:
    """IR weight layout -> torch's: conv [o,kh,kw,i] and depthwise [c*m,kh,kw,1] -> [o,i,kh,kw]; dense as is."""
    return array.transpose(0, 3, 1, 2) if layer.op is not Op.DENSE else array


def _to_ir_layout(layer: FloatLayer, array: np.ndarray) -> np.ndarray:
    return array.transpose(0, 2, 3, 1) if layer.op is not Op.DENSE else array


def _clamp(y: torch.Tensor, clamp: tuple[float, float]) -> torch.Tensor:
    lo, hi = clamp
    if lo == -math.inf and hi == math.inf:
        return y
    return torch.clamp(y, min=None if lo == -math.inf else lo, max=None if hi == math.inf else hi)


def _pad(x: torch.Tensor, padding: tuple[int, int, int, int], value: float = 0.0) -> torch.Tensor:
    top, bottom, left, right = padding
    return F.pad(x, (left, right, top, bottom), value=value) if any(padding) else x


def _hwc_flat(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H*W*C) in the IR's order; (N, F) stays."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1) if x.dim() == 4 else x


def fake_quantize(w: torch.Tensor, bits: int) -> torch.Tensor:
    """`w` rounded to the grid quantize.quantize_weights puts it on (per output channel, symmetric,
    [-(2^(bits-1) - 1), 2^(bits-1) - 1]), with a straight-through gradient: the forward pass sees the
    integer weights the device will hold, the backward pass updates the float weights as if
    rounding were the identity."""
    top = (1 << (bits - 1)) - 1
    max_abs = w.detach().abs().reshape(w.shape[0], -1).amax(dim=1)
    scale = torch.where(max_abs > 0, max_abs / top, torch.ones_like(max_abs)).reshape(-1, *[1] * (w.dim() - 1))
    q = torch.clamp(torch.round(w / scale), -top, top) * scale
    return w + (q - w).detach()


class IRModule(nn.Module):
    """A trainable module that computes the float IR model `model` (input NCHW, or (N, F)).

    quantization_aware: layers whose weights become narrower than int8 (weight_bits 4) see their
    weights fake-quantized in the forward pass (fake_quantize), so fine-tuning learns weights that
    survive the rounding; int8 weights lose too little to need it."""

    def __init__(self, model: FloatModel, quantization_aware: bool = False) -> None:
        super().__init__()
        self.model = model
        self.fake_bits = {layer.name: layer.weight_bits for layer in model.layers
                          if quantization_aware and layer.op in WEIGHTED_OPS and layer.weight_bits < 8}
        self.weights = nn.ParameterDict()
        self.biases = nn.ParameterDict()
        self.masks: dict[str, torch.Tensor] = {}
        for layer in model.layers:
            if layer.op in WEIGHTED_OPS:
                w = _to_torch_layout(layer, np.asarray(layer.weights, dtype=np.float32))
                # copies: training must not write into the FloatModel's arrays (torch.from_numpy would
                # share their memory, and a teacher built from the same model would learn along)
                self.weights[layer.name] = nn.Parameter(torch.tensor(w, dtype=torch.float32))
                self.biases[layer.name] = nn.Parameter(torch.tensor(layer.bias, dtype=torch.float32))
                if layer.mask is not None:
                    mask = _to_torch_layout(layer, np.asarray(layer.mask, dtype=bool))
                    self.masks[layer.name] = torch.from_numpy(np.ascontiguousarray(mask)).float()

    def weight(self, name: str) -> torch.Tensor:
        w = self.weights[name]
        return w * self.masks[name] if name in self.masks else w

    def forward_weight(self, name: str) -> torch.Tensor:
        w = self.weight(name)
        return fake_quantize(w, self.fake_bits[name]) if name in self.fake_bits else w

    def set_masks(self, masks: dict[str, np.ndarray]) -> None:
        """Replace these layers' masks (IR layout) and zero what they prune."""
        by_name = {layer.name: layer for layer in self.model.layers}
        for name, mask in masks.items():
            torch_mask = _to_torch_layout(by_name[name], np.asarray(mask, dtype=bool))
            self.masks[name] = torch.from_numpy(np.ascontiguousarray(torch_mask)).float()
        self.apply_masks()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tensors = {INPUT: x}
        for layer in self.model.layers:
            tensors[layer.name] = self._layer(layer, [tensors[name] for name in layer.inputs])
        out = tensors[self.model.layers[-1].name]
        return _hwc_flat(out)

    def _layer(self, layer: FloatLayer, ins: list[torch.Tensor]) -> torch.Tensor:
        x, op = ins[0], layer.op
        if op in (Op.CONV2D, Op.DEPTHWISE_CONV2D):
            groups = 1 if op is Op.CONV2D else x.shape[1]
            y = F.conv2d(_pad(x, layer.padding), self.forward_weight(layer.name), self.biases[layer.name], layer.stride,
                         0, layer.dilation, groups)
        elif op is Op.DENSE:
            y = F.linear(_hwc_flat(x), self.forward_weight(layer.name), self.biases[layer.name])
        elif op is Op.MAXPOOL2D:
            y = F.max_pool2d(_pad(x, layer.padding, -math.inf), layer.window, layer.stride)
        elif op is Op.AVGPOOL2D:  # divides by the taps inside the map, as the int8 kernel does
            total = F.avg_pool2d(_pad(x, layer.padding), layer.window, layer.stride, divisor_override=1)
            ones = _pad(torch.ones_like(x[:1, :1]), layer.padding)
            y = total / F.avg_pool2d(ones, layer.window, layer.stride, divisor_override=1)
        elif op is Op.MEAN:
            y = x.mean(dim=(2, 3), keepdim=len(layer.out_shape) == 3)
        elif op is Op.ADD:
            y = x + ins[1]
        elif op is Op.PAD:
            y = _pad(x, layer.padding)
        elif op is Op.RESHAPE:
            flat = x.permute(0, 2, 3, 1) if x.dim() == 4 else x
            y = flat.reshape(x.shape[0], *layer.out_shape)
            y = y.permute(0, 3, 1, 2) if y.dim() == 4 else y
        elif op is Op.SOFTMAX:
            y = F.softmax(layer.beta * x, dim=1)
        else:
            raise ValueError(f"layer {layer.name}: no torch equivalent for op {op.value}")
        return _clamp(y, layer.clamp)

    def apply_masks(self) -> None:
        """Zero the masked weights in place (after an optimizer step, so they stay exactly 0)."""
        with torch.no_grad():
            for name, mask in self.masks.items():
                self.weights[name].mul_(mask)

    def to_float_model(self) -> FloatModel:
        """The IR model with the trained weights (masked weights exactly 0) and the current masks."""
        layers = []
        for layer in self.model.layers:
            if layer.name in self.weights:
                w = _to_ir_layout(layer, self.weight(layer.name).detach().cpu().numpy())
                mask = layer.mask
                if layer.name in self.masks:
                    mask = _to_ir_layout(layer, self.masks[layer.name].cpu().numpy()).astype(bool)
                layer = replace(layer, weights=np.ascontiguousarray(w, dtype=np.float32), mask=mask,
                                bias=self.biases[layer.name].detach().cpu().numpy().astype(np.float32))
            layers.append(layer)
        return replace(self.model, layers=tuple(layers))


def with_masks(model: FloatModel, masks: dict[str, np.ndarray]) -> FloatModel:
    """`model` with these layers' masks (IR layout) set and their masked weights zeroed."""
    layers = []
    for layer in model.layers:
        if layer.name in masks:
            mask = np.asarray(masks[layer.name], dtype=bool)
            layer = replace(layer, mask=mask, weights=(layer.weights * mask).astype(np.float32))
        layers.append(layer)
    return replace(model, layers=tuple(layers))
