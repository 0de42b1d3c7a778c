"""QSAE: a small quantization-aware sparse autoencoder over a layer's activation vectors.

    f(x) = ReLU(W_e x + b_e)        encoder, hidden size H (small: a fraction of D)
    g(h) = W_d h + b_d              decoder, back to D
    loss = mean ‖x − g(f(x))‖² / D + λ (‖W_e‖₁ + ‖W_d‖₁)

Training sees x divided by its global RMS (one scalar per layer, so λ means the same thing on
every layer while features keep their relative sizes). Both weight matrices are fake-quantized to
int8 in the forward pass — per output channel (row), symmetric, [-127, 127], as quantize.py does
for deployed layers — with a straight-through estimator for the gradient. The L1 term is applied
as a proximal step after every Adam step, in Adam's own metric (soft-thresholding coordinate i by
lr·λ/(√v̂_i + ε), ``_prox_l1``), which gives exact zeros instead of weights that dither around 0;
the learning rate decays to 0 on a cosine.

The trained QSAE keeps the *fake-quantized* weights, so they are exactly int8 values times a
per-row scale, and ``qsae_to_float_model`` exports it as a two-layer FloatModel that the normal
int8 pipeline quantizes without changing a weight. Its input is the activation vector mapped to
[0, 1] (``(x - input_lo) / (input_hi - input_lo)``, clipped), because the pipeline's input
quantization is that of uint8 images; the affine map is folded into the encoder. Its output is in
the activation's own units.

An input feature j whose int8 encoder column W_e[:, j] is all zero never reaches the code: the
autoencoder reconstructs x without it. ``unused_inputs`` lists those features; pruning removes
them from the target network (see prune.py and docs/pruning.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mcuprune.model.ir import RELU, FloatLayer, FloatModel, Op

DEFAULT_STEPS = 2000
DEFAULT_LR = 1e-2
DEFAULT_BATCH = 256


@dataclass(frozen=True, eq=False)
class QSAE:
    w_enc: np.ndarray  # float32 (H, D): int8 values times w_enc_scale per row, for inputs x / x_scale
    b_enc: np.ndarray  # float32 (H,)
    w_dec: np.ndarray  # float32 (D, H): int8 values times w_dec_scale per row, outputs x / x_scale
    b_dec: np.ndarray  # float32 (D,)
    x_scale: float  # global RMS of the training vectors
    input_lo: float  # range of the training vectors (for the [0, 1] input of the exported model)
    input_hi: float
    lam: float

    @property
    def inputs(self) -> int:
        return int(self.w_enc.shape[1])

    @property
    def hidden(self) -> int:
        return int(self.w_enc.shape[0])

    def encode(self, x: np.ndarray) -> np.ndarray:
        return np.maximum((x / self.x_scale) @ self.w_enc.T + self.b_enc, 0.0)

    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        """g(f(x)) in the units of x (float, the weights as quantized)."""
        return (self.encode(np.asarray(x, dtype=np.float32)) @ self.w_dec.T + self.b_dec) * self.x_scale


def int8_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row symmetric int8 (same rule as quantize.quantize_weights): (int8 values, scales)."""
    max_abs = np.abs(w).max(axis=1)
    scales = np.where(max_abs > 0, max_abs / 127.0, 1.0)
    return np.clip(np.round(w / scales[:, None]), -127, 127).astype(np.int8), scales


def unused_inputs(qsae: QSAE) -> np.ndarray:
    """Input features whose int8 encoder column is all zero (sorted indices)."""
    q, _ = int8_rows(qsae.w_enc)
    return np.flatnonzero(~q.any(axis=0))


def reconstruction_error(qsae: QSAE, x: np.ndarray) -> float:
    """Relative reconstruction error: ‖x − g(f(x))‖² / ‖x − mean(x)‖² over the rows of x
    (the fraction of variance not explained; 0 is perfect, 1 is as good as predicting the mean)."""
    x = np.asarray(x, dtype=np.float64)
    err = np.sum((x - qsae.reconstruct(x)) ** 2)
    var = np.sum((x - x.mean(axis=0)) ** 2)
    return float(err / var) if var > 0 else float(err > 0)


def _fake_quant(w):
    """Per-row symmetric int8 fake quantization with a straight-through gradient."""
    scale = w.detach().abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
    q = torch.clamp(torch.round(w / scale), -127, 127) * scale
    return w + (q - w).detach()


def _prox_l1(w, opt, lam: float) -> None:
    """Soft-threshold w in Adam's metric: the proximal step of lam * ||w||_1 after an Adam step.

    Adam moves coordinate i by lr / (sqrt(v_i) + eps) times its gradient, so the L1 term's
    step is lr * lam / (sqrt(v_i) + eps) in the same units; a coordinate whose reconstruction
    gradient stays below lam in size is driven to, and kept at, exactly 0."""
    state = opt.state[w]
    group = opt.param_groups[0]
    beta2 = group["betas"][1]
    v_hat = state["exp_avg_sq"] / (1.0 - beta2 ** float(state["step"]))
    threshold = group["lr"] * lam / (v_hat.sqrt() + group["eps"])
    w.copy_(torch.sign(w) * torch.clamp(w.abs() - threshold, min=0.0))


def train_qsae(x: np.ndarray, hidden: int, lam: float, steps: int = DEFAULT_STEPS, seed: int = 0,
               lr: float = DEFAULT_LR, batch: int = DEFAULT_BATCH) -> QSAE:
    """Train a QSAE on activation vectors x (N, D): Adam, cosine learning-rate decay to 0, seeded."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"QSAE needs activation vectors (N, D), got shape {x.shape}")
    if hidden < 1 or not lam >= 0:
        raise ValueError(f"QSAE needs hidden >= 1 and lambda >= 0, got {hidden}, {lam}")
    x_scale = float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) or 1.0
    g = torch.Generator().manual_seed(seed)
    d = x.shape[1]
    w_e = (torch.randn(hidden, d, generator=g) / np.sqrt(d)).requires_grad_(True)
    w_d = (torch.randn(d, hidden, generator=g) / np.sqrt(hidden)).requires_grad_(True)
    b_e = torch.zeros(hidden, requires_grad=True)
    b_d = torch.from_numpy(x.mean(axis=0) / x_scale).requires_grad_(True)
    opt = torch.optim.Adam([w_e, b_e, w_d, b_d], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1.0 + np.cos(np.pi * min(t, steps) / steps)))
    data = torch.from_numpy(x / x_scale)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add overhead
    try:
        for _ in range(steps):
            xb = data[torch.randint(len(data), (min(batch, len(data)),), generator=g)]
            h = torch.relu(xb @ _fake_quant(w_e).T + b_e)
            loss = torch.mean((xb - (h @ _fake_quant(w_d).T + b_d)) ** 2)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                for w in (w_e, w_d):
                    _prox_l1(w, opt, lam)
            sched.step()
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        w_e_q, w_d_q = _fake_quant(w_e).numpy(), _fake_quant(w_d).numpy()
    return QSAE(w_enc=w_e_q.astype(np.float32), b_enc=b_e.detach().numpy().astype(np.float32),
                w_dec=w_d_q.astype(np.float32), b_dec=b_d.detach().numpy().astype(np.float32),
                x_scale=x_scale, input_lo=float(x.min()), input_hi=float(x.max()), lam=float(lam))


def qsae_to_float_model(qsae: QSAE, name: str = "qsae") -> FloatModel:
    """Encoder (dense + ReLU) and decoder (dense, linear) as a FloatModel with input shape (1, 1, D).

    The model's input is u = (x − input_lo) / (input_hi − input_lo) in [0, 1] (see ``to_unit``),
    its output x̂ in the units of x. Each weight row is the QSAE's int8 row times one scalar, so
    quantize_model reproduces the QSAE's int8 weights."""
    span = (qsae.input_hi - qsae.input_lo) or 1.0
    # W_e (lo + span * u) / s + b_e = (W_e * span / s) u + (b_e + W_e lo / s)
    w_e = (qsae.w_enc * (span / qsae.x_scale)).astype(np.float32)
    b_e = (qsae.b_enc + qsae.w_enc.sum(axis=1) * (qsae.input_lo / qsae.x_scale)).astype(np.float32)
    w_d = (qsae.w_dec * qsae.x_scale).astype(np.float32)
    b_d = (qsae.b_dec * qsae.x_scale).astype(np.float32)
    d, h = qsae.inputs, qsae.hidden
    layers = (
        FloatLayer("encoder", Op.DENSE, (d,), (h,), w_e, b_e, clamp=RELU),
        FloatLayer("decoder", Op.DENSE, (h,), (d,), w_d, b_d),
    )
    return FloatModel(name=name, input_shape=(1, 1, d), num_classes=d, layers=layers)


def to_unit(qsae: QSAE, x: np.ndarray) -> np.ndarray:
    """Activation vectors (N, D) -> the exported model's input (N, 1, 1, D) in [0, 1]."""
    span = (qsae.input_hi - qsae.input_lo) or 1.0
    u = np.clip((np.asarray(x, dtype=np.float32) - qsae.input_lo) / span, 0.0, 1.0)
    return u.reshape(len(u), 1, 1, -1)


def to_uint8_images(qsae: QSAE, x: np.ndarray) -> np.ndarray:
    """Activation vectors -> uint8 'images' (N, 1, 1, D) for quantize_model calibration / inference."""
    return np.rint(to_unit(qsae, x) * 255.0).astype(np.uint8)


LAMBDA_PATH = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2)
DEFAULT_TOLERANCE = 0.05


def hidden_size(inputs: int) -> int:
    """The default hidden size: half the input width (at least 2)."""
    return max(2, inputs // 2)


@dataclass(frozen=True, eq=False)
class Selection:
    """The QSAE chosen on a λ path and what it lets pruning remove."""
    qsae: QSAE
    error: float  # held-out relative reconstruction error
    unused: np.ndarray  # input features whose int8 encoder column is zero
    path: list[dict]  # every λ tried: lam, error, unused count


def select_qsae(x: np.ndarray, tolerance: float = DEFAULT_TOLERANCE, lambdas: tuple[float, ...] = LAMBDA_PATH,
                hidden: int | None = None, steps: int = DEFAULT_STEPS, seed: int = 0) -> Selection:
    """Train a QSAE per λ (ascending) and keep the one with the largest λ whose held-out relative
    reconstruction error is ≤ `tolerance` (the smallest λ if none is). 20 % of the rows (seeded)
    are held out."""
    x = np.asarray(x, dtype=np.float32)
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = max(1, len(x) // 5) if len(x) > 1 else 0
    val, train = (x[order[:n_val]], x[order[n_val:]]) if n_val else (x, x)
    hidden = hidden or hidden_size(x.shape[1])
    best: Selection | None = None
    path = []
    for lam in sorted(lambdas):
        q = train_qsae(train, hidden, lam, steps=steps, seed=seed)
        err = reconstruction_error(q, val)
        unused = unused_inputs(q)
        path.append({"lam": lam, "error": round(err, 5), "unused": int(unused.size)})
        if best is None or err <= tolerance:
            best = Selection(q, err, unused, path)
    return Selection(best.qsae, best.error, best.unused, path)


def save_qsae(qsae: QSAE, path) -> None:
    np.savez(path, w_enc=qsae.w_enc, b_enc=qsae.b_enc, w_dec=qsae.w_dec, b_dec=qsae.b_dec,
             scalars=np.array([qsae.x_scale, qsae.input_lo, qsae.input_hi, qsae.lam]))


def load_qsae(path) -> QSAE:
    with np.load(path) as npz:
        x_scale, lo, hi, lam = (float(v) for v in npz["scalars"])
        return QSAE(npz["w_enc"], npz["b_enc"], npz["w_dec"], npz["b_dec"], x_scale, lo, hi, lam)
