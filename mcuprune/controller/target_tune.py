"""Fine-tuning a deployed (or parent) float model towards the captured target data.

    tune(model, target, replay, steps=..., seed=...) -> FloatModel

Every batch mixes two halves:

* **target**: captured inputs (already through the input correction). Those with a label (field
  feedback, LABEL) are trained on with cross-entropy. Those without one are trained on their
  *confident pseudo-label* (the prediction of the model as it was before tuning, kept only where its
  temperature-calibrated confidence reaches PSEUDO_CONFIDENCE) plus an entropy-minimisation term on
  all of them (Grandvalet & Bengio 2005; the pseudo-label rule is Lee 2013's). Labeled samples
  are drawn LABELED_SHARE of the target half when there are any, so that a few dozen labels are not
  drowned by hundreds of pseudo-labels.
* **replay**: labeled source (training) images, so that the model does not forget the classes the
  capture happens to lack (a class-prior change would otherwise teach it that they are rare).

Masks stay fixed (IRModule applies them after every step) and narrower-than-int8 weights are
fake-quantized, so the result has the deployed nonzero pattern and packs into the deployed formats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import softmax

from mcuprune.model.interpreter import run_f32
from mcuprune.model.ir import FloatModel
from mcuprune.train.ir_module import IRModule

STEPS = 300
BATCH = 64  # per half
LR = 5e-4
PSEUDO_CONFIDENCE = 0.9
ENTROPY_WEIGHT = 0.1
LABELED_SHARE = 0.5
REPLAY_WEIGHT = 1.0  # of the replay half's loss against the target half's


@dataclass(frozen=True)
class TargetData:
    """Captured inputs as the model computes on them (float NHWC) and their labels (-1: none)."""
    x: np.ndarray
    y: np.ndarray

    @property
    def labeled(self) -> np.ndarray:
        return np.flatnonzero(self.y >= 0)

    @property
    def unlabeled(self) -> np.ndarray:
        return np.flatnonzero(self.y < 0)


def _nchw(x: np.ndarray) -> torch.Tensor:
    x = np.asarray(x, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2) if x.ndim == 4 else x))


def pseudo_labels(model: FloatModel, x: np.ndarray, temperature: float,
                  threshold: float = PSEUDO_CONFIDENCE) -> np.ndarray:
    """The model's prediction where its calibrated confidence reaches `threshold`, else -1."""
    p = softmax(run_f32(model, np.asarray(x, dtype=np.float32)).astype(np.float64) / temperature, axis=1)
    return np.where(p.max(axis=1) >= threshold, p.argmax(axis=1), -1)


def tune(model: FloatModel, target: TargetData, replay: TargetData, *, steps: int = STEPS, seed: int = 0,
         lr: float = LR, temperature: float = 1.0, pseudo: bool = True,
         entropy_weight: float = ENTROPY_WEIGHT, replay_weight: float = REPLAY_WEIGHT) -> tuple[FloatModel, dict]:
    """Fine-tune `model` (masks fixed) on target + replay batches (module docstring); (model, report)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    pseudo_y = np.full(len(target.y), -1)
    if pseudo and len(target.unlabeled):
        pseudo_y[target.unlabeled] = pseudo_labels(model, target.x[target.unlabeled], temperature)
    labeled, pseudo_idx = target.labeled, np.flatnonzero(pseudo_y >= 0)
    unlabeled = target.unlabeled
    y_target = np.where(target.y >= 0, target.y, pseudo_y)
    module = IRModule(model, quantization_aware=True)
    module.train()
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + np.cos(np.pi * s / max(steps, 1))))
    xt, yt = _nchw(target.x), torch.from_numpy(y_target.astype(np.int64))
    xr, yr = _nchw(replay.x), torch.from_numpy(replay.y.astype(np.int64))
    n_lab = 0 if not len(labeled) else (BATCH if not len(unlabeled) else int(round(LABELED_SHARE * BATCH)))
    for _ in range(steps):
        opt.zero_grad()
        ridx = torch.from_numpy(rng.integers(0, len(yr), BATCH))
        loss = replay_weight * F.cross_entropy(module(xr[ridx]), yr[ridx])
        parts = []
        if n_lab:
            parts.append(rng.choice(labeled, n_lab))
        if len(pseudo_idx) and n_lab < BATCH:
            parts.append(rng.choice(pseudo_idx, BATCH - n_lab))
        if parts:
            tidx = torch.from_numpy(np.concatenate(parts))
            loss = loss + F.cross_entropy(module(xt[tidx]), yt[tidx])
        if entropy_weight > 0 and len(unlabeled):
            uidx = torch.from_numpy(rng.choice(unlabeled, BATCH))
            logp = F.log_softmax(module(xt[uidx]) / temperature, dim=1)
            loss = loss - entropy_weight * (logp.exp() * logp).sum(dim=1).mean()
        loss.backward()
        opt.step()
        schedule.step()
        module.apply_masks()
    report = {"steps": steps, "lr": lr, "labeled": int(len(labeled)), "pseudo_labeled": int(len(pseudo_idx)),
              "unlabeled": int(len(unlabeled)), "replay": int(len(replay.y)), "labeled_share": n_lab / BATCH,
              "pseudo_confidence": PSEUDO_CONFIDENCE if pseudo else None, "entropy_weight": entropy_weight}
    return module.to_float_model(), report
