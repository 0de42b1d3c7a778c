"""Pruning a trained run under a flash or KL budget: QSAE + KL (ours) and magnitude baselines.

    prune_run(RUN, method, flash_budget | kl_budget, finetune_epochs, OUT) -> report

writes OUT as a normal run directory (train.save_run: checkpoint with the pruning masks, run.json)
that `mcuprune compile` and `mcuprune evaluate` take unchanged. Structured removal shrinks the
layer specs, so OUT may hold a smaller architecture than RUN. run.json gets a ``pruning`` report.

Methods (docs/pruning.md has the reasoning):

* ``qsae``: (1) capture activations on a calibration subset of the training set; (2) for each
  producer layer (every conv/dense layer but the last), pick a QSAE on its output vectors
  (qsae.select_qsae) and remove the features its int8 encoder ignores (structured.shrink, means
  folded into dense consumers); (3) capture again, build each layer's τ candidates from the
  importance |w_ij|·‖x_j‖₂ with their bytes and KL (importance.py), and choose one τ per layer
  (budget.py: knapsack for a flash budget, per-layer KL ≤ eps for a KL budget); (4) fine-tune with
  the masks fixed (train.fit).
* ``magnitude``: global |w| pruning on Zhu & Gupta's cubic schedule during the fine-tune
  (baselines.py), ending at the flash budget.
* ``magnitude-oneshot``: global |w| pruning to the flash budget, then the same fine-tune.

All methods prune the same layers, count bytes the same way and fine-tune for the same epochs
with the same learning rate, batch, data order and seed.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from mcuprune.compress.activations import CAPTURED_OPS, LayerCapture, apply_rows, capture_activations, tensor_rows
from mcuprune.compress.budget import (
    Candidate,
    best_format,
    check_kl_budget,
    choose_by_bytes,
    choose_by_kl,
    emitted,
    min_bytes,
    packed_layer_bytes,
    plan_bytes,
)
from mcuprune.compress.importance import layer_front, mask_for
from mcuprune.compress.kl import output_kl
from mcuprune.compress.magnitude import (
    finetune,
    global_magnitude_masks,
    global_threshold,
    gradual_schedule,
    magnitudes,
    sparsity_for_budget,
)
from mcuprune.compress.qsae import (
    DEFAULT_STEPS,
    DEFAULT_TOLERANCE,
    LAMBDA_PATH,
    hidden_size,
    reconstruction_error,
    save_qsae,
    select_qsae,
    train_qsae,
)
from mcuprune.compress.structured import channel_groups, consumer_of, hwc_to_chw_columns, remove_channels, shrink
from mcuprune.errors import UserError
from mcuprune.model.interpreter import run_f32, run_s8
from mcuprune.model.ir import FloatModel, Op
from mcuprune.quantize import calibration_subset, quantize_image_model, quantize_weights
from mcuprune.train.datasets import Dataset, load_dataset, to_float, to_int8
from mcuprune.train.ir_module import IRModule, with_masks
from mcuprune.train.layout import ir_masks_to_torch
from mcuprune.train.runs import read_run_meta, write_imported_run
from mcuprune.train.training import (
    accuracy,
    export_float_model,
    fit,
    load_run_model,
    load_torch_model,
    save_run,
    torch_predict_logits,
)

METHODS = ("qsae", "magnitude", "magnitude-oneshot")
CALIBRATION_SAMPLES = 2000
DEFAULT_FINETUNE_EPOCHS = 3
DEFAULT_FINETUNE_LR = 1e-3
ACCOUNTING = "parameter bytes as `mcuprune compile --objective smallest` emits them for a DSP board"
UNPRUNED = Candidate(tau=0.0, sparsity=0.0, bytes=0, kl=0.0)  # a weighted layer the method leaves alone


def check_arguments(method: str, flash_budget, kl_budget, finetune_epochs: int) -> None:
    """One clear UserError for every bad combination (before any work is done)."""
    if method not in METHODS:
        raise UserError(f"unknown pruning method '{method}': choose one of {', '.join(METHODS)}")
    if (flash_budget is None) == (kl_budget is None):
        raise UserError("give exactly one budget: a flash budget in bytes or a KL budget in nats")
    if flash_budget is not None:
        if isinstance(flash_budget, bool) or not isinstance(flash_budget, (int, np.integer)) or flash_budget <= 0:
            raise UserError(f"the flash budget must be a whole number of bytes > 0, got {flash_budget}")
    else:
        check_kl_budget(kl_budget)
        if method != "qsae":
            raise UserError(f"method '{method}' prunes to a flash budget; a KL budget needs method 'qsae'")
    if isinstance(finetune_epochs, bool) or not isinstance(finetune_epochs, int) or finetune_epochs < 0:
        raise UserError(f"fine-tune epochs must be a whole number >= 0, got {finetune_epochs}")


# --- helpers over the run -------------------------------------------------------------------


class _Net:
    """A torch network with its specs and masks, and its FloatModel on demand."""
    def __init__(self, net, specs: list[dict], masks: list, meta: dict) -> None:
        self.net, self.specs, self.masks, self.meta = net, specs, masks, meta

    def float_model(self, masks: list | None = None) -> FloatModel:
        return export_float_model(self.net, self.specs, tuple(self.meta["input_shape"]), self.meta["name"],
                                  self.meta["num_classes"], self.masks if masks is None else masks)

    def param_count(self) -> int:
        return int(sum(p.numel() for p in self.net.parameters()))


def _structured_qsae(state: _Net, calib: np.ndarray, tolerance: float, steps: int,
                     seed: int) -> tuple[_Net, list[dict]]:
    """QSAE per producer layer; remove the features its int8 encoder ignores. (new state, report)."""
    model = state.float_model()
    caps = capture_activations(model, to_float(calib), seed=seed)
    remove: dict[int, np.ndarray] = {}
    fold: dict[int, np.ndarray] = {}
    report = []
    for i, layer in enumerate(model.layers):
        consumer = consumer_of(state.specs, i)
        if layer.weights is None or consumer is None:
            continue
        sel = select_qsae(caps[layer.name].outputs, tolerance=tolerance, steps=steps, seed=seed)
        unused = sel.unused if sel.unused.size < layer.out_shape[-1] else sel.unused[:-1]  # never cut the net
        report.append({"layer": layer.name, "features": int(layer.out_shape[-1]), "removed": unused.tolist(),
                       "lam": sel.qsae.lam, "hidden": sel.qsae.hidden, "reconstruction_error": round(sel.error, 5),
                       "path": sel.path})
        if unused.size:
            remove[i] = unused
            if model.layers[consumer].op is Op.DENSE:  # conv consumers are not folded (structured.py)
                means = caps[model.layers[consumer].name].input_means
                prev = model.layers[consumer - 1].out_shape
                fold[consumer] = hwc_to_chw_columns(means, prev) if len(prev) == 3 else means
    if not remove:
        return state, report
    net, specs, masks = shrink(state.net, state.specs, tuple(state.meta["input_shape"]), remove, state.masks, fold)
    return _Net(net, specs, masks, state.meta), report


def _mask_kl(layer, capture: LayerCapture, mask: np.ndarray) -> float:
    """KL of the layer's outputs with `mask` applied to its current weights (layer-wise, as importance.py)."""
    w = layer.weights if layer.mask is None else layer.weights * layer.mask
    w2 = (w * mask).reshape(w.shape[0], -1)
    if mask.all():
        return 0.0
    return output_kl(capture.outputs, apply_rows(capture.inputs, w2, layer.bias, layer.clamp), zero_spike=layer.relu)


def _fit(state: _Net, dataset: Dataset, torch_masks: list, epochs: int, seed: int, lr: float) -> None:
    _apply_masks(state, torch_masks)  # fit applies them only after its first step
    if epochs > 0:
        fit(state.net, dataset.x_train, dataset.y_train, epochs, seed, lr=lr, desc="fine-tune", masks=torch_masks)


def _apply_masks(state: _Net, torch_masks: list) -> None:
    modules = [m for m in state.net if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        for module, mask in zip(modules, torch_masks, strict=True):
            if mask is not None:
                module.weight.mul_(torch.from_numpy(np.asarray(mask)).to(module.weight.dtype))


# --- the three methods ----------------------------------------------------------------------


def _prune_qsae(state: _Net, dataset: Dataset, calib: np.ndarray, flash_budget: int | None,
                kl_budget: float | None, epochs: int, seed: int, lr: float, tolerance: float,
                structured: bool, qsae_steps: int) -> tuple[_Net, dict, dict]:
    structured_report: list[dict] = []
    if structured:
        state, structured_report = _structured_qsae(state, calib, tolerance, qsae_steps, seed)
    model = state.float_model()
    caps = capture_activations(model, to_float(calib), seed=seed)
    weighted = [layer for layer in model.layers if layer.weights is not None]
    fronts = {layer.name: layer_front(layer, caps[layer.name]) for layer in weighted}
    if flash_budget is not None:
        chosen = _plan_flash(model, caps, fronts, flash_budget)
    else:
        chosen = choose_by_kl(fronts, kl_budget)
    ir_masks = _masks(model, caps, chosen)
    torch_masks = ir_masks_to_torch(model, ir_masks)
    state = _Net(state.net, state.specs, torch_masks, state.meta)
    _fit(state, dataset, torch_masks, epochs, seed, lr)
    extra = {"structured": structured_report, "candidates": {n: [c.to_dict() for c in f] for n, f in fronts.items()},
             "importance": "|w|*||x||"}
    return state, dict(chosen), extra


def _masks(model: FloatModel, caps: dict[str, LayerCapture], chosen: dict[str, Candidate]) -> dict[str, np.ndarray]:
    return {layer.name: mask_for(layer, caps[layer.name], chosen[layer.name].tau) for layer in model.layers
            if layer.name in chosen}


def _plan_flash(model: FloatModel, caps: dict[str, LayerCapture], fronts: dict[str, list[Candidate]],
                budget: int) -> dict[str, Candidate]:
    """The knapsack's plan for the largest internal budget whose plan fits `budget` as the code
    generator emits it (budget.plan_bytes, which may exceed the per-layer sum the knapsack adds up).
    The internal budget is found by bisection between the per-layer minimum and `budget`."""
    smallest_plan = {name: min(front, key=lambda c: c.bytes) for name, front in fronts.items()}
    smallest = plan_bytes(model, _masks(model, caps, smallest_plan))
    if smallest > budget:
        raise UserError(f"flash budget {budget} B is unreachable: the smallest reachable model is {smallest} B")

    def fits(plan: dict[str, Candidate]) -> bool:
        return plan_bytes(model, _masks(model, caps, plan)) <= budget

    chosen = choose_by_bytes(fronts, budget)
    if fits(chosen):
        return chosen
    best = smallest_plan
    lo, hi = min_bytes(fronts), budget - 1
    while lo <= hi:
        target = (lo + hi) // 2
        chosen = choose_by_bytes(fronts, target)
        if fits(chosen):
            if sum(c.kl for c in chosen.values()) < sum(c.kl for c in best.values()):
                best = chosen
            lo = target + 1
        else:
            hi = target - 1
    return best


def _magnitude_chosen(model: FloatModel, caps: dict, ir_masks: dict, tau: float) -> dict[str, Candidate]:
    out = {}
    for layer in model.layers:
        if layer.weights is None:
            continue
        m = ir_masks[layer.name]
        out[layer.name] = Candidate(tau=tau, sparsity=float(1 - m.mean()), bytes=0,
                                    kl=_mask_kl(layer, caps[layer.name], m))
    return out


def _prune_magnitude(state: _Net, dataset: Dataset, calib: np.ndarray, flash_budget: int, epochs: int, seed: int,
                     lr: float, gradual: bool) -> tuple[_Net, dict, dict]:
    start_model = state.float_model()
    sparsity = sparsity_for_budget(start_model, flash_budget)
    if gradual and epochs > 0:
        def export() -> FloatModel:
            return state.float_model(masks=[])  # pruned weights are already 0 in the network

        hook = gradual_schedule(export, ir_masks_to_torch, flash_budget, sparsity)
        torch_masks = finetune(state.net, dataset.x_train, dataset.y_train, epochs, seed, lr=lr,
                               masks=state.masks, on_step=hook)
        final_model = state.float_model(masks=torch_masks)
        mags = [np.abs(layer.weights * layer.mask) for layer in final_model.layers if layer.weights is not None]
        ir_masks = {layer.name: layer.mask for layer in final_model.layers if layer.weights is not None}
        tau = float(min(m[m > 0].min() for m in mags if (m > 0).any()))  # smallest kept |w|
    else:
        ir_masks = global_magnitude_masks(start_model, sparsity)
        tau = global_threshold(list(magnitudes(start_model).values()), sparsity)
        torch_masks = ir_masks_to_torch(start_model, ir_masks)
        _fit(state, dataset, torch_masks, epochs, seed, lr)
    caps = capture_activations(start_model, to_float(calib), seed=seed)
    chosen = _magnitude_chosen(start_model, caps, ir_masks, tau)
    extra = {"importance": "|w|", "global_sparsity_at_start": round(sparsity, 6)}
    return _Net(state.net, state.specs, torch_masks, state.meta), chosen, extra


# --- report ---------------------------------------------------------------------------------


def layer_report(model: FloatModel, chosen: dict[str, Candidate]) -> list[dict]:
    """Per weighted layer: the format and bytes the code generator emits for the final int8 weights."""
    out = emitted(model)
    rows = []
    for layer in model.layers:
        if layer.weights is None:
            continue
        w = layer.weights if layer.mask is None else layer.weights * layer.mask
        q, _ = quantize_weights(w, layer.weight_bits)
        c = chosen.get(layer.name, UNPRUNED)
        rows.append({
            "name": layer.name,
            "op": layer.op.value,
            "shape": list(layer.weights.shape),
            "weights": int(q.size),
            "nonzero": int(np.count_nonzero(q)),
            "sparsity": round(float(1.0 - np.count_nonzero(q) / q.size), 6),
            "mask_sparsity": round(float(c.sparsity), 6),
            "format": out.formats[layer.name],
            "bytes": out.layer_bytes[layer.name],
            "smallest_format": best_format(q),
            "smallest_bytes": packed_layer_bytes(q, q.shape[0]),
            "tau": float(c.tau),
            "kl": float(c.kl),
        })
    return rows


def int8_accuracy(model: FloatModel, dataset: Dataset) -> float:
    """Test accuracy of the int8 reference on the model quantized as `mcuprune compile` does."""
    qmodel = quantize_image_model(model, dataset.x_train)
    return float((run_s8(qmodel, to_int8(dataset.x_test)).argmax(1) == dataset.y_test).mean())


# --- graphs: any float IR model (MLPerf-shaped networks, imported PyTorch models) ---------------------
#
# The same method on the IR itself: channel groups (structured.channel_groups) instead of layer
# specs, so residual adds and depthwise layers keep their channels in step; the network is
# fine-tuned as an IRModule (the IR graph run by torch, batch norm already folded). The pruned run
# holds the pruned float IR model (a "float" run), which compile quantizes as any other.


def _graph_structured_qsae(model: FloatModel, calib: np.ndarray, tolerance: float, steps: int,
                           seed: int) -> tuple[FloatModel, list[dict]]:
    """QSAE per removable channel group on the vectors of all its tensors; remove the channels its
    int8 encoder ignores from the whole group."""
    groups = [(i, g) for i, g in enumerate(channel_groups(model)) if g.removable]
    rows = tensor_rows(model, to_float(calib), [name for _, g in groups for name in g.tensors], seed=seed)
    removal, report = {}, []
    for i, group in groups:
        sel = select_qsae(np.concatenate([rows[name] for name in group.tensors]), tolerance=tolerance, steps=steps,
                          seed=seed)
        unused = sel.unused if sel.unused.size < group.channels else sel.unused[:-1]  # never cut the net
        report.append({"group": list(group.tensors), "channels": group.channels, "removed": unused.tolist(),
                       "lam": sel.qsae.lam, "hidden": sel.qsae.hidden, "reconstruction_error": round(sel.error, 5),
                       "path": sel.path})
        if unused.size:
            removal[i] = unused
    return (remove_channels(model, removal) if removal else model), report


def _finetune_graph(model: FloatModel, dataset: Dataset, epochs: int, seed: int, lr: float) -> FloatModel:
    if epochs == 0:
        return model
    module = IRModule(model)
    fit(module, dataset.x_train, dataset.y_train, epochs, seed, lr=lr, desc="fine-tune", after_step=module.apply_masks)
    return module.to_float_model()


def prune_graph(model: FloatModel, dataset: Dataset, calib: np.ndarray, method: str, flash_budget: int | None,
                kl_budget: float | None, epochs: int, seed: int, lr: float, tolerance: float, structured: bool,
                steps: int) -> tuple[FloatModel, dict, dict]:
    """(pruned and fine-tuned model, chosen candidate per pruned layer, report extras)."""
    if method == "magnitude":
        raise UserError("method 'magnitude' (gradual) prunes mlp and cnn runs; use qsae or magnitude-oneshot here")
    extra: dict = {}
    if method == "qsae" and structured:
        model, extra["structured"] = _graph_structured_qsae(model, calib, tolerance, steps, seed)
    caps = capture_activations(model, to_float(calib), seed=seed)
    if method == "qsae":
        fronts = {layer.name: layer_front(layer, caps[layer.name]) for layer in model.layers
                  if layer.op in CAPTURED_OPS}
        chosen = _plan_flash(model, caps, fronts, flash_budget) if flash_budget is not None \
            else choose_by_kl(fronts, kl_budget)
        masks = _masks(model, caps, chosen)
        extra.update(candidates={n: [c.to_dict() for c in f] for n, f in fronts.items()}, importance="|w|*||x||")
    else:
        sparsity = sparsity_for_budget(model, flash_budget)
        masks = global_magnitude_masks(model, sparsity)
        tau = global_threshold(list(magnitudes(model).values()), sparsity)
        chosen = {name: Candidate(tau=tau, sparsity=float(1 - m.mean()), bytes=0,
                                  kl=_mask_kl(layer, caps[name], m) if name in caps else 0.0)
                  for layer in model.layers for name, m in masks.items() if layer.name == name}
        extra.update(importance="|w|", global_sparsity_at_start=round(sparsity, 6))
    model = _finetune_graph(with_masks(model, masks), dataset, epochs, seed, lr)
    return model, dict(chosen), extra


def _prune_graph_run(run_dir: Path, meta: dict, out: Path, method: str, flash_budget: int | None,
                     kl_budget: float | None, finetune_epochs: int, seed: int, finetune_lr: float,
                     calibration: int, qsae_tolerance: float, structured: bool, qsae_steps: int,
                     evaluate_int8: bool) -> dict:
    t0 = time.time()
    model, _ = load_run_model(run_dir)
    if not isinstance(model, FloatModel):
        raise UserError(f"{run_dir} holds an int8 model taken from a .tflite: prune the float model it came from "
                        "(import its .pt2) instead")
    if "dataset" not in meta:
        raise UserError(f"{run_dir} has no dataset to prune and fine-tune with: import it with --dataset")
    dataset = load_dataset(meta["dataset"])
    if dataset.input_shape != tuple(model.input_shape):
        raise UserError(f"dataset {meta['dataset']} has images {dataset.input_shape}, the run takes "
                        f"{tuple(model.input_shape)}")
    fp32_bytes = 4 * sum(int(layer.weights.size + layer.bias.size) for layer in model.layers
                         if layer.weights is not None)
    calib = calibration_subset(dataset.x_train, calibration, seed)
    model, chosen, extra = prune_graph(model, dataset, calib, method, flash_budget, kl_budget, finetune_epochs, seed,
                                       finetune_lr, qsae_tolerance, structured, qsae_steps)
    layers = layer_report(model, chosen)
    model_bytes = sum(row["bytes"] for row in layers)
    float_acc = float((run_f32(model, to_float(dataset.x_test)).argmax(1) == dataset.y_test).mean())
    report = {"method": method, "flash_budget": flash_budget, "kl_budget": kl_budget,
              "finetune_epochs": finetune_epochs, "finetune_lr": finetune_lr, "seed": seed,
              "calibration_samples": int(len(calib)),
              **({} if flash_budget is None else {"within_flash_budget": model_bytes <= flash_budget}),
              "layers": layers, "model_bytes": model_bytes, "fp32_bytes": fp32_bytes,
              "ratio_vs_fp32": round(fp32_bytes / model_bytes, 3), "accounting": ACCOUNTING,
              "float_test_accuracy": float_acc, "source_float_test_accuracy": meta.get("float_test_accuracy"), **extra}
    if evaluate_int8:
        report["int8_reference_accuracy"] = int8_accuracy(model, dataset)
    report["seconds"] = round(time.time() - t0, 1)
    keep = {k: meta[k] for k in ("dataset", "arch", "source", "source_file") if k in meta}
    write_imported_run(out, model, {**keep, "float_test_accuracy": float_acc, "fp32_params": fp32_bytes // 4,
                                    "pruned_from": str(run_dir.resolve()), "pruning": report})
    return report


def prune_run(run_dir: Path, method: str, flash_budget: int | None, kl_budget: float | None, finetune_epochs: int,
              out: Path, seed: int = 0, *, finetune_lr: float = DEFAULT_FINETUNE_LR,
              calibration: int = CALIBRATION_SAMPLES, qsae_tolerance: float = DEFAULT_TOLERANCE,
              structured: bool = True, qsae_steps: int = DEFAULT_STEPS, evaluate_int8: bool = True) -> dict:
    """Prune a run and write the pruned run to `out`; returns the pruning report (also in run.json)."""
    check_arguments(method, flash_budget, kl_budget, finetune_epochs)
    run_dir, out = Path(run_dir), Path(out)
    if out.resolve() == run_dir.resolve():
        raise UserError(f"the pruned run must go to a new directory, not over {run_dir}")
    meta = read_run_meta(run_dir)
    if meta.get("specs") is None:  # a graph: an MLPerf-shaped network or an imported model
        return _prune_graph_run(run_dir, meta, out, method, flash_budget, kl_budget, finetune_epochs, seed,
                                finetune_lr, calibration, qsae_tolerance, structured, qsae_steps, evaluate_int8)
    t0 = time.time()
    net, meta, masks = load_torch_model(run_dir)
    dataset = load_dataset(meta["dataset"])
    if dataset.input_shape != tuple(meta["input_shape"]):
        raise UserError(f"dataset {meta['dataset']} now has images {dataset.input_shape}, the run was trained on "
                        f"{tuple(meta['input_shape'])}")
    state = _Net(net, [dict(s) for s in meta["specs"]], masks or [], meta)
    fp32_bytes = 4 * state.param_count()
    calib = calibration_subset(dataset.x_train, calibration, seed)
    if method == "qsae":
        state, chosen, extra = _prune_qsae(state, dataset, calib, flash_budget, kl_budget, finetune_epochs, seed,
                                           finetune_lr, qsae_tolerance, structured, qsae_steps)
    else:
        state, chosen, extra = _prune_magnitude(state, dataset, calib, flash_budget, finetune_epochs, seed,
                                                finetune_lr, gradual=method == "magnitude")
    model = state.float_model()
    layers = layer_report(model, chosen)
    model_bytes = sum(row["bytes"] for row in layers)
    report_budget = {} if flash_budget is None else {"within_flash_budget": model_bytes <= flash_budget}
    float_acc = accuracy(torch_predict_logits(state.net, dataset.x_test), dataset.y_test)
    report = {
        "method": method,
        "flash_budget": flash_budget,
        "kl_budget": kl_budget,
        "finetune_epochs": finetune_epochs,
        "finetune_lr": finetune_lr,
        "seed": seed,
        "calibration_samples": int(len(calib)),
        **report_budget,
        "layers": layers,
        "model_bytes": model_bytes,
        "fp32_bytes": fp32_bytes,
        "ratio_vs_fp32": round(fp32_bytes / model_bytes, 3),
        "accounting": ACCOUNTING,
        "float_test_accuracy": float_acc,
        "source_float_test_accuracy": meta["float_test_accuracy"],
        **extra,
    }
    if method == "qsae":
        report["qsae"] = _penultimate_qsae(model, calib, out, qsae_steps, seed)
    if evaluate_int8:
        report["int8_reference_accuracy"] = int8_accuracy(model, dataset)
    report["seconds"] = round(time.time() - t0, 1)
    new_meta = dict(meta, specs=state.specs, param_count=state.param_count(), float_test_accuracy=float_acc,
                    pruned_from=str(run_dir.resolve()), pruning=report)
    save_run(out, state.net, new_meta, state.masks)
    return report


def _penultimate_qsae(model: FloatModel, calib: np.ndarray, out: Path, steps: int, seed: int) -> dict:
    """A QSAE over the pruned network's penultimate activations, saved as OUT/qsae.npz for the
    on-device reconstruction check (qsae.qsae_to_float_model exports it)."""
    weighted = [layer for layer in model.layers if layer.weights is not None]
    if len(weighted) < 2:
        return {}
    caps = capture_activations(model, to_float(calib), seed=seed)
    x = caps[weighted[-1].name].inputs  # the last layer's inputs: the penultimate layer's outputs
    q = train_qsae(x, hidden_size(x.shape[1]), LAMBDA_PATH[0], steps=steps, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    save_qsae(q, out / "qsae.npz")
    return {"layer": weighted[-2].name, "file": "qsae.npz", "inputs": q.inputs, "hidden": q.hidden,
            "lam": q.lam, "reconstruction_error": round(reconstruction_error(q, x), 5)}
