"""Per-inference TELEMETRY, computed on the host exactly as the firmware will compute it.

Every quantity is defined on int8 tensors the device already holds, with integer arithmetic only,
so that the C side can reproduce it bit for bit (the numpy int8 reference interpreter gives the
device's tensors, hence these functions give the device's telemetry):

* ``a``  int8[D]  the penultimate activations: the input of the last layer, i.e. the output of
  ``model.layers[-2]`` (scale s_a, zero point z_a);
* ``r``  int8[D]  the QSAE reconstruction of ``a``, produced by the two QSAE layers (encoder dense
  + ReLU, decoder dense) run on the buffer ``a`` with the ordinary int8 kernels. The QSAE is built
  (monitor_qsae.py) so that its input quantization *is* that of ``a`` and its output quantization
  is *also* (s_a, z_a), so ``a`` and ``r`` are directly comparable integers;
* ``l``  int8[K]  the logits (scale s_l).

Definitions (C in the comments; all loops over the stated ranges):

    top1        = the first j with l[j] == max(l)                   (uint8; first index wins ties)
    recon_error = sum_j (a[j] - r[j])^2                             (uint32; exact for D <= 66051)
        uint32_t e = 0; for (j...) { int32_t d = (int32_t)a[j] - r[j]; e += (uint32_t)(d * d); }
    hist[b]     = #{ j : ((uint8_t)(a[j] + 128)) >> 4 == b },  b = 0..15   (uint16 each; sums to D)
        bin b covers the int8 values -128 + 16 b .. -113 + 16 b
    confidence  = 2^30 / S  (integer division, uint32; 32768 = 1.0 in Q15), where
        S = sum_j EXP_Q15[max(l) - l[j]]  (uint32; exact for K <= 131071) and
        EXP_Q15[d] = round(32768 * exp(-s_l * d)), d = 0..255: a 256-entry uint16 table that the
        host computes once per model (``exp_table``) and the code generator emits as a const array.
    count       = the device's inference counter (uint32, wraps), incremented once per inference.

``confidence`` is the softmax probability of the top class, 1 / sum_j exp(s_l (l_j - l_max)), in
Q15 with the exponentials tabulated: the logits' zero point cancels, and the only rounding is the
table's (|error| < 1e-3 for K = 10, see ``top1_confidence``, the float value it approximates).

A suggested TELEMETRY payload (little-endian, 43 bytes): u32 count | u8 top1 | u16 confidence |
u32 recon_error | u16 hist[16].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HIST_BINS = 16
HIST_SHIFT = 4  # bin = (q + 128) >> HIST_SHIFT: 16 bins of 16 int8 values
Q15_ONE = 1 << 15
CONFIDENCE_NUMERATOR = 1 << 30  # Q15 * Q15: confidence = 2^30 / S is the probability in Q15
MAX_RECON_DIM = 66051  # largest D for which D * 255^2 fits in uint32


def _as_rows(x: np.ndarray) -> np.ndarray:
    """(N, ...) or a single vector -> (N, features) int64."""
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[None, :]
    return x.reshape(x.shape[0], -1).astype(np.int64)


def top1(logits: np.ndarray) -> np.ndarray:
    """int8 logits (N, K) -> predicted class (N,) int64; the first maximum wins, as on the device."""
    return np.argmax(_as_rows(logits), axis=1)


def activation_histogram(act: np.ndarray) -> np.ndarray:
    """int8 activations (N, ...) -> counts (N, 16) int64 of ``(q + 128) >> 4`` per row."""
    rows = _as_rows(act)
    if rows.min(initial=0) < -128 or rows.max(initial=0) > 127:
        raise ValueError("activation_histogram expects int8 values")
    bins = (rows + 128) >> HIST_SHIFT
    offsets = np.arange(len(rows))[:, None] * HIST_BINS
    flat = np.bincount((bins + offsets).ravel(), minlength=len(rows) * HIST_BINS)
    return flat.reshape(len(rows), HIST_BINS)


def reconstruction_error(act: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """sum_j (a_j - r_j)^2 per row, as int64 (N,): both int8 in the same quantization."""
    a, r = _as_rows(act), _as_rows(recon)
    if a.shape != r.shape:
        raise ValueError(f"activations {a.shape} and reconstruction {r.shape} differ in shape")
    if a.shape[1] > MAX_RECON_DIM:
        raise ValueError(f"D = {a.shape[1]} overflows the device's uint32 error (max {MAX_RECON_DIM})")
    return np.sum((a - r) ** 2, axis=1)


def exp_table(logit_scale: float) -> np.ndarray:
    """EXP_Q15[d] = round(32768 * exp(-logit_scale * d)) for d = 0..255, as uint16 (EXP_Q15[0] = 32768)."""
    if not logit_scale > 0:
        raise ValueError(f"logit scale must be positive, got {logit_scale}")
    d = np.arange(256, dtype=np.float64)
    return np.rint(Q15_ONE * np.exp(-float(logit_scale) * d)).astype(np.uint16)


def top1_confidence_q15(logits: np.ndarray, table: np.ndarray) -> np.ndarray:
    """The device's confidence: 2^30 // sum_j table[max(l) - l_j], per row (N,) int64, Q15."""
    rows = _as_rows(logits)
    gaps = rows.max(axis=1, keepdims=True) - rows  # 0..255
    denominator = np.asarray(table, dtype=np.int64)[gaps].sum(axis=1)
    return CONFIDENCE_NUMERATOR // denominator


def top1_confidence(logits: np.ndarray, logit_scale: float) -> np.ndarray:
    """Float softmax probability of the top class of the dequantized logits (N,) float64."""
    z = float(logit_scale) * _as_rows(logits).astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    return 1.0 / np.exp(z).sum(axis=1)


@dataclass(frozen=True, eq=False)
class Telemetry:
    """A batch of per-inference telemetry records, in stream order (what the device sends)."""

    count: np.ndarray  # int64 (N,) inference counter
    top1: np.ndarray  # int64 (N,)
    confidence_q15: np.ndarray  # int64 (N,), 32768 = 1.0
    recon_error: np.ndarray  # int64 (N,)
    histogram: np.ndarray  # int64 (N, 16)

    def __len__(self) -> int:
        return len(self.count)

    def record(self, i: int) -> dict:
        """One record as a JSON-friendly dict (the host controller's parsed TELEMETRY frame)."""
        return {
            "count": int(self.count[i]),
            "top1": int(self.top1[i]),
            "confidence_q15": int(self.confidence_q15[i]),
            "recon_error": int(self.recon_error[i]),
            "histogram": [int(v) for v in self.histogram[i]],
        }

    def select(self, index: np.ndarray | slice) -> Telemetry:
        return Telemetry(self.count[index], self.top1[index], self.confidence_q15[index],
                         self.recon_error[index], self.histogram[index])


def telemetry_from_tensors(logits: np.ndarray, act: np.ndarray, recon: np.ndarray, table: np.ndarray,
                           first_count: int = 0) -> Telemetry:
    """Telemetry of a batch from the int8 logits, penultimate activations and QSAE reconstruction."""
    n = len(_as_rows(logits))
    return Telemetry(
        count=(first_count + np.arange(n, dtype=np.int64)) % (1 << 32),
        top1=top1(logits),
        confidence_q15=top1_confidence_q15(logits, table),
        recon_error=reconstruction_error(act, recon),
        histogram=activation_histogram(act),
    )


def concat(parts: list[Telemetry]) -> Telemetry:
    return Telemetry(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                       ("count", "top1", "confidence_q15", "recon_error", "histogram")))
