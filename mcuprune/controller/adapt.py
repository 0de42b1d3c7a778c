"""Adapting a deployed model to drifted inputs: the host controller's update step.

    adapt(RUN, deployed, formats, captured_uint8, labels=...) -> AdaptResult(model, monitor_qsae,
                                                                           monitor, report, ship)

When the drift monitor fires, the host captures N recent inputs from the device (uint8 pixels; the
field may return the true class of some of them: ``labels``, -1 elsewhere) and builds new
parameters for the *same compiled architecture*: the same ops, shapes and per-layer weight formats
(codegen.architecture_hash is unchanged), so that only the parameter blob is streamed. Everything
may change that the blob carries: the packed weights (nnz too), biases,
requantization constants, every layer's zero points and clamps, and the monitor QSAE. Steps, each
switchable (``steps``):

* ``input``: moment matching of the pixel distribution. An affine map p_train ≈ gain · p + offset
  from the captured pixels to the training pixels is fitted (mean and standard deviation by
  default; a least-squares fit of the quantiles ignores clipped pixels but was noisier on
  unshifted captures) and folded into the input quantization: the device still receives
  q = p − 128, and the first layer reads it with scale gain/255 and zero point
  −128 − offset/gain, i.e. it computes on the corrected image. Padding holds the zero point, a
  corrected 0, as in training. The zero point must stay an int8, so the offset is limited to what
  a zero point in [−128, 127] can express (darkening cannot be undone: the gain is refitted with
  the offset the clamped zero point allows, and the report says ``limited``), and the gain to
  [1/4, 4]. The reference is the *class-weighted* training pixel distribution, weighted by the
  classes the model predicts on the captured data (iterated): a change of class mix changes the
  pixel statistics too (Fashion-MNIST footwear is darker than shirts) and must not be
  "corrected" as a brightness change.
* ``match``: the capture is checked against a table of known corruptions (sensor noise, rotation) at a
  range of strengths (shift_match.py); when one explains it, the tuning's replay of training
  images is corrupted the same way and, through the corrected input quantization, becomes labeled
  data from the shifted domain: the model is tuned on it even without field labels (masks fixed,
  as ``tune``). The guard then judges by the accuracy on held-out training images corrupted the
  same way, unless enough field labels came back.
* ``calibrate``: every layer's activation range (min/max) on the captured data, after the input
  correction. Without it each layer keeps the deployed output quantization.
* ``reprune``: masks chosen again by KL (importance.py / budget.py) on the captured activations,
  from the *dense parent* weights (the run's ``pruned_from``, shrunk by the run's own recorded
  structured removals, so the shapes are the deployed ones), under a byte budget equal to the
  deployed parameter bytes, each layer's bytes counted in its forced format (and CSR row pointers
  kept in their compiled C type). Why the parent: the deployed weights are already zero outside
  the deployed masks, so re-masking them under the same budget can only return the deployed
  masks (KL 0, same bytes): a no-op. A dense-format layer's bytes do not depend on its mask, so
  the knapsack keeps it whole (KL 0). There are no labels, so no fine-tuning; instead the kept
  weights and biases are refitted layer by layer by ridge least squares to reproduce the dense
  parent's pre-activations on the captured data (``reconstruct``). Without that, re-pruning the
  parent loses what the deployed run's fine-tuning bought (5.5 points on unshifted
  Fashion-MNIST); with it, adding re-pruning to the default steps still costs 0.3–0.5 points
  (1.0–1.2 under noise) and gains 1.4–1.8 only under rotation, so it is not a default step
  (bench/drift/README.md).
* ``monitor``: the monitor QSAE (monitor_qsae.build_monitor_qsae) is retrained for the new model on
  one half of the captured data and the drift monitor (drift_offline.build_detector) is fitted on
  the new model's telemetry of the other half: the adapted distribution becomes the new normal.

Steps added for issue 13 (bench/drift/README.md measures each on and off):

* ``tune``: fine-tuning on the labeled captures mixed with a replay of training data
  (target_tune.py), the deployed nonzero pattern kept; with ``reprune`` the dense parent is tuned
  before the masks are picked, and the masked model after.
* ``selftrain``: the same tuning on confident pseudo-labels plus entropy minimisation of the
  unlabeled captures.
* ``prior``: class-prior EM on temperature-calibrated posteriors, folded into the logit layer's
  bias when the data show a change that a pure prior change explains (prior.py).
* ``guard``: the host's prediction of the adapted model against the serving one; ``ship`` is False
  unless it predicts a gain (by labels: a significant one; after ``match``, the matched training
  images decide and the labels can veto; see guard()).

Without ``reprune`` and the tuning steps the weights are the deployed int8 weights unchanged (dequantized and quantized
again, which reproduces them exactly); biases and requantization constants follow the new input and
output scales. bench/drift/adapt_offline.py measures what each step buys (bench/drift/README.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy.special import softmax
from scipy.stats import binomtest

from mcuprune.codegen.emit import architecture_hash
from mcuprune.compress.activations import capture_activations, layer_rows, weight_matrix
from mcuprune.compress.budget import QUANT_BYTES_PER_CHANNEL, choose_by_bytes, pareto
from mcuprune.compress.importance import SPARSITY_LEVELS, layer_candidates, mask_for
from mcuprune.compress.prune import removal_stages, replay_removals
from mcuprune.controller import ADAPT_STEPS
from mcuprune.controller.detectors import DriftDetector
from mcuprune.controller.drift_offline import DetectorSpec, build_detector
from mcuprune.controller.drift_qsae import MonitorQSAE, build_monitor_qsae, device_telemetry
from mcuprune.controller.prior import (
    PRIOR_FLOOR,
    class_confidence,
    estimate_prior,
    fit_temperature,
    fold_prior,
    last_weighted_layer,
)
from mcuprune.controller.shift_match import ShiftMatch, identify_shift
from mcuprune.controller.target_tune import ENTROPY_WEIGHT, TargetData, tune
from mcuprune.controller.target_tune import STEPS as TUNE_STEPS
from mcuprune.errors import UserError
from mcuprune.model.formats import MAX_DELTA, format_bytes, layer_bytes, pack
from mcuprune.model.interpreter import run_f32, run_layer_f32, run_s8
from mcuprune.model.ir import FloatLayer, FloatModel, Op, QParams, QuantModel
from mcuprune.model.ops import FORMATS
from mcuprune.quantize import activation_qparams, calibration_ranges, input_floats, quantize_model
from mcuprune.train.datasets import load_dataset, to_int8
from mcuprune.train.ir_module import with_masks
from mcuprune.train.runs import read_run_meta
from mcuprune.train.training import load_run_model

STEPS = ADAPT_STEPS
DEFAULT_STEPS = ("input", "calibrate", "monitor")  # reprune: see the module docstring
HOLDOUT = 0.25  # of the unlabeled captures, kept out of self-training for the guard's estimate
# Confidence is a weak witness under shift: under rotation an input correction that cost 1.1 points
# of accuracy raised the mean calibrated confidence by 1.35 points (its gain sharpens every output),
# while real gains raised it by 2.4 (noise) to 17 (brightness) points (bench/drift/README.md). Smaller
# rises than this margin are not taken as evidence of a gain. A heuristic from those measurements.
CONFIDENCE_MARGIN = 0.02
CV_FOLDS = 3
# The guard's bar on training images under a recognised corruption: both models are scored on the same
# 1,000 images, so a paired difference of a point is more than chance; under noise on digits a gain of
# 0.3 points there came with a loss of 0.3 on the test images.
SYNTHETIC_MARGIN = 0.01
# Labels decide by an exact one-sided McNemar test at this level: an update judged by labels ships on
# a gain this significant, one judged on matched training images is vetoed by a loss this significant.
LABEL_P = 0.05
MIN_GUARD_LABELS = 10  # with fewer labels the guard judges by confidence (or the matched training images)
REPLAY_SAMPLES = 2000  # labeled training images mixed into every tuning batch
TEMPERATURE_SAMPLES = 1000  # labeled training images the softmax temperature is fitted on
INPUT_METHODS = ("moments", "quantiles")
MAX_GAIN = 4.0  # the gain stays in [1/4, 4]: beyond that the capture is not a lighting change
MIN_CAPTURED = 20
MIN_CAPTURED_MONITOR = 100
QUANTILES = np.linspace(0.01, 0.99, 99)
PRIOR_ITERATIONS = 3  # class-weighted reference <-> predictions on the corrected input; converges in 2-3
VARIANTS = ("dsp", "reference")
COMPENSATIONS = ("lstsq", "bias", "none")
RIDGE = 1e-3  # of the mean Gram diagonal: a few hundred kept weights per row stay stable on ~500 samples
RECONSTRUCT_POSITIONS = 16  # output pixels per image a conv layer's least squares sees


@dataclass(frozen=True, eq=False)
class AdaptResult:
    model: QuantModel  # the adapted int8 network (same architecture as the deployed one)
    monitor_qsae: MonitorQSAE | None  # the monitor QSAE for the new model (None without "monitor")
    monitor: DriftDetector | None  # fitted on the new model's telemetry of the capture (None without "monitor")
    report: dict
    ship: bool = True  # False: the guard predicts the adapted model to be worse than the deployed one


@dataclass(frozen=True)
class InputMap:
    """Corrected pixel = gain · captured pixel + offset (pixel units, 0..255)."""
    gain: float
    offset: float

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        return self.gain * np.asarray(pixels, dtype=np.float64) + self.offset

    def with_pivot(self, pivot: float) -> InputMap:
        """gain · (p − pivot): the map whose corrected 0 is captured pixel `pivot`."""
        return InputMap(self.gain, -self.gain * pivot)


# --- pixel statistics and the input map -------------------------------------------------------


def pixel_histograms(x_uint8: np.ndarray, y: np.ndarray, num_classes: int, chunk: int = 4096) -> np.ndarray:
    """Per-class histograms (num_classes, 256) of the pixel values of labelled uint8 images."""
    x = np.asarray(x_uint8)
    hist = np.zeros((num_classes, 256), dtype=np.int64)
    for s in range(0, len(x), chunk):  # chunks: an int64 index per pixel of 60,000 images is 376 MB
        px = x[s : s + chunk].reshape(len(x[s : s + chunk]), -1).astype(np.int64)
        idx = (np.asarray(y[s : s + chunk], dtype=np.int64)[:, None] * 256 + px).ravel()
        hist += np.bincount(idx, minlength=num_classes * 256).reshape(num_classes, 256)
    return hist


def _quantiles(hist: np.ndarray, u: np.ndarray = QUANTILES) -> np.ndarray:
    """Inverse CDF (the smallest value v with CDF(v) >= u) of a 256-bin histogram."""
    cdf = np.cumsum(np.asarray(hist, dtype=np.float64))
    return np.searchsorted(cdf / cdf[-1], u, side="left").astype(np.float64)


def _moments(hist: np.ndarray) -> tuple[float, float]:
    p = np.asarray(hist, dtype=np.float64) / np.sum(hist)
    v = np.arange(256, dtype=np.float64)
    mean = float(p @ v)
    return mean, float(np.sqrt(max(p @ (v - mean) ** 2, 0.0)))


def fit_input_map(captured_hist: np.ndarray, reference_hist: np.ndarray, method: str = "moments",
                  pivot: float | None = None) -> InputMap:
    """The affine map that takes the captured pixel distribution to the reference (training) one.

    ``quantiles``: least squares of Q_ref(u) on Q_captured(u) over u = 0.01..0.99, using only the
    quantiles that lie strictly inside (0, 255) on both sides: clipped pixels (black background,
    saturated highlights) say nothing about the map. ``moments``: match mean and standard
    deviation (the default: on unshifted Fashion-MNIST captures the quantile fit drifted up to 7
    pixels from the identity, the moments 1). With `pivot` the map is constrained to
    gain · (p − pivot) (a fixed zero point)."""
    if method not in INPUT_METHODS:
        raise ValueError(f"unknown input method {method!r}: choose one of {', '.join(INPUT_METHODS)}")
    if method == "quantiles":
        qc, qr = _quantiles(captured_hist), _quantiles(reference_hist)
        ok = (qc > 0) & (qc < 255) & (qr > 0) & (qr < 255)
        if ok.sum() >= 5 and np.ptp(qc[ok]) > 0:
            qc, qr = qc[ok], qr[ok]
            if pivot is not None:
                d = qc - pivot
                return InputMap(float(qr @ d / max(d @ d, 1e-12)), 0.0).with_pivot(pivot)
            gain, offset = np.polyfit(qc, qr, 1)
            return InputMap(float(gain), float(offset))
        # too few unclipped quantiles (e.g. binary images): fall back to the moments
    (mc, sc), (mr, sr) = _moments(captured_hist), _moments(reference_hist)
    if sc <= 0:
        raise UserError("the captured inputs are all the same pixel value: nothing to match them to")
    if pivot is not None:
        return InputMap(mr / max(mc - pivot, 1e-12), 0.0).with_pivot(pivot)
    gain = sr / sc
    return InputMap(gain, mr - gain * mc)


def wanted_zero_point(m: InputMap) -> float:
    """real = (gain · p + offset) / 255 with p = q + 128 is scale · (q − z) with scale = gain / 255 and
    z = −128 − offset / gain (not rounded, not limited)."""
    return -128.0 - m.offset / m.gain


def input_qparams(m: InputMap) -> tuple[QParams, bool]:
    """(input quantization that folds the map in, whether the zero point had to be clamped to int8)."""
    z = wanted_zero_point(m)
    zc = int(np.clip(np.round(z), -128, 127))
    return QParams(scale=m.gain / 255.0, zero_point=zc), bool(np.round(z) != zc)


def estimate_input_q(captured_uint8: np.ndarray, class_hist: np.ndarray,
                     predict: Callable[[QParams | None], np.ndarray], method: str = "moments",
                     iterations: int = PRIOR_ITERATIONS) -> tuple[QParams, dict]:
    """The corrected input quantization for the captured images, and what was estimated.

    `predict(input_q) -> predicted classes` of the captured images under that input quantization
    (None: the deployed one); the reference is the training pixel distribution weighted by the
    predicted class frequencies, iterated `iterations` times from the deployed predictions."""
    captured_hist = np.bincount(np.asarray(captured_uint8).ravel(), minlength=256)
    k = len(class_hist)
    q, clamped, limited, m = None, False, False, InputMap(1.0, 0.0)
    prior = np.full(k, 1.0 / k)
    for _ in range(max(1, iterations)):
        pred = np.asarray(predict(q))
        prior = np.bincount(pred, minlength=k)[:k] / max(len(pred), 1)
        reference = prior @ (class_hist / np.maximum(class_hist.sum(axis=1, keepdims=True), 1))
        m = fit_input_map(captured_hist, reference, method)
        wanted = wanted_zero_point(m)
        gain = float(np.clip(m.gain, 1.0 / MAX_GAIN, MAX_GAIN))
        limited = gain != m.gain
        m = InputMap(gain, m.offset if not limited else m.offset * gain / m.gain)
        q, clamped = input_qparams(m)
        if clamped:  # refit the gain with the offset the clamped zero point allows
            pivot = float(128 + q.zero_point)  # corrected = gain · (p − 128 − z)
            m = fit_input_map(captured_hist, reference, method, pivot=pivot)
            m = InputMap(float(np.clip(m.gain, 1.0 / MAX_GAIN, MAX_GAIN)), 0.0).with_pivot(pivot)
            q = QParams(scale=m.gain / 255.0, zero_point=q.zero_point)
    info = {"method": method, "gain": round(m.gain, 5), "offset": round(m.offset, 3),
            "scale": q.scale, "zero_point": q.zero_point, "zero_point_wanted": round(wanted, 2),
            "zero_point_clamped": clamped, "gain_limited": limited, "limited": clamped or limited,
            "predicted_prior": [round(float(p), 4) for p in prior],
            "captured_mean_std": [round(v, 2) for v in _moments(captured_hist)]}
    return q, info


# --- float <-> int8 ---------------------------------------------------------------------------


def dequantize_model(model: QuantModel) -> FloatModel:
    """The float model whose quantization gives `model`'s int8 weights back exactly: weights
    q · scale per output channel, biases at their int32 scale (input scale · weight scale)."""
    layers = []
    for ql in model.layers:
        common = dict(inputs=ql.inputs, clamp=ql.clamp, stride=ql.stride, padding=ql.padding,
                      dilation=ql.dilation, window=ql.window, depth_multiplier=ql.depth_multiplier)
        if not ql.has_weights:
            layers.append(FloatLayer(ql.name, ql.op, tuple(ql.in_shape), tuple(ql.out_shape), **common))
            continue
        shape = (-1,) + (1,) * (ql.weights.ndim - 1)
        w = (ql.weights.astype(np.float32) * ql.weight_scales.reshape(shape)).astype(np.float32)
        b = (ql.bias.astype(np.float64) * ql.input_q.scale * ql.weight_scales.astype(np.float64)).astype(np.float32)
        layers.append(FloatLayer(ql.name, ql.op, tuple(ql.in_shape), tuple(ql.out_shape), w, b, mask=ql.mask,
                                 **common))
    return FloatModel(model.name, tuple(model.input_shape), model.num_classes, tuple(layers))


# --- re-pruning from the dense parent ---------------------------------------------------------


def parent_source(run_dir: Path, captured_uint8: np.ndarray, input_q: QParams, seed: int = 0) -> tuple[FloatModel, str]:
    """The run's dense parent in the run's own shapes: (FloatModel, where it came from).

    A pruned run records its parent (``pruned_from``) and the channels its structured step removed;
    the same channels are removed from the parent, with the lost columns of dense readers folded
    into their biases at their means on the captured data (as prune.py does on calibration data).
    A run that was not pruned is its own source."""
    run_dir = Path(run_dir)
    meta = read_run_meta(run_dir)
    parent = meta.get("pruned_from")
    if not parent:
        return _float_model(run_dir), str(run_dir)
    parent = Path(parent)
    if not (parent / "run.json").exists():
        raise UserError(f"{run_dir} was pruned from {parent}, which is gone: re-pruning needs the dense parent run")
    full = replay_removals(_float_model(parent), removal_stages(meta.get("pruning", {})),
                           input_floats(captured_uint8, input_q), seed=seed)
    pruned = _float_model(run_dir)
    if [tuple(layer.out_shape) for layer in full.layers] != [tuple(layer.out_shape) for layer in pruned.layers]:
        raise UserError(f"the parent {parent} shrunk by the recorded removals does not give the shapes of {run_dir}")
    return replace(full, name=pruned.name), str(parent)


def _float_model(run_dir: Path) -> FloatModel:
    model, _ = load_run_model(run_dir)
    if not isinstance(model, FloatModel):
        raise UserError(f"{run_dir} holds an int8 model taken from a .tflite: adaptation re-prunes float models")
    return model


def _row_ptr_dtype(weights_int8: np.ndarray, fmt: str) -> str | None:
    return pack(weights_int8, fmt).row_ptr.dtype.name if fmt in MAX_DELTA else None


def forced_bytes(mask: np.ndarray, fmt: str, bits: int = 8) -> int:
    """Upper bound of a layer's bytes in `fmt` at `bits`-bit weights when every kept weight is
    non-zero (planning count)."""
    m = np.asarray(mask, dtype=bool)
    return format_bytes(m.astype(np.int8), fmt, bits) + QUANT_BYTES_PER_CHANNEL * int(m.shape[0])


def _levels_near(sparsity: float) -> tuple[float, ...]:
    """importance.SPARSITY_LEVELS plus a fine grid around the deployed sparsity: the budget is the
    deployed bytes, so the plan usually lands there, and the coarse grid would waste bytes."""
    near = [sparsity + d for d in (-0.03, -0.02, -0.01, -0.005, 0.0, 0.005, 0.01, 0.02, 0.03)]
    return tuple(sorted(set(SPARSITY_LEVELS) | {round(v, 4) for v in near if 0.0 <= v < 1.0}))


def reprune(source: FloatModel, deployed: QuantModel, formats: dict[str, str], captured_uint8: np.ndarray,
            input_q: QParams, seed: int = 0, compensation: str = "lstsq") -> tuple[FloatModel, dict]:
    """New masks for `source` chosen by KL on the captured activations under the deployed byte budget,
    each layer in its forced format; returns the masked, compensated model and a report.

    compensation (no labels, so no fine-tuning): ``lstsq`` refits each layer's kept weights and bias,
    layer by layer, so that on the captured data its pre-activations match the unpruned source's
    while its inputs come from the already re-pruned layers (ridge least squares per output
    channel); ``bias`` folds the pruned weights' contribution at the mean captured input into the
    bias; ``none`` only masks."""
    if compensation not in COMPENSATIONS:
        raise ValueError(f"unknown compensation {compensation!r}: choose one of {', '.join(COMPENSATIONS)}")
    x_float = input_floats(captured_uint8, input_q)
    caps = capture_activations(source, x_float, seed=seed)
    deployed_layers = {ql.name: ql for ql in deployed.layers if ql.has_weights}
    budget = sum(layer_bytes(ql, formats[name]) for name, ql in deployed_layers.items())
    fronts = {}
    for layer in source.layers:
        if layer.weights is None:
            continue
        fmt, cap, old = formats[layer.name], caps[layer.name], deployed_layers[layer.name]
        want = _row_ptr_dtype(old.weights, fmt)  # the C type of the row pointers is compiled in
        cands = []
        levels = _levels_near(1.0 - np.count_nonzero(old.weights) / old.weights.size)
        for c in layer_candidates(layer, cap, levels, widths=(old.weight_bits,)):  # the width is compiled in
            mask = mask_for(layer, cap, c.tau, c.bits, c.block)
            if want is not None and _row_ptr_dtype(mask.astype(np.int8), fmt) != want:
                continue
            cands.append(replace(c, bytes=forced_bytes(mask, fmt, old.weight_bits)))
        if not cands:
            raise UserError(f"layer {layer.name}: no mask keeps its {fmt} row pointers in {want}")
        fronts[layer.name] = pareto(cands)
    chosen = choose_by_bytes(fronts, budget)
    layers = []
    for layer in source.layers:
        if layer.weights is None:
            layers.append(layer)
            continue
        c = chosen[layer.name]
        mask = mask_for(layer, caps[layer.name], c.tau, c.bits, c.block)
        bias = layer.bias.astype(np.float64)
        if compensation == "bias":  # what the pruned weights added at the mean input stays in the bias
            removed = weight_matrix(layer) * ~mask.reshape(mask.shape[0], -1)
            bias = bias + removed.astype(np.float64) @ caps[layer.name].input_means
        layers.append(replace(layer, mask=mask, bias=bias.astype(np.float32)))
    model = replace(source, layers=tuple(layers))
    if compensation == "lstsq":
        model = reconstruct(source, model, x_float, seed)
    report = {"budget_bytes": int(budget), "planned_bytes": int(sum(c.bytes for c in chosen.values())),
              "compensation": compensation,
              "layers": {n: {"tau": c.tau, "sparsity": round(c.sparsity, 5), "kl": round(c.kl, 5),
                             "planned_bytes": c.bytes} for n, c in chosen.items()}}
    return model, report


def _sample_rows(rows: np.ndarray, pick: np.ndarray | None) -> np.ndarray:
    if pick is None:
        return rows.reshape(rows.shape[0], -1).astype(np.float64)
    flat = rows.reshape(rows.shape[0], -1, rows.shape[-1])
    return flat[np.arange(len(flat))[:, None], pick].reshape(-1, rows.shape[-1]).astype(np.float64)


def reconstruct(source: FloatModel, pruned: FloatModel, x_float: np.ndarray, seed: int = 0,
                ridge: float = RIDGE) -> FloatModel:
    """Refit the kept weights and the bias of every weighted layer of `pruned`, in order, so that its
    pre-activations on `x_float` match `source`'s (ridge least squares per output channel, inputs
    from the already refitted layers). Masks stay as they are."""
    rng = np.random.default_rng(seed)
    x_src = x_pr = np.asarray(x_float, dtype=np.float32)
    layers = []
    changed = False  # has any layer so far lost a weight? Until then the ridge would only shrink weights
    for src, layer in zip(source.layers, pruned.layers, strict=True):
        if layer.weights is None:
            layers.append(layer)
            x_src, x_pr = run_layer_f32(src, x_src), run_layer_f32(layer, x_pr)
            continue
        if not changed and np.array_equal(weight_matrix(layer), weight_matrix(src)):
            layers.append(layer)
            x_src = x_pr = run_layer_f32(src, x_src).astype(np.float32)
            continue
        changed = True
        rows_src, rows_pr = layer_rows(x_src, src), layer_rows(x_pr, layer)
        pick = None
        if layer.op is Op.CONV2D:
            pixels = rows_src.shape[1] * rows_src.shape[2]
            pick = np.argsort(rng.random((len(rows_src), pixels)), axis=1)[:, : min(RECONSTRUCT_POSITIONS, pixels)]
        a = _sample_rows(rows_pr, pick)
        target = _sample_rows(rows_src, pick) @ weight_matrix(src).T.astype(np.float64) + src.bias
        a1 = np.hstack([a, np.ones((len(a), 1))])  # the bias is the last unknown
        gram, cross = a1.T @ a1, a1.T @ target
        mask = np.asarray(layer.mask, dtype=bool).reshape(layer.weights.shape[0], -1)
        w = np.zeros(mask.shape)
        b = np.zeros(mask.shape[0])
        for c in range(mask.shape[0]):
            idx = np.append(np.flatnonzero(mask[c]), mask.shape[1])
            g = gram[np.ix_(idx, idx)]
            lam = ridge * float(np.mean(np.diag(g)[:-1])) if len(idx) > 1 else 0.0
            sol = np.linalg.solve(g + lam * np.diag(np.append(np.ones(len(idx) - 1), 0.0)) + 1e-9 * np.eye(len(idx)),
                                  cross[idx, c])
            w[c, idx[:-1]], b[c] = sol[:-1], sol[-1]
        new = replace(layer, weights=w.reshape(layer.weights.shape).astype(np.float32), bias=b.astype(np.float32))
        layers.append(new)
        x_src, x_pr = run_layer_f32(src, x_src).astype(np.float32), run_layer_f32(new, x_pr).astype(np.float32)
    return replace(pruned, layers=tuple(layers))


# --- checks -----------------------------------------------------------------------------------


def check_same_architecture(deployed: QuantModel, new: QuantModel, formats: dict[str, str]) -> None:
    """Raise ValueError unless `new` fits the firmware compiled for `deployed` in `formats`: same ops,
    shapes and hyper-parameters, weights packable in their formats (same row-pointer types), the
    same architecture hash for every kernel variant, and every int8 constraint of the kernels."""
    if len(new.layers) != len(deployed.layers) or tuple(new.input_shape) != tuple(deployed.input_shape):
        raise ValueError("the adapted model has a different layer count or input shape")
    for old, ql in zip(deployed.layers, new.layers, strict=True):
        for f in ("name", "op", "inputs", "in_shape", "out_shape", "stride", "padding", "dilation", "window",
                  "depth_multiplier", "relu"):
            if getattr(old, f) != getattr(ql, f):
                raise ValueError(f"layer {old.name}: {f} changed from {getattr(old, f)} to {getattr(ql, f)}")
        for q in (ql.input_q, ql.output_q):
            if not (-128 <= q.zero_point <= 127 and np.isfinite(q.scale) and q.scale > 0):
                raise ValueError(f"layer {ql.name}: quantization {q} is not a valid int8 one")
        if not ql.has_weights:
            if ql.output_q != ql.input_q:
                raise ValueError(f"layer {ql.name}: max pooling must pass its quantization through")
            continue
        if ql.weights.shape != old.weights.shape or ql.weights.dtype != np.int8 or np.abs(ql.weights).max() > 127:
            raise ValueError(f"layer {ql.name}: weights are not int8 [-127, 127] of shape {old.weights.shape}")
        if ql.bias.dtype != np.int32 or ql.multiplier.dtype != np.int32 or ql.shift.dtype != np.int32:
            raise ValueError(f"layer {ql.name}: bias, multiplier and shift must be int32")
        if np.any(ql.multiplier < 0) or np.any(ql.shift < -31) or np.any(ql.shift > 30):
            raise ValueError(f"layer {ql.name}: requantization constants out of range")
        fmt = formats[ql.name]
        pack(ql.weights, fmt)
        if _row_ptr_dtype(ql.weights, fmt) != _row_ptr_dtype(old.weights, fmt):
            raise ValueError(f"layer {ql.name}: {fmt} row pointers changed type")
    for variant in VARIANTS:
        if architecture_hash(new, variant, formats) != architecture_hash(deployed, variant, formats):
            raise ValueError(f"architecture hash ({variant}) changed")


def _check_arguments(deployed: QuantModel, formats: dict[str, str], captured: np.ndarray, steps: tuple[str, ...],
                     input_method: str, compensation: str) -> np.ndarray:

    bad = [s for s in steps if s not in STEPS]
    if bad:
        raise UserError(f"unknown adaptation step(s) {', '.join(bad)}: choose from {', '.join(STEPS)}")
    if input_method not in INPUT_METHODS:
        raise UserError(f"unknown input method '{input_method}': choose one of {', '.join(INPUT_METHODS)}")
    if compensation not in COMPENSATIONS:
        raise UserError(f"unknown compensation '{compensation}': choose one of {', '.join(COMPENSATIONS)}")
    x = np.asarray(captured)
    if x.dtype != np.uint8 or tuple(x.shape[1:]) != tuple(deployed.input_shape):
        raise UserError(f"captured inputs must be uint8 images {tuple(deployed.input_shape)}, got {x.dtype} "
                        f"{tuple(x.shape[1:])}")
    if len(x) < MIN_CAPTURED:
        raise UserError(f"adaptation needs at least {MIN_CAPTURED} captured inputs, got {len(x)}")
    if "monitor" in steps and len(x) < MIN_CAPTURED_MONITOR:
        raise UserError(f"refitting the drift monitor needs at least {MIN_CAPTURED_MONITOR} captured inputs "
                        f"(half train its QSAE, half are its reference), got {len(x)}")
    weighted = {ql.name for ql in deployed.layers if ql.has_weights}
    if set(formats) != weighted or any(f not in FORMATS for f in formats.values()):
        raise UserError(f"formats must give one of {', '.join(FORMATS)} for each of {', '.join(sorted(weighted))}")
    return x


# --- the adaptation ---------------------------------------------------------------------------


def _check_labels(labels: np.ndarray | None, n: int, num_classes: int) -> np.ndarray:
    """Labels aligned with the captured inputs, -1 where none came back."""
    if labels is None:
        return np.full(n, -1, dtype=np.int64)
    y = np.asarray(labels)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer) or np.any(y < -1) or np.any(y >= num_classes):
        raise UserError(f"labels must be {n} integers in 0..{num_classes - 1} (-1 for none), one per captured input")
    return y.astype(np.int64)


def split_holdout(y: np.ndarray, seed: int, fraction: float = HOLDOUT) -> tuple[np.ndarray, np.ndarray]:
    """(fit indices, held-out indices) of the captured samples: a `fraction` of the unlabeled ones is
    held out (self-training fits the others). Labeled ones are never held out: every label trains,
    and the guard judges tuning by cross-validation over them (cross_validate)."""
    unlabeled = np.random.default_rng(seed + 7).permutation(np.flatnonzero(y < 0))
    k = int(round(fraction * len(unlabeled)))
    return np.sort(np.concatenate([unlabeled[k:], np.flatnonzero(y >= 0)])), np.sort(unlabeled[:k])


def cross_validate(tune_fn: Callable[[TargetData], FloatModel], target: TargetData, seed: int,
                   folds: int = CV_FOLDS) -> np.ndarray:
    """Logits for every labeled target sample (NaN for the others) from a model tuned without its
    label (k-fold): what the guard judges the tuning by. The unlabeled inputs stay in every fold."""
    labeled = np.random.default_rng(seed + 13).permutation(target.labeled)
    logits = None
    for part in np.array_split(labeled, folds):
        y = target.y.copy()
        y[part] = -1
        out = float_logits(tune_fn(TargetData(target.x, y)), target.x[part])
        if logits is None:
            logits = np.full((len(target.y), out.shape[1]), np.nan)
        logits[part] = out
    return logits


def _as_logits(out: np.ndarray, last: Op) -> np.ndarray:
    """A network's real-valued outputs as logits: log-probabilities when it ends in a softmax."""
    return np.log(np.maximum(out, 1e-6)) if last is Op.SOFTMAX else out


def output_logits(model: QuantModel, x_uint8: np.ndarray) -> np.ndarray:
    """The int8 network's outputs in real units, as logits."""
    q = model.layers[-1].output_q
    return _as_logits((run_s8(model, to_int8(x_uint8)).astype(np.float64) - q.zero_point) * q.scale,
                      model.layers[-1].op)


def float_logits(model: FloatModel, x_float: np.ndarray) -> np.ndarray:
    """The float network's outputs as logits."""
    return _as_logits(run_f32(model, x_float).astype(np.float64), model.layers[-1].op)


def guard_estimate(model: QuantModel, temperature: float, x_uint8: np.ndarray, y: np.ndarray,
                   predictions: np.ndarray | None = None) -> dict:
    """What the host can predict about `model` on captured inputs it was not fitted to: the accuracy
    over those with labels (of `predictions` when given: cross-validated ones), and the mean
    temperature-calibrated confidence over all of them (an estimate of the accuracy that is exact for
    a calibrated model and optimistic under shift, for both models alike)."""
    if len(x_uint8) == 0:
        return {"samples": 0, "labeled": 0, "accuracy": None, "confidence": None}
    p = softmax(output_logits(model, x_uint8) / temperature, axis=1)
    lab = y >= 0
    pred = p.argmax(axis=1) if predictions is None else np.asarray(predictions)
    acc = float(np.mean(pred[lab] == y[lab])) if lab.any() else None
    return {"samples": int(len(y)), "labeled": int(lab.sum()), "accuracy": None if acc is None else round(acc, 4),
            "confidence": round(float(np.mean(p.max(axis=1))), 4),
            "cross_validated": predictions is not None}


def confidence_decision(before: dict, after: dict) -> tuple[bool, str]:
    """Without labels or a recognised corruption: ship only if the mean calibrated confidence rises
    by more than CONFIDENCE_MARGIN (it cannot see a model that became confidently wrong)."""
    if before["samples"] == 0:
        return True, "nothing to judge by"
    # strictly better: an update that is only predicted to be as good costs bytes and risk for nothing
    ship = after["confidence"] > before["confidence"] + CONFIDENCE_MARGIN
    return ship, f"confidence {before['confidence']} -> {after['confidence']}"


def guard(current: QuantModel, model: QuantModel, temperature: float, x: np.ndarray, y: np.ndarray,
          temp_set: tuple, held_idx: np.ndarray | None, fit_idx: np.ndarray, cv_logits: np.ndarray | None,
          synthetic: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """The guard step: `model` (adapted, softmax temperature `temperature`) against `current` (serving)
    on the captured inputs `x` with labels `y` (-1: none, or learnt by the serving model).

    Confidence needs no labels, and only self-training fits the unlabeled inputs' outputs: with it
    only the held-out ones (`held_idx`) judge, without it every captured input (a 200-sample
    capture's estimate is then stable). Labels judge tuning by cross-validation (`cv_logits`, over
    the fit samples `fit_idx`), anything else directly (no other step sees them). `synthetic`: labeled
    training images under the corruption the match step recognised, which no tuning saw: the guard
    then judges both models by their accuracy on those (their confidence is no witness there: the
    matched model is less confident, and far more accurate), and the field labels, when there are
    enough, veto only by a significant loss. Judged by labels alone, only a significant gain
    ships (mcnemar_p)."""
    # an adapted model's input quantization corrects the shift, so clean source images would be
    # distorted by it: its temperature is the one recorded when it was adapted
    current_temperature = current.meta.get("adapted", {}).get("temperature") or fit_temperature(
        output_logits(current, temp_set[0]), temp_set[1])
    judge = np.arange(len(x)) if held_idx is None else held_idx
    pred = None
    if cv_logits is not None:
        judge = np.union1d(judge, fit_idx[np.isfinite(cv_logits).all(axis=1)])
        pred = np.full(len(x), -1)
        pred[fit_idx] = np.where(np.isnan(cv_logits).any(axis=1), -1, np.nan_to_num(cv_logits).argmax(axis=1))
        pred = pred[judge]
    before = guard_estimate(current, current_temperature, x[judge], y[judge])
    after = guard_estimate(model, temperature, x[judge], y[judge], pred)
    labeled = before["labeled"] >= MIN_GUARD_LABELS
    if labeled:  # per labeled sample: which model got it right (the adapted one cross-validated)
        has_label = y[judge] >= 0
        lab = judge[has_label]
        served_right = output_logits(current, x[lab]).argmax(axis=1) == y[lab]
        adapted_right = (pred[has_label] if pred is not None else output_logits(model, x[lab]).argmax(axis=1)) == y[lab]
        p_gain, p_loss = mcnemar_p(served_right, adapted_right), mcnemar_p(adapted_right, served_right)
        label_reason = f"labels {before['accuracy']} -> {after['accuracy']}"
    if synthetic is None:
        if not labeled:
            ship, reason = confidence_decision(before, after)
            return {"deployed": before, "adapted": after, "ship": ship, "reason": reason}
        # a gain over 200 labels has about 2 points of noise: "strictly better" let a footwear-prior
        # update through at +1.5 predicted that lost 0.3 served; only a significant gain ships
        return {"deployed": before, "adapted": after, "ship": p_gain < LABEL_P, "p_gain": round(p_gain, 4),
                "reason": f"{label_reason} (gain p = {p_gain:.3f})"}
    # a recognised corruption: judged on 1,000 matched training images, with the field labels (if any)
    # able to veto only by a significant loss; a "strictly better" over 50 labels is a coin toss.
    syn_before, syn_after = guard_estimate(current, 1.0, *synthetic), guard_estimate(model, 1.0, *synthetic)
    ship = syn_after["accuracy"] > syn_before["accuracy"] + SYNTHETIC_MARGIN
    reason = f"accuracy on matched training images {syn_before['accuracy']} -> {syn_after['accuracy']}"
    result = {"deployed": syn_before, "adapted": syn_after, "ship": ship, "reason": reason}
    if labeled:
        result.update(ship=ship and p_loss >= LABEL_P, reason=f"{reason}; {label_reason} (loss p = {p_loss:.3f})",
                      labels={"deployed": before, "adapted": after, "p_loss": round(p_loss, 4)})
    return result


def mcnemar_p(a_right: np.ndarray, b_right: np.ndarray) -> float:
    """One-sided exact McNemar test that model b is more accurate than model a on the same labeled
    samples: were they equally accurate, the probability of at least this many samples that only b
    got right among those the two disagree on."""
    only_b = int(np.sum(b_right & ~a_right))
    disagree = only_b + int(np.sum(a_right & ~b_right))
    return 1.0 if disagree == 0 else float(binomtest(only_b, disagree, 0.5, alternative="greater").pvalue)


def adapt(run_dir: Path, deployed: QuantModel, formats: dict[str, str], captured_uint8: np.ndarray, *,
          labels: np.ndarray | None = None, steps: tuple[str, ...] = DEFAULT_STEPS, seed: int = 0,
          input_method: str = "moments", compensation: str = "lstsq", train_images: np.ndarray | None = None,
          train_labels: np.ndarray | None = None, qsae_steps: int = 2000, tune_steps: int = TUNE_STEPS,
          monitor_spec: DetectorSpec | None = None, serving: QuantModel | None = None,
          serving_seen: int = 0) -> AdaptResult:
    """New parameters for the deployed architecture from captured inputs and the labels the field
    returned for some of them (module docstring).

    run_dir: the run the deployed model was compiled from (its dataset gives the training pixel
    statistics and the replay data; a pruned run's parent is the re-pruning source). formats: the
    compiled weight format of each weighted layer. labels: one per captured input, -1 where none.
    train_images/train_labels: the training set, to avoid loading it again. serving: the model the
    device serves now, if an earlier adaptation replaced `deployed` (the guard compares with it);
    serving_seen: how many of the first captured inputs (and their labels) that adaptation used; the
    guard judges both models by the labels the serving one did not learn from."""
    t0 = time.perf_counter()
    steps = tuple(steps)
    x = _check_arguments(deployed, formats, captured_uint8, steps, input_method, compensation)
    y = _check_labels(labels, len(x), deployed.num_classes)
    fit_idx, held_idx = split_holdout(y, seed) if "guard" in steps else (np.arange(len(x)), np.arange(0))
    x_fit, y_fit = x[fit_idx], y[fit_idx]
    seconds: dict[str, float] = {}
    report: dict = {"steps": list(steps), "captured": int(len(x)), "labeled": int(np.sum(y >= 0)), "seed": seed,
                    "fit_samples": int(len(fit_idx)), "held_out": int(len(held_idx))}
    base = dequantize_model(deployed)
    deployed_out = [ql.output_q for ql in deployed.layers]
    input_q = deployed.layers[0].input_q
    if train_images is None or train_labels is None:
        dataset = load_dataset(read_run_meta(Path(run_dir))["dataset"])
        train_images, train_labels = dataset.x_train, dataset.y_train
    replay, temp_set = source_samples(train_images, train_labels, seed)
    source_prior = np.bincount(train_labels, minlength=deployed.num_classes) / len(train_labels)

    if "input" in steps:
        t = time.perf_counter()
        class_hist = pixel_histograms(train_images, train_labels, deployed.num_classes)
        x8 = to_int8(x_fit)

        def predict(q: QParams | None) -> np.ndarray:
            q = input_q if q is None else q
            quantized = quantize_model(base, input_q=q, output_qs=deployed_out)
            model = replace(deployed, input_q=quantized.input_q, layers=quantized.layers)
            return run_s8(model, x8).argmax(axis=1)

        input_q, report["input"] = estimate_input_q(x_fit, class_hist, predict, input_method)
        seconds["input"] = time.perf_counter() - t

    # labels reach the tuning only through the "tune" step
    target = TargetData(input_floats(x_fit, input_q), y_fit if "tune" in steps else np.full(len(y_fit), -1))
    source, nnz_before = base, {ql.name: int(np.count_nonzero(ql.weights)) for ql in deployed.layers if ql.has_weights}
    match: ShiftMatch | None = None
    if "match" in steps:
        t = time.perf_counter()
        match, report["match"] = identify_shift(base, x_fit, train_images, seed)
        seconds["match"] = time.perf_counter() - t
    tuning = len(target.labeled) > 0 or "selftrain" in steps or match is not None
    if tuning:  # a sparse layer keeps its nonzero pattern through tuning: its bytes are the deployed ones
        source = with_masks(source, {ql.name: ql.weights != 0 for ql in deployed.layers
                                     if ql.has_weights and formats[ql.name] != "dense"})
        # the replay is training images as the device would see them: corrupted like the capture, when
        # the match step recognised how, and then read through the corrected input quantization
        replay_data = (TargetData(input_floats(replay[0]), replay[1]) if match is None else
                       TargetData(input_floats(match.apply(replay[0], seed + 29), input_q), replay[1]))
        tune_args = dict(steps=tune_steps, pseudo="selftrain" in steps,
                         temperature=fit_temperature(float_logits(base, input_floats(temp_set[0])), temp_set[1]),
                         entropy_weight=ENTROPY_WEIGHT if "selftrain" in steps else 0.0)
    if "reprune" in steps:
        t = time.perf_counter()
        source, origin = parent_source(Path(run_dir), x_fit, input_q, seed)
        if tuning:  # the dense parent learns the target first, then the masks are picked on it
            source, report["tune_parent"] = tune(source, target, replay_data, seed=seed, **tune_args)
        source, report["reprune"] = reprune(source, deployed, formats, x_fit, input_q, seed, compensation)
        report["reprune"]["source"] = origin
        seconds["reprune"] = time.perf_counter() - t

    cv_logits = None
    if tuning:
        t = time.perf_counter()
        if "guard" in steps and len(target.labeled) >= MIN_GUARD_LABELS and "tune" in steps:
            tuned_from = source
            cv_logits = cross_validate(
                lambda data: tune(tuned_from, data, replay_data, seed=seed + 1, **tune_args)[0], target, seed)
        source, report["tune"] = tune(source, target, replay_data, seed=seed + 1, **tune_args)
        source_prior = training_prior(report["tune"], target.y, replay[1], deployed.num_classes)
        seconds["tune"] = time.perf_counter() - t
    elif "tune" in steps:
        report["tune"] = {"skipped": "no labels"}
    temperature = None  # the adapted model's softmax temperature on source data, for the steps that use it
    synthetic = None  # held-out labeled training images under the recognised corruption, as uint8
    if match is not None:
        synthetic = (match.apply(temp_set[0], seed + 31), temp_set[1])
    if tuning or "prior" in steps or "guard" in steps:
        temp_x = input_floats(temp_set[0]) if synthetic is None else input_floats(synthetic[0], input_q)
        source_logits = float_logits(source, temp_x)
        temperature = fit_temperature(source_logits, temp_set[1])
        report["temperature"] = round(temperature, 4)

    if "prior" in steps:
        t = time.perf_counter()
        if last_weighted_layer(source) is None:
            report["prior"] = {"applied": False, "reason": "no bias sets the logits"}
        else:
            confidence = class_confidence(source_logits, temp_set[1], temperature, deployed.num_classes)
            target_prior, report["prior"] = estimate_prior(float_logits(source, target.x), temperature, source_prior,
                                                           confidence)
            report["prior"]["source_prior"] = [round(float(v), 4) for v in source_prior]
            if report["prior"]["applied"]:
                source = fold_prior(source, temperature, source_prior, target_prior)
                if cv_logits is not None:  # the cross-validated models get the same correction
                    cv_logits = cv_logits + temperature * np.log(target_prior / source_prior)
        seconds["prior"] = time.perf_counter() - t

    if "calibrate" in steps:
        t = time.perf_counter()
        ranges = calibration_ranges(source, target.x)
        out_qs = [activation_qparams(*ranges[layer.name]) for layer in source.layers]  # pooling keeps its input's
        seconds["calibrate"] = time.perf_counter() - t
    else:
        out_qs = deployed_out
    quantized = quantize_model(source, input_q=input_q, output_qs=out_qs)
    meta = dict(deployed.meta, adapted={"steps": list(steps), "captured": int(len(x)), "labeled": report["labeled"],
                                        "seed": seed, "temperature": temperature})
    model = replace(deployed, input_q=quantized.input_q, layers=quantized.layers, meta=meta)
    check_same_architecture(deployed, model, formats)

    report["layers"] = [{"name": ql.name, "format": formats[ql.name], "nnz_before": nnz_before[ql.name],
                         "nnz_after": int(np.count_nonzero(ql.weights)),
                         "bytes_before": layer_bytes(old, formats[ql.name]),
                         "bytes_after": layer_bytes(ql, formats[ql.name])}
                        for old, ql in zip(deployed.layers, model.layers, strict=True) if ql.has_weights]
    report["bytes_before"] = sum(r["bytes_before"] for r in report["layers"])
    report["bytes_after"] = sum(r["bytes_after"] for r in report["layers"])
    report["output_zero_points"] = {ql.name: [old.output_q.zero_point, ql.output_q.zero_point]
                                    for old, ql in zip(deployed.layers, model.layers, strict=True) if ql.has_weights}

    ship = True
    if "guard" in steps:
        t = time.perf_counter()
        judged = np.full(len(x), -1)  # what the guard may judge by: labels the serving model did not learn
        judged[fit_idx] = y_fit
        judged[: serving_seen if serving is not None else 0] = -1
        report["guard"] = guard(deployed if serving is None else serving, model, temperature, x, judged, temp_set,
                                held_idx if "selftrain" in steps else None, fit_idx, cv_logits, synthetic)
        ship = report["guard"]["ship"]
        seconds["guard"] = time.perf_counter() - t

    monitor_qsae = monitor = None
    if "monitor" in steps:
        t = time.perf_counter()
        order = np.random.default_rng(seed).permutation(len(x))
        half = len(x) // 2
        fit_x, ref_x = x[np.sort(order[:half])], x[np.sort(order[half:])]
        monitor_qsae = build_monitor_qsae(model, fit_x, steps=qsae_steps, seed=seed)
        reference = device_telemetry(model, monitor_qsae.model, ref_x)
        monitor = build_detector(reference, model.num_classes, monitor_spec)
        report["monitor"] = {"qsae_samples": int(len(fit_x)), "reference_samples": int(len(ref_x)),
                             "qsae_hidden": monitor_qsae.qsae.hidden,
                             "thresholds": {n: round(d.threshold, 3) for n, d in monitor.detectors.items()}}
        seconds["monitor"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    report["seconds"] = {k: round(v, 2) for k, v in seconds.items()}
    return AdaptResult(model, monitor_qsae, monitor, report, ship)


def source_samples(x_train: np.ndarray, y_train: np.ndarray, seed: int) -> tuple[tuple, tuple]:
    """Two disjoint labeled samples of the training set: the replay data and the temperature set."""
    order = np.random.default_rng(seed + 11).permutation(len(x_train))
    n_replay = min(REPLAY_SAMPLES, len(order) // 2)
    r, t = order[:n_replay], order[n_replay : n_replay + TEMPERATURE_SAMPLES]
    return (x_train[r], y_train[r]), (x_train[t], y_train[t])


def training_prior(tune_report: dict, y_fit: np.ndarray, y_replay: np.ndarray, num_classes: int) -> np.ndarray:
    """The class frequencies the tuned model was trained on (half replay, half target), the prior its
    posteriors are calibrated for."""
    replay = np.bincount(y_replay, minlength=num_classes) / max(len(y_replay), 1)
    labeled = y_fit[y_fit >= 0]
    if not len(labeled):
        return replay
    target = np.bincount(labeled, minlength=num_classes) / len(labeled)
    share = tune_report["labeled_share"]
    return np.maximum(0.5 * replay + 0.5 * (share * target + (1 - share) * replay), PRIOR_FLOOR)
