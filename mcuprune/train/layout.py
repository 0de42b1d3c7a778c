"""Mask layout: the IR's HWC weight layout -> torch's, for checkpoints and train.fit.

IR (ir.py): conv weights [C_out, k_h, k_w, C_in], a dense layer after a feature map reads it
flattened H,W,C. Torch: conv weights [C_out, C_in, k_h, k_w], flatten C,H,W. This is the inverse of
what train.export_float_model does to weights and masks.
"""

from __future__ import annotations

import numpy as np

from mcuprune.model.ir import FloatModel, Op


def ir_mask_to_torch(mask: np.ndarray, op: Op, prev_shape: tuple[int, ...]) -> np.ndarray:
    """One layer's mask, IR layout -> torch layout. prev_shape: the layer's input shape before flattening."""
    m = np.asarray(mask, dtype=bool)
    if op is Op.CONV2D:
        return np.ascontiguousarray(m.transpose(0, 3, 1, 2))
    if len(prev_shape) == 3:
        h, w, c = prev_shape
        return np.ascontiguousarray(m.reshape(m.shape[0], h, w, c).transpose(0, 3, 1, 2).reshape(m.shape[0], -1))
    return m.copy()


def ir_masks_to_torch(model: FloatModel, masks: dict[str, np.ndarray | None]) -> list[np.ndarray | None]:
    """Masks by layer name (IR layout) -> one torch-layout mask or None per weighted layer, in order."""
    out: list[np.ndarray | None] = []
    prev: tuple[int, ...] = tuple(model.input_shape)
    for layer in model.layers:
        if layer.weights is not None:
            mask = masks.get(layer.name)
            out.append(None if mask is None else ir_mask_to_torch(mask, layer.op, prev))
        prev = tuple(layer.out_shape)
    return out
