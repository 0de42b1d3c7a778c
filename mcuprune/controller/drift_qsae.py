"""The int8 QSAE that watches the penultimate activations on the device, and the device's telemetry.

The monitor QSAE is trained (qsae.train_qsae, torch) on the *dequantized int8* penultimate
activations of clean calibration images, i.e. on exactly the numbers the device has, and exported
through the normal int8 pipeline (qsae.qsae_to_float_model + quantize.quantize_model) with two
choices that make the device's reconstruction error a plain integer sum:

* the QSAE's input range is the penultimate tensor's whole int8 range, [s_a(-128 - z_a),
  s_a(127 - z_a)], so the exported model's int8 input *is* the penultimate buffer, unchanged;
* the decoder's output quantization is the penultimate tensor's (s_a, z_a) instead of one
  calibrated on the QSAE's outputs, so reconstruction and activations are the same integers.

The exported QuantModel (encoder dense + ReLU, decoder dense; input shape (1, 1, D)) is what the
firmware will run after the model, on its penultimate buffer; ``device_telemetry`` simulates the
whole device with the numpy int8 reference interpreter, which the device matches bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from mcuprune.compress.qsae import QSAE, hidden_size, qsae_to_float_model, train_qsae
from mcuprune.model.interpreter import BATCH, run_s8, trace_s8
from mcuprune.model.ir import QParams, QuantModel
from mcuprune.model.telemetry import Telemetry, concat, exp_table, telemetry_from_tensors
from mcuprune.quantize import (
    INPUT_Q,
    activation_qparams,
    calibration_subset,
    input_floats,
    quantize_layer,
    quantize_model,
)
from mcuprune.train.datasets import to_int8

DEFAULT_LAMBDA = 1e-4  # qsae.LAMBDA_PATH[0]: the weakest sparsity, the best reconstruction
DEFAULT_STEPS = 2000


@dataclass(frozen=True, eq=False)
class MonitorQSAE:
    qsae: QSAE  # the trained QSAE (float weights that are int8 times a per-row scale)
    model: QuantModel  # its int8 export: what the firmware runs on the penultimate buffer


def penultimate_q(model: QuantModel) -> QParams:
    """Quantization of the last layer's input (the penultimate activations)."""
    if len(model.layers) < 2:
        raise ValueError(f"model {model.name} has {len(model.layers)} layer(s): no penultimate activations")
    return model.layers[-1].input_q


def penultimate_activations(model: QuantModel, x_uint8: np.ndarray) -> np.ndarray:
    """uint8 images (N, H, W, C) -> int8 penultimate activations (N, D), batched."""
    penultimate = model.layers[-1].inputs[0]
    parts = [trace_s8(model, to_int8(x_uint8[s : s + BATCH]))[penultimate] for s in range(0, len(x_uint8), BATCH)]
    return np.concatenate(parts).reshape(len(x_uint8), -1)


def build_monitor_qsae(model: QuantModel, calib_uint8: np.ndarray, hidden: int | None = None,
                       lam: float = DEFAULT_LAMBDA, steps: int = DEFAULT_STEPS, seed: int = 0) -> MonitorQSAE:
    """Train a QSAE on the model's int8 penultimate activations of `calib_uint8` and export it to int8,
    in the penultimate tensor's own quantization on both ends (see the module docstring)."""
    act = penultimate_activations(model, calib_uint8)
    q = penultimate_q(model)
    lo, hi = q.scale * (-128 - q.zero_point), q.scale * (127 - q.zero_point)
    x = (q.scale * (act.astype(np.float64) - q.zero_point)).astype(np.float32)
    trained = train_qsae(x, hidden or hidden_size(x.shape[1]), lam, steps=steps, seed=seed)
    trained = replace(trained, input_lo=lo, input_hi=hi)
    float_model = qsae_to_float_model(trained, name=f"{model.name}-monitor-qsae")
    # u = (x - lo) / (hi - lo) = (a + 128) / 255: the "pixel" is a + 128, the int8 input is a itself.
    images = (act.astype(np.int16) + 128).astype(np.uint8).reshape(len(act), 1, 1, -1)
    meta = {"monitors": model.name, "hidden": trained.hidden, "lam": lam, "steps": steps, "seed": seed,
            "calibration_samples": len(act)}
    qmodel = quantize_model(float_model, input_floats(images, INPUT_Q), meta, input_q=INPUT_Q)
    encoder = qmodel.layers[0]
    decoder = quantize_layer(float_model.layers[1], encoder.output_q, activation_qparams(lo, hi))
    if decoder.output_q.zero_point != q.zero_point or not np.isclose(decoder.output_q.scale, q.scale, rtol=1e-9):
        raise AssertionError(f"QSAE output quantization {decoder.output_q} is not the penultimate {q}")
    return MonitorQSAE(trained, replace(qmodel, layers=(encoder, decoder)))


def build_monitor_model(model: QuantModel, x_train_uint8: np.ndarray) -> QuantModel:
    """The monitor QSAE blob firmware runs, trained on a calibration subset (2000 images: a few
    seconds); what target.compile.compile_run takes as its `monitor_builder`."""
    return build_monitor_qsae(model, calibration_subset(x_train_uint8)).model


def reconstruct_s8(qsae_model: QuantModel, act: np.ndarray) -> np.ndarray:
    """int8 penultimate activations (N, D) -> the int8 QSAE reconstruction (N, D)."""
    act = np.asarray(act, dtype=np.int8)
    parts = [run_s8(qsae_model, act[s : s + BATCH].reshape(-1, 1, 1, act.shape[1])) for s in range(0, len(act), BATCH)]
    return np.concatenate(parts).reshape(act.shape)


def device_outputs(model: QuantModel, qsae_model: QuantModel, x_uint8: np.ndarray,
                   first_count: int = 0) -> tuple[np.ndarray, Telemetry]:
    """The int8 logits (N, K) and the telemetry the device sends for each image, from one run of the
    int8 reference interpreter."""
    table = exp_table(model.output_q.scale)
    logits, parts = [], []
    for s in range(0, len(x_uint8), BATCH):
        outs = trace_s8(model, to_int8(x_uint8[s : s + BATCH]))
        act = outs[model.layers[-1].inputs[0]].reshape(len(x_uint8[s : s + BATCH]), -1)
        logits.append(outs[model.layers[-1].name].reshape(len(act), -1))
        parts.append(telemetry_from_tensors(logits[-1], act, reconstruct_s8(qsae_model, act), table, first_count + s))
    return np.concatenate(logits), concat(parts)


def device_telemetry(model: QuantModel, qsae_model: QuantModel, x_uint8: np.ndarray, first_count: int = 0) -> Telemetry:
    """The telemetry the device sends for each image, simulated with the int8 reference interpreter."""
    return device_outputs(model, qsae_model, x_uint8, first_count)[1]
