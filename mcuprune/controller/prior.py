"""Class-prior re-estimation for a deployed classifier, folded into its last layer's bias.

When only the mix of classes changes (p(x|y) fixed, p(y) moved), Bayes' rule says the posterior
under the new prior is the old one reweighted: p_t(y|x) ∝ p_s(y|x) · π_t(y) / π_s(y) (Saerens,
Latinne & Decaestecker 2002). π_t is unknown without labels, but it is the fixed point of EM on the
model's own posteriors over the unlabeled target inputs: π ← mean_x p_π(y|x). Two things make this
usable on an int8 network:

* The reweighting needs *calibrated* posteriors. A network's softmax is usually overconfident, so a
  temperature T is fitted first on labeled source data (minimum NLL of softmax(z / T)).
* argmax(z / T + log r) = argmax(z + T · log r): the correction is a constant per class added to
  the logits, i.e. T · log(π_t / π_s) added to the last layer's bias before quantization.

Two tests keep the source prior. A likelihood-ratio test: the data give no evidence of a change.
And a label-shift consistency test: on a shift that is not a prior change (noise, rotation, a
lighting change) EM still drifts towards the classes the damaged inputs are mistaken for, and
folding that in reinforces the mistakes (measured: −4 to −12 points). Under a pure prior change
p(x|y) is the source's, so the mean calibrated confidence on the target must be what the source
gives per class, weighted by the estimated prior: Σ_y π_t(y) · E_source[confidence | y]. Damaged
inputs are seen with less confidence than that; the prior is then not folded in.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy.special import log_softmax, softmax
from scipy.stats import chi2

from mcuprune.model.ir import UNBOUNDED, FloatModel, Op

TEMPERATURES = np.exp(np.linspace(np.log(0.25), np.log(8.0), 121))
EM_ITERATIONS = 200
EM_TOLERANCE = 1e-7
PRIOR_FLOOR = 1e-3  # no class's prior goes below this: log(0) would remove the class for good
PRIOR_ALPHA = 1e-3  # significance of the likelihood-ratio test for a prior change
CONFIDENCE_SLACK = 0.005  # beyond one standard error: temperature and int8 rounding are not exact


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The T > 0 that minimises the NLL of softmax(logits / T) on labeled data (grid over 0.25..8)."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    nll = [-np.mean(log_softmax(z / t, axis=1)[np.arange(len(y)), y]) for t in TEMPERATURES]
    return float(TEMPERATURES[int(np.argmin(nll))])


def em_prior(posteriors: np.ndarray, source_prior: np.ndarray) -> tuple[np.ndarray, int]:
    """EM estimate of the target prior from source-calibrated posteriors (N, K); (prior, iterations)."""
    p = np.asarray(posteriors, dtype=np.float64)
    src = np.asarray(source_prior, dtype=np.float64)
    prior = src.copy()
    for it in range(1, EM_ITERATIONS + 1):
        w = p * (prior / src)
        w /= w.sum(axis=1, keepdims=True)
        new = np.maximum(w.mean(axis=0), PRIOR_FLOOR)
        new /= new.sum()
        if np.max(np.abs(new - prior)) < EM_TOLERANCE:
            return new, it
        prior = new
    return prior, EM_ITERATIONS


def prior_log_likelihood(posteriors: np.ndarray, source_prior: np.ndarray, prior: np.ndarray) -> float:
    """log p(x_1..N | π) up to a constant independent of π: Σ_i log Σ_y p_s(y|x_i) π(y) / π_s(y)."""
    p = np.asarray(posteriors, dtype=np.float64)
    return float(np.sum(np.log(np.maximum(p @ (np.asarray(prior) / np.asarray(source_prior)), 1e-300))))


def class_confidence(logits: np.ndarray, y: np.ndarray, temperature: float, num_classes: int) -> np.ndarray:
    """Mean calibrated confidence (max softmax) of labeled source samples, per true class."""
    conf = softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1).max(axis=1)
    y = np.asarray(y)
    overall = float(conf.mean())
    return np.array([conf[y == c].mean() if np.any(y == c) else overall for c in range(num_classes)])


def estimate_prior(logits: np.ndarray, temperature: float, source_prior: np.ndarray, source_confidence: np.ndarray,
                   alpha: float = PRIOR_ALPHA) -> tuple[np.ndarray, dict]:
    """The target prior to fold in (the source prior unless both tests in the module docstring pass)
    and a report. source_confidence: class_confidence() of the same model on source data."""
    src = np.asarray(source_prior, dtype=np.float64)
    post = softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    prior, iterations = em_prior(post, src)
    statistic = 2.0 * (prior_log_likelihood(post, src, prior) - prior_log_likelihood(post, src, src))
    p_value = float(chi2.sf(max(statistic, 0.0), df=len(src) - 1))
    conf = post.max(axis=1)
    expected = float(prior @ np.asarray(source_confidence, dtype=np.float64))
    tolerance = float(conf.std()) / np.sqrt(len(conf)) + CONFIDENCE_SLACK
    consistent = float(conf.mean()) >= expected - tolerance
    applied = p_value < alpha and consistent
    report = {"temperature": round(temperature, 4), "em_iterations": iterations,
              "estimated_prior": [round(float(v), 4) for v in prior],
              "lr_statistic": round(float(statistic), 2), "p_value": p_value,
              "confidence": round(float(conf.mean()), 4), "confidence_expected": round(expected, 4),
              "label_shift_consistent": bool(consistent), "applied": bool(applied)}
    return (prior if applied else src), report


def last_weighted_layer(model: FloatModel) -> int | None:
    """Index of the layer whose bias sets the logits: the last weighted layer, when only a softmax (or
    nothing) follows it and it has no clamp (a ReLU'd output cannot take a per-class offset)."""
    for i in range(len(model.layers) - 1, -1, -1):
        layer = model.layers[i]
        if layer.weights is not None:
            return i if tuple(layer.clamp) == UNBOUNDED else None
        if layer.op is not Op.SOFTMAX:
            return None
    return None


def fold_prior(model: FloatModel, temperature: float, source_prior: np.ndarray, target_prior: np.ndarray) -> FloatModel:
    """`model` with T · log(π_t / π_s) added to its logit layer's bias (argmax = the target-prior
    Bayes decision under temperature-calibrated posteriors)."""
    i = last_weighted_layer(model)
    if i is None:
        raise ValueError(f"{model.name}: no bias sets the logits (last weighted layer is clamped or followed by "
                         "more than a softmax)")
    layer = model.layers[i]
    ratio = np.asarray(target_prior, dtype=np.float64) / np.asarray(source_prior, dtype=np.float64)
    shift = temperature * np.log(ratio)
    layers = list(model.layers)
    layers[i] = replace(layer, bias=(layer.bias.astype(np.float64) + shift).astype(np.float32))
    return replace(model, layers=tuple(layers))
