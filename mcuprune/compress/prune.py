"""Pruning a run under a flash or KL budget: QSAE + KL (ours) and magnitude baselines.

    prune_run(RUN, method, flash_budget | kl_budget, finetune_epochs, OUT) -> report

Every run is pruned as a float IR graph, whatever brought it in (mcuprune's own mlp/cnn, the
MLPerf-shaped networks, a user's PyTorch model): channels are removed by channel groups
(structured.py), so residual adds and depthwise layers keep their channels in step, and the network
is fine-tuned as an IRModule (the IR graph run by torch, batch norm already folded). OUT is a
"float" run (runs.py) holding the pruned IR model with its masks; `mcuprune compile` quantizes it
as any other, and run.json gets a ``pruning`` report and ``fp32_params``, the parameter count of
the model the user started from (so every ratio is against the original, however often a run is
pruned again).

Methods (docs/pruning.md has the reasoning):

* ``qsae``: (1) capture activations on a calibration subset of the training set; (2) for each
  removable channel group, pick a QSAE on the group's channel vectors (qsae.select_qsae) and remove
  the channels its int8 encoder ignores (means folded into dense readers); (3) capture again, build
  each layer's τ candidates from the importance |w_ij|·‖x_j‖₂ with their bytes and KL
  (importance.py), and choose one τ per layer (budget.py: knapsack for a flash budget, per-layer
  KL ≤ eps for a KL budget); (4) fine-tune with the masks fixed.
* ``magnitude``: global |w| pruning on Zhu & Gupta's cubic schedule during the fine-tune
  (magnitude.py), ending at the flash budget.
* ``magnitude-oneshot``: global |w| pruning to the flash budget, then the same fine-tune.

All methods prune the same layers, count bytes the same way and fine-tune for the same epochs
with the same learning rate, batch, data order and seed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mcuprune.compress.activations import (
    CAPTURED_OPS,
    LayerCapture,
    apply_rows,
    capture_activations,
    dense_input_means,
    tensor_rows,
)
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
from mcuprune.compress.importance import BLOCKS, layer_front, mask_for
from mcuprune.compress.instructions import compile_formats, remove_for_instructions, total_instructions
from mcuprune.compress.kl import output_kl
from mcuprune.compress.magnitude import (
    DEFAULT_END_FRACTION,
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
from mcuprune.compress.structured import channel_groups, remove_channels
from mcuprune.errors import UserError
from mcuprune.model.interpreter import run_f32, run_s8
from mcuprune.model.ir import FloatModel
from mcuprune.quantize import calibration_subset, quantize_image_model, quantize_weights
from mcuprune.train.datasets import Dataset, load_dataset, to_float, to_int8
from mcuprune.train.ir_module import IRModule, with_masks
from mcuprune.train.runs import read_run_meta, write_imported_run
from mcuprune.train.training import BATCH, fit, load_run_model

METHODS = ("qsae", "magnitude", "magnitude-oneshot")
CALIBRATION_SAMPLES = 2000
DEFAULT_FINETUNE_EPOCHS = 3
DEFAULT_FINETUNE_LR = 1e-3
ACCOUNTING = "parameter bytes as `mcuprune compile --objective smallest` emits them for a DSP board"
UNPRUNED = Candidate(tau=0.0, sparsity=0.0, bytes=0, kl=0.0)  # a weighted layer the method leaves alone
WEIGHT_CHOICES = {"int8": (8,), "int4": (4,), "mixed": (8, 4)}  # --weights: the widths a layer may get


@dataclass(frozen=True)
class PruneOptions:
    """What prune_run was asked for (see its arguments)."""

    method: str
    flash_budget: int | None = None
    kl_budget: float | None = None
    finetune_epochs: int = DEFAULT_FINETUNE_EPOCHS
    seed: int = 0
    finetune_lr: float = DEFAULT_FINETUNE_LR
    qsae_tolerance: float = DEFAULT_TOLERANCE
    structured: bool = True
    qsae_steps: int = DEFAULT_STEPS
    weights: str = "int8"  # WEIGHT_CHOICES
    layer_bits: dict[str, int] | None = None  # explicit widths by layer (a baseline matching another plan's)
    instr_budget: int | None = None  # instructions per inference on `core` with `variant` kernels
    variant: str = "dsp"
    core: str | None = None  # None: the core the variant is tuned for (costs.DEFAULT_CORE)
    distill: bool = True  # fine-tune towards the unpruned model's outputs (train.fit's teacher)
    stages: int = 1  # QSAE under a flash budget: plan and fine-tune this many times, tightening (_stage_budgets)
    block: int = 1  # importance.BLOCKS: 4 prunes whole 1x4 blocks of a row, the structure block4 kernels skip

    @property
    def widths(self) -> tuple[int, ...]:
        return WEIGHT_CHOICES[self.weights]


def check_arguments(method: str, flash_budget, kl_budget, finetune_epochs: int, weights: str = "int8",
                    instr_budget=None, stages: int = 1, block: int = 1) -> None:
    """One clear UserError for every bad combination (before any work is done)."""
    if block not in BLOCKS:
        raise UserError(f"unknown block size {block}: choose one of {', '.join(map(str, BLOCKS))}")
    if block > 1 and method != "qsae":
        raise UserError(f"method '{method}' prunes single weights: block-structured masks need method 'qsae'")
    if weights not in WEIGHT_CHOICES:
        raise UserError(f"unknown weights '{weights}': choose one of {', '.join(WEIGHT_CHOICES)}")
    if method not in METHODS:
        raise UserError(f"unknown pruning method '{method}': choose one of {', '.join(METHODS)}")
    if flash_budget is not None and kl_budget is not None:
        raise UserError("give a flash budget in bytes or a KL budget in nats, not both")
    if instr_budget is not None:
        if isinstance(instr_budget, bool) or not isinstance(instr_budget, (int, np.integer)) or instr_budget <= 0:
            raise UserError(f"the instruction budget must be a whole number of instructions > 0, got {instr_budget}")
        if method != "qsae":
            raise UserError(f"method '{method}' prunes weights, not channels: an instruction budget needs method "
                            "'qsae'")
    elif flash_budget is None and kl_budget is None:
        raise UserError("give a budget: a flash budget in bytes, a KL budget in nats or an instruction budget")
    if flash_budget is not None:
        if isinstance(flash_budget, bool) or not isinstance(flash_budget, (int, np.integer)) or flash_budget <= 0:
            raise UserError(f"the flash budget must be a whole number of bytes > 0, got {flash_budget}")
    elif kl_budget is not None:
        check_kl_budget(kl_budget)
        if method != "qsae":
            raise UserError(f"method '{method}' prunes to a flash budget; a KL budget needs method 'qsae'")
    if weights == "mixed" and method != "qsae":
        raise UserError(f"method '{method}' has no per-layer measure to choose widths by: give --weights int8 or int4 "
                        "(mixed widths need method 'qsae')")
    if isinstance(finetune_epochs, bool) or not isinstance(finetune_epochs, int) or finetune_epochs < 0:
        raise UserError(f"fine-tune epochs must be a whole number >= 0, got {finetune_epochs}")
    if isinstance(stages, bool) or not isinstance(stages, int) or stages < 1:
        raise UserError(f"stages must be a whole number >= 1, got {stages}")


def fp32_params(model: FloatModel) -> int:
    """Float parameters (weights and biases) of a model's weighted layers."""
    return sum(int(layer.weights.size + layer.bias.size) for layer in model.layers if layer.weights is not None)


def original_fp32_bytes(run_dir: Path) -> int:
    """fp32 bytes of the model a run started from (before any pruning)."""
    meta = read_run_meta(run_dir)
    if meta.get("fp32_params"):
        return 4 * int(meta["fp32_params"])
    model, _ = load_run_model(run_dir)
    return 4 * fp32_params(model)


def pruned_widths(run_dir: Path) -> dict[str, int]:
    """The weight width of each pruned layer of a pruned run, by layer name (from its pruning report)."""
    report = read_run_meta(run_dir).get("pruning")
    if not report:
        raise UserError(f"{run_dir} is not a pruned run: give a run written by `mcuprune prune`")
    return {row["name"]: int(row["weight_bits"]) for row in report["layers"]}


# --- structured step: channels the QSAE finds unused ------------------------------------------------


def structured_qsae(model: FloatModel, calib: np.ndarray, tolerance: float, steps: int,
                    seed: int) -> tuple[FloatModel, list[dict]]:
    """QSAE per removable channel group on the vectors of all its tensors; remove the channels its
    int8 encoder ignores from the whole group (dense readers' lost columns folded at their means)."""
    x = to_float(calib)
    groups = [(i, g) for i, g in enumerate(channel_groups(model)) if g.removable]
    rows = tensor_rows(model, x, [name for _, g in groups for name in g.tensors], seed=seed)
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
    if not removal:
        return model, report
    means = dense_input_means(model, capture_activations(model, x, seed=seed))
    return remove_channels(model, removal, means), report


def replay_removals(model: FloatModel, stages: list[list[dict]], x_float: np.ndarray, seed: int = 0) -> FloatModel:
    """Remove from `model` the channels a pruning report removed: each stage (the ``structured`` and
    ``instruction_removals`` entries, in that order) numbers channels in the model the stage before
    left, and each entry names its group by its tensors; dense readers' lost columns are folded at
    their means on `x_float`."""
    for entries in stages:
        groups = {g.tensors: i for i, g in enumerate(channel_groups(model))}
        removal = {}
        for entry in entries:
            if "group" not in entry:
                raise UserError("the pruning report predates channel groups (mcuprune < 0.4): prune the run again")
            key = tuple(entry["group"])
            if key not in groups:
                raise UserError(f"the model has no channel group {', '.join(key)}: it is not the model that was "
                                "pruned")
            if entry["removed"]:
                removal[groups[key]] = np.asarray(entry["removed"], dtype=np.int64)
        if removal:
            means = dense_input_means(model, capture_activations(model, x_float, seed=seed))
            model = remove_channels(model, removal, means)
    return model


def removal_stages(report: dict) -> list[list[dict]]:
    """The channel removals of a pruning report, stage by stage (replay_removals)."""
    return [report.get("structured", []), report.get("instruction_removals", [])]


# --- unstructured step: one τ per layer --------------------------------------------------------------


def _mask_kl(layer, capture: LayerCapture, mask: np.ndarray) -> float:
    """KL of the layer's outputs with `mask` applied to its current weights (layer-wise, as importance.py)."""
    w = layer.weights if layer.mask is None else layer.weights * layer.mask
    w2 = (w * mask).reshape(w.shape[0], -1)
    if mask.all():
        return 0.0
    return output_kl(capture.outputs, apply_rows(capture.inputs, w2, layer.bias, layer.clamp), zero_spike=layer.relu)


def _masks(model: FloatModel, caps: dict[str, LayerCapture], chosen: dict[str, Candidate]) -> dict[str, np.ndarray]:
    return {layer.name: mask_for(layer, caps[layer.name], chosen[layer.name].tau, chosen[layer.name].bits,
                                 chosen[layer.name].block)
            for layer in model.layers if layer.name in chosen}


def _widths(chosen: dict[str, Candidate]) -> dict[str, int]:
    return {name: c.bits for name, c in chosen.items()}


def with_widths(model: FloatModel, bits: dict[str, int]) -> FloatModel:
    """`model` with these layers' weight widths (quantize.py quantizes them to it, codegen packs them)."""
    return replace(model, layers=tuple(replace(layer, weight_bits=bits[layer.name]) if layer.name in bits else layer
                                       for layer in model.layers))


def _plan_flash(model: FloatModel, caps: dict[str, LayerCapture], fronts: dict[str, list[Candidate]],
                budget: int) -> dict[str, Candidate]:
    """The knapsack's plan for the largest internal budget whose plan fits `budget` as the code
    generator emits it (budget.plan_bytes, which may exceed the per-layer sum the knapsack adds up).
    The internal budget is found by bisection between the per-layer minimum and `budget`."""
    smallest_plan = {name: min(front, key=lambda c: c.bytes) for name, front in fronts.items()}
    smallest = plan_bytes(model, _masks(model, caps, smallest_plan), _widths(smallest_plan))
    if smallest > budget:
        raise UserError(f"flash budget {budget} B is unreachable: the smallest reachable model is {smallest} B")

    def fits(plan: dict[str, Candidate]) -> bool:
        return plan_bytes(model, _masks(model, caps, plan), _widths(plan)) <= budget

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


# --- fine-tuning -------------------------------------------------------------------------------------


def finetune(model: FloatModel, dataset: Dataset, epochs: int, seed: int, lr: float, masks_at=None,
             teacher: FloatModel | None = None, settle_from: float = 0.0) -> FloatModel:
    """Fine-tune `model` as an IRModule (masks fixed, narrower-than-int8 weights fake-quantized),
    distilling from `teacher` (the model before pruning), the learning rate decaying to 0 along a
    half cosine from `settle_from` of the steps on (train.fit); `masks_at(step, total_steps,
    current_model)` (magnitude.gradual_schedule) may replace the masks after any step."""
    if epochs == 0:
        return model
    module = IRModule(model, quantization_aware=True)
    teacher_module = None if teacher is None else IRModule(teacher)
    total = epochs * math.ceil(len(dataset.x_train) / BATCH)
    step = 0

    def after_step() -> None:
        nonlocal step
        step += 1
        masks = None if masks_at is None else masks_at(step, total, module.to_float_model)
        if masks is not None:
            module.set_masks(masks)
        else:
            module.apply_masks()

    fit(module, dataset.x_train, dataset.y_train, epochs, seed, lr=lr, desc="fine-tune", after_step=after_step,
        teacher=teacher_module, cosine_from=settle_from)
    return module.to_float_model()


# --- the three methods -------------------------------------------------------------------------------


def _stage_budgets(model: FloatModel, opts: PruneOptions) -> list[tuple[int | None, int]]:
    """(flash budget, fine-tune epochs) per stage. With `stages` > 1 and a flash budget the QSAE plan
    tightens geometrically from the model's dense size to the budget, fine-tuning between plans (as
    gradual magnitude pruning does, the network adapts to each cut before the next); the
    intermediate stages get epochs // (stages + 1) each (at least 1), the last stage the rest."""
    if opts.flash_budget is None or opts.stages <= 1:
        return [(opts.flash_budget, opts.finetune_epochs)]
    start = emitted(model).bytes
    per_stage = max(1, opts.finetune_epochs // (opts.stages + 1))
    out = []
    for k in range(1, opts.stages):
        out.append((int(round(opts.flash_budget * (start / opts.flash_budget) ** ((opts.stages - k) / opts.stages))),
                    per_stage))
    out.append((opts.flash_budget, max(0, opts.finetune_epochs - per_stage * (opts.stages - 1))))
    return out


def prune_graph(model: FloatModel, dataset: Dataset, calib: np.ndarray,
                opts: PruneOptions) -> tuple[FloatModel, dict, dict]:
    """(pruned and fine-tuned model, chosen candidate per pruned layer, report extras)."""
    extra: dict = {}
    epochs, seed, lr = opts.finetune_epochs, opts.seed, opts.finetune_lr
    teacher = model if opts.distill else None
    if opts.method == "qsae" and opts.structured:
        model, extra["structured"] = structured_qsae(model, calib, opts.qsae_tolerance, opts.qsae_steps, seed)
    caps = capture_activations(model, to_float(calib), seed=seed)
    if opts.instr_budget is not None:
        model, extra["instruction_removals"], extra["planned_instructions"] = remove_for_instructions(
            model, caps, opts.instr_budget, opts.variant, opts.core)
        caps = capture_activations(model, to_float(calib), seed=seed)
    if opts.method == "qsae":
        stages = _stage_budgets(model, opts)
        extra["stages"] = []
        for k, (budget, stage_epochs) in enumerate(stages):
            if k:
                caps = capture_activations(model, to_float(calib), seed=seed)
            fronts = {layer.name: layer_front(layer, caps[layer.name], widths=opts.widths, block=opts.block)
                      for layer in model.layers
                      if layer.op in CAPTURED_OPS}
            if budget is not None:
                chosen = _plan_flash(model, caps, fronts, budget)
            elif opts.kl_budget is not None:
                chosen = choose_by_kl(fronts, opts.kl_budget)
            else:  # an instruction budget alone: channels only, every weight kept
                chosen = {name: next(c for c in front if c.tau == 0.0 and c.bits == max(opts.widths))
                          for name, front in fronts.items()}
            planned = with_widths(with_masks(model, _masks(model, caps, chosen)), _widths(chosen))
            model = finetune(planned, dataset, stage_epochs, seed + k, lr, teacher=teacher)
            extra["stages"].append({"flash_budget": budget, "finetune_epochs": stage_epochs})
        extra.update(candidates={n: [c.to_dict() for c in f] for n, f in fronts.items()}, importance="|w|*||x||")
        return model, dict(chosen), extra
    width = opts.widths[0]
    model = with_widths(model, opts.layer_bits or {layer.name: width for layer in model.layers
                                                   if layer.op in CAPTURED_OPS})
    sparsity = sparsity_for_budget(model, opts.flash_budget)
    extra.update(importance="|w|", global_sparsity_at_start=round(sparsity, 6))
    if opts.method == "magnitude" and epochs > 0:
        start = model
        # the learning rate settles only once the last mask is set (the schedule's end step)
        model = finetune(model, dataset, epochs, seed, lr, masks_at=gradual_schedule(opts.flash_budget, sparsity),
                         teacher=teacher, settle_from=DEFAULT_END_FRACTION)
        masks = {layer.name: layer.mask for layer in model.layers if layer.weights is not None}
        kept = [m[m > 0] for m in magnitudes(model).values()]
        tau = float(min(k.min() for k in kept if k.size))  # the smallest kept |w|
        model_for_kl = start
    else:  # one-shot (and gradual without fine-tuning, which is the same)
        masks = global_magnitude_masks(model, sparsity)
        tau = global_threshold(list(magnitudes(model).values()), sparsity)
        model_for_kl = model
        model = finetune(with_masks(model, masks), dataset, epochs, seed, lr, teacher=teacher)
    chosen = {layer.name: Candidate(tau=tau, sparsity=float(1 - masks[layer.name].mean()), bytes=0,
                                    kl=_mask_kl(layer, caps[layer.name], masks[layer.name]) if layer.name in caps
                                    else 0.0, bits=layer.weight_bits)
              for layer in model_for_kl.layers if layer.name in masks}
    return model, chosen, extra


# --- report ------------------------------------------------------------------------------------------


def layer_report(model: FloatModel, chosen: dict[str, Candidate]) -> list[dict]:
    """Per weighted layer: the format and bytes the code generator emits for the final integer weights."""
    out = emitted(model)
    rows = []
    for layer in model.layers:
        if layer.weights is None:
            continue
        w = layer.weights if layer.mask is None else layer.weights * layer.mask
        q, _ = quantize_weights(w, layer.weight_bits)
        c = chosen.get(layer.name, replace(UNPRUNED, bits=layer.weight_bits))
        rows.append({
            "name": layer.name,
            "op": layer.op.value,
            "shape": list(layer.weights.shape),
            "weight_bits": layer.weight_bits,
            "weights": int(q.size),
            "nonzero": int(np.count_nonzero(q)),
            "sparsity": round(float(1.0 - np.count_nonzero(q) / q.size), 6),
            "mask_sparsity": round(float(c.sparsity), 6),
            "format": out.formats[layer.name],
            "bytes": out.layer_bytes[layer.name],
            "smallest_format": best_format(q, layer.weight_bits),
            "smallest_bytes": packed_layer_bytes(q, q.shape[0], layer.weight_bits),
            "tau": float(c.tau),
            "kl": float(c.kl),
        })
    return rows


def int8_accuracy(model: FloatModel, dataset: Dataset) -> float:
    """Test accuracy of the int8 reference on the model quantized as `mcuprune compile` does."""
    qmodel = quantize_image_model(model, dataset.x_train)
    return float((run_s8(qmodel, to_int8(dataset.x_test)).argmax(1) == dataset.y_test).mean())


def _load_float_run(run_dir: Path, meta: dict) -> tuple[FloatModel, Dataset]:
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
    return model, dataset


def prune_run(run_dir: Path, method: str, flash_budget: int | None, kl_budget: float | None, finetune_epochs: int,
              out: Path, seed: int = 0, *, finetune_lr: float = DEFAULT_FINETUNE_LR,
              calibration: int = CALIBRATION_SAMPLES, qsae_tolerance: float = DEFAULT_TOLERANCE,
              structured: bool = True, qsae_steps: int = DEFAULT_STEPS, evaluate_int8: bool = True,
              weights: str = "int8", layer_bits: dict[str, int] | None = None, instr_budget: int | None = None,
              variant: str = "dsp", core: str | None = None, stages: int = 1, block: int = 1) -> dict:
    """Prune a run and write the pruned run to `out`; returns the pruning report (also in run.json).

    weights: the widths each pruned layer may get ("int8", "int4", or "mixed": the knapsack picks
    per layer); layer_bits: explicit widths by layer name (magnitude baselines at another plan's widths);
    instr_budget: instructions per inference with `variant` kernels on `core` (predicted by the cost
    models, compress/instructions.py), met by removing channels before the flash or KL plan;
    block: 4 prunes whole 1x4 blocks (importance.mask_for), which the block4 kernels skip."""
    check_arguments(method, flash_budget, kl_budget, finetune_epochs, weights, instr_budget, stages, block)
    opts = PruneOptions(method, flash_budget, kl_budget, finetune_epochs, seed, finetune_lr, qsae_tolerance,
                        structured, qsae_steps, weights, layer_bits, instr_budget, variant, core, stages=stages,
                        block=block)
    run_dir, out = Path(run_dir), Path(out)
    if out.resolve() == run_dir.resolve():
        raise UserError(f"the pruned run must go to a new directory, not over {run_dir}")
    t0 = time.time()
    meta = read_run_meta(run_dir)
    model, dataset = _load_float_run(run_dir, meta)
    original_params = original_fp32_bytes(run_dir) // 4
    calib = calibration_subset(dataset.x_train, calibration, seed)
    model, chosen, extra = prune_graph(model, dataset, calib, opts)
    layers = layer_report(model, chosen)
    model_bytes = sum(row["bytes"] for row in layers)
    float_acc = float((run_f32(model, to_float(dataset.x_test)).argmax(1) == dataset.y_test).mean())
    predicted = total_instructions(model, variant, core, formats=compile_formats(model, variant, core, flash_budget))
    report = {"method": method, "flash_budget": flash_budget, "kl_budget": kl_budget, "weights": weights,
              "block": block, "instr_budget": instr_budget, "predicted_instructions": round(predicted),
              **({} if instr_budget is None else {"within_instr_budget": predicted <= instr_budget}),
              "finetune_epochs": finetune_epochs, "finetune_lr": finetune_lr, "seed": seed,
              "calibration_samples": int(len(calib)),
              **({} if flash_budget is None else {"within_flash_budget": model_bytes <= flash_budget}),
              "layers": layers, "model_bytes": model_bytes, "fp32_bytes": 4 * original_params,
              "ratio_vs_fp32": round(4 * original_params / model_bytes, 3), "accounting": ACCOUNTING,
              "float_test_accuracy": float_acc, "source_float_test_accuracy": meta.get("float_test_accuracy"),
              **extra}
    qsae = _penultimate_qsae(model, calib, qsae_steps, seed) if method == "qsae" else None
    if qsae is not None:
        report["qsae"] = qsae[1]
    if evaluate_int8:
        report["int8_reference_accuracy"] = int8_accuracy(model, dataset)
    report["seconds"] = round(time.time() - t0, 1)
    keep = {k: meta[k] for k in ("dataset", "arch", "source", "source_file") if k in meta}
    write_imported_run(out, model, {**keep, "float_test_accuracy": float_acc, "fp32_params": original_params,
                                    "pruned_from": str(run_dir.resolve()), "pruning": report},
                       extra_files=None if qsae is None else lambda folder: save_qsae(qsae[0], folder / "qsae.npz"))
    return report


def _penultimate_qsae(model: FloatModel, calib: np.ndarray, steps: int, seed: int):
    """A QSAE over the pruned network's penultimate activations, for the on-device reconstruction
    check (qsae.qsae_to_float_model exports it): (QSAE, its report entry), None for one-layer nets."""
    weighted = [layer for layer in model.layers if layer.weights is not None]
    if len(weighted) < 2:
        return None
    caps = capture_activations(model, to_float(calib), seed=seed)
    x = caps[weighted[-1].name].inputs  # the last layer's inputs: the penultimate layer's outputs
    q = train_qsae(x, hidden_size(x.shape[1]), LAMBDA_PATH[0], steps=steps, seed=seed)
    return q, {"layer": weighted[-2].name, "file": "qsae.npz", "inputs": q.inputs, "hidden": q.hidden,
               "lam": q.lam, "reconstruction_error": round(reconstruction_error(q, x), 5)}
