"""Training the target network in PyTorch, and the run directory that later stages read.

This is the only module that imports torch. A network is described by a small list of layer
specs (JSON-able), built into an ``nn.Sequential`` for training and exported to the torch-free
``FloatModel`` IR (HWC layout) for quantization and code generation.

Run directory layout:
    RUN/checkpoint.pt   torch state_dict + layer specs
    RUN/run.json        metadata: dataset, arch, seed, epochs, accuracy, shapes
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from mcuprune import __version__
from mcuprune.errors import UserError
from mcuprune.frontend.torch_export import import_module
from mcuprune.model.ir import RELU, UNBOUNDED, FloatLayer, FloatModel, Op, QuantModel, conv_out_hw
from mcuprune.train.archs import ARCHS as MODULE_ARCHS
from mcuprune.train.archs import build_arch
from mcuprune.train.datasets import Dataset, to_float
from mcuprune.train.runs import (
    RUN_FORMAT_VERSION,
    check_new_output,
    load_imported_model,
    read_run_meta,
    write_atomically,
)

BATCH = 128  # training and fine-tuning mini-batch

SPEC_ARCHS = ("mlp", "cnn")  # described by layer specs below
ARCHS = SPEC_ARCHS + tuple(MODULE_ARCHS)  # ... and ordinary PyTorch modules (archs.py), imported via torch.export


def arch_specs(arch: str) -> list[dict]:
    """Layer specs of a named architecture (input shape is filled in when building)."""
    if arch == "cnn":
        return [
            {"op": "conv2d", "out": 16, "k": 3, "pad": 1, "relu": True},
            {"op": "maxpool2d", "pool": 2},
            {"op": "conv2d", "out": 32, "k": 3, "pad": 1, "relu": True},
            {"op": "maxpool2d", "pool": 2},
            {"op": "dense", "out": 64, "relu": True},
            {"op": "dense", "out": None, "relu": False},  # None: number of classes
        ]
    if arch == "mlp":
        return [
            {"op": "dense", "out": 128, "relu": True},
            {"op": "dense", "out": 64, "relu": True},
            {"op": "dense", "out": None, "relu": False},
        ]
    raise UserError(f"unknown architecture '{arch}': choose one of {', '.join(ARCHS)}")


def resolve_specs(specs: list[dict], num_classes: int) -> list[dict]:
    return [dict(s, out=num_classes) if s.get("out", 0) is None else dict(s) for s in specs]


def _shapes(specs: list[dict], input_shape: tuple[int, int, int]) -> list[tuple[tuple, tuple]]:
    """(in_shape, out_shape) per spec, HWC; dense layers see the flattened input."""
    shapes = []
    shape: tuple = tuple(input_shape)
    for spec in specs:
        if spec["op"] == "conv2d":
            h, w, _ = shape
            stride, pad = spec.get("stride", 1), spec["pad"]
            oh, ow = conv_out_hw(h, w, spec["k"], spec["k"], (stride, stride), (pad, pad, pad, pad))
            out = (oh, ow, spec["out"])
        elif spec["op"] == "maxpool2d":
            h, w, c = shape
            out = (h // spec["pool"], w // spec["pool"], c)
        elif spec["op"] == "dense":
            shape = (int(np.prod(shape)),)
            out = (spec["out"],)
        else:
            raise UserError(f"layer spec {spec}: unsupported op '{spec['op']}'")
        if min(out) <= 0:
            raise UserError(f"layer spec {spec} leaves an empty tensor for input {shape}")
        shapes.append((shape, out))
        shape = out
    return shapes


def build_torch_model(specs: list[dict], input_shape: tuple[int, int, int]):
    """nn.Sequential for NCHW float input; one trainable module per conv/dense spec."""
    modules: list = []
    flat = False
    for spec, (in_shape, _) in zip(specs, _shapes(specs, input_shape), strict=True):
        if spec["op"] == "conv2d":
            modules.append(nn.Conv2d(in_shape[2], spec["out"], spec["k"], spec.get("stride", 1), spec["pad"]))
        elif spec["op"] == "maxpool2d":
            modules.append(nn.MaxPool2d(spec["pool"]))
        elif spec["op"] == "dense":
            if not flat:
                modules.append(nn.Flatten())
                flat = True
            modules.append(nn.Linear(in_shape[0], spec["out"]))
        if spec.get("relu"):
            modules.append(nn.ReLU())
    return nn.Sequential(*modules)


def build_network(arch: str, specs: list[dict] | None, input_shape: tuple[int, int, int], num_classes: int):
    """The torch network of an architecture: from layer specs (mlp, cnn) or archs.py's modules."""
    if arch in MODULE_ARCHS:
        return build_arch(arch, input_shape, num_classes)
    if specs is None:
        raise UserError(f"architecture {arch!r} needs layer specs: retrain with `mcuprune train`")
    return build_torch_model(specs, input_shape)


def _weight_modules(net) -> list:
    """The conv and linear modules of a network, in definition order (the order masks are kept in)."""
    return [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _to_hwc(w: np.ndarray, op: str, prev_map_shape: tuple | None) -> np.ndarray:
    """Torch weight layout -> IR layout (conv [o,i,kh,kw] -> [o,kh,kw,i]; dense columns CHW -> HWC)."""
    if op == "conv2d":
        return np.ascontiguousarray(w.transpose(0, 2, 3, 1))
    if prev_map_shape is not None and len(prev_map_shape) == 3:
        h, wd, c = prev_map_shape  # torch flattened C,H,W; the device flattens H,W,C
        w = w.reshape(w.shape[0], c, h, wd).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
    return np.ascontiguousarray(w)


def export_float_model(net, specs: list[dict], input_shape: tuple[int, int, int], name: str,
                       num_classes: int, masks: list | None = None) -> FloatModel:
    """Torch (NCHW, CHW-flatten) -> FloatModel (HWC, HWC-flatten) with identical outputs.

    `masks`: one bool array (torch weight layout) or None per conv/dense module, in order."""
    weight_modules = iter(_weight_modules(net))
    mask_iter = iter(masks or [])
    layers = []
    prev_map_shape: tuple | None = None  # HWC shape feeding the first dense layer
    for i, (spec, (in_shape, out_shape)) in enumerate(zip(specs, _shapes(specs, input_shape), strict=True)):
        lname = f"{spec['op']}{i}"
        if spec["op"] == "maxpool2d":
            pool = spec["pool"]
            layers.append(FloatLayer(lname, Op.MAXPOOL2D, in_shape, out_shape, window=(pool, pool),
                                     stride=(pool, pool)))
            prev_map_shape = out_shape
            continue
        module = next(weight_modules)
        mask = next(mask_iter, None)
        w = _to_hwc(module.weight.detach().cpu().numpy().astype(np.float32), spec["op"], prev_map_shape)
        b = module.bias.detach().cpu().numpy().astype(np.float32)
        mask = None if mask is None else _to_hwc(np.asarray(mask, dtype=bool), spec["op"], prev_map_shape)
        clamp = RELU if spec.get("relu") else UNBOUNDED
        if spec["op"] == "conv2d":
            stride, pad = spec.get("stride", 1), spec["pad"]
            layers.append(FloatLayer(lname, Op.CONV2D, in_shape, out_shape, w, b, clamp=clamp,
                                     stride=(stride, stride), padding=(pad, pad, pad, pad), mask=mask))
        else:
            layers.append(FloatLayer(lname, Op.DENSE, in_shape, out_shape, w, b, clamp=clamp, mask=mask))
        prev_map_shape = out_shape
    return FloatModel(name=name, input_shape=tuple(input_shape), num_classes=num_classes, layers=tuple(layers))


def _to_nchw(x_uint8: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(to_float(x_uint8).transpose(0, 3, 1, 2)))


def torch_predict_logits(net, x_uint8: np.ndarray, batch: int = 1000) -> np.ndarray:
    net.eval()
    outs = []
    with torch.no_grad():
        for start in range(0, len(x_uint8), batch):
            outs.append(net(_to_nchw(x_uint8[start : start + batch])).numpy())
    return np.concatenate(outs)


DISTILL_TEMPERATURE = 4.0  # softens the teacher's logits so the student also learns its near-misses
DISTILL_WEIGHT = 0.7  # share of the distillation term in the loss (the rest: cross-entropy on the labels)


def fit(net, x_uint8: np.ndarray, y: np.ndarray, epochs: int, seed: int, lr: float = 1e-3,
        batch: int = BATCH, desc: str = "train", masks: list | None = None,
        after_step: Callable[[], None] | None = None, teacher=None, cosine_from: float | None = None) -> None:
    """Adam + cross-entropy; `masks` (one bool array or None per weight module) stay applied;
    `after_step` runs after every optimizer step (an IRModule's apply_masks).

    teacher: a network whose logits the loss also follows (knowledge distillation, Hinton et al.:
    KL between the temperature-softened outputs, weighted DISTILL_WEIGHT): a pruned network
    fine-tuned towards the network it was cut from keeps more of its accuracy than one trained on
    the labels alone. cosine_from: the learning rate stays `lr` for that fraction of the steps, then
    decays to 0 along a half cosine, so the last steps settle instead of jumping around the minimum
    (None: constant)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps = epochs * ((len(x_uint8) + batch - 1) // batch)
    flat = 0 if cosine_from is None else int(round(cosine_from * steps))
    schedule = None if cosine_from is None else torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 1.0 if step < flat else 0.5 * (1 + math.cos(math.pi * (step - flat) / max(steps - flat, 1))))
    loss_fn = torch.nn.CrossEntropyLoss()
    if teacher is not None:
        teacher.eval()
    x_all = _to_nchw(x_uint8)
    y_all = torch.from_numpy(y.astype(np.int64))
    mask_tensors = [None if m is None else torch.from_numpy(m) for m in (masks or [])]
    modules = _weight_modules(net)
    for epoch in range(epochs):
        net.train()
        order = torch.from_numpy(rng.permutation(len(x_all)))
        bar = tqdm(range(0, len(order), batch), desc=f"{desc} epoch {epoch + 1}/{epochs}", file=sys.stderr,
                   leave=False, disable=None)
        for start in bar:
            idx = order[start : start + batch]
            opt.zero_grad()
            logits = net(x_all[idx])
            loss = loss_fn(logits, y_all[idx])
            if teacher is not None:
                with torch.no_grad():
                    target = torch.softmax(teacher(x_all[idx]) / DISTILL_TEMPERATURE, dim=1)
                distill = torch.nn.functional.kl_div(torch.log_softmax(logits / DISTILL_TEMPERATURE, dim=1), target,
                                                     reduction="batchmean") * DISTILL_TEMPERATURE ** 2
                loss = (1 - DISTILL_WEIGHT) * loss + DISTILL_WEIGHT * distill
            loss.backward()
            opt.step()
            if schedule is not None:
                schedule.step()
            with torch.no_grad():
                for module, mask in zip(modules, mask_tensors, strict=False):
                    if mask is not None:
                        module.weight.mul_(mask.reshape(module.weight.shape).to(module.weight.dtype))
            if after_step is not None:
                after_step()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == y).mean())


def train_run(dataset: Dataset, dataset_spec: str, arch: str, epochs: int, out: Path, seed: int = 0) -> dict:
    """Train a network and write the run directory; returns its metadata."""
    if epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {epochs}")
    check_new_output(out)  # before training, not after it
    torch.manual_seed(seed)
    specs = None if arch in MODULE_ARCHS else resolve_specs(arch_specs(arch), dataset.num_classes)
    net = build_network(arch, specs, dataset.input_shape, dataset.num_classes)
    t0 = time.time()
    fit(net, dataset.x_train, dataset.y_train, epochs, seed)
    float_acc = accuracy(torch_predict_logits(net, dataset.x_test), dataset.y_test)
    meta = {
        "format_version": RUN_FORMAT_VERSION,
        "mcuprune_version": __version__,
        "name": f"{dataset.name}-{arch}",
        "dataset": dataset_spec,
        "arch": arch,
        "specs": specs,
        "input_shape": list(dataset.input_shape),
        "num_classes": dataset.num_classes,
        "epochs": epochs,
        "seed": seed,
        "float_test_accuracy": float_acc,
        "param_count": int(sum(p.numel() for p in net.parameters())),
        "train_seconds": round(time.time() - t0, 1),
    }
    write_atomically(out, lambda tmp: save_run(tmp, net, meta))  # a failure leaves no half-written run
    return meta


def save_run(out: Path, net, meta: dict, masks: list | None = None) -> None:
    """Write checkpoint.pt (specs, weights, optional pruning masks) and run.json.

    `masks`: one bool numpy array in torch weight layout, or None, per conv/dense module."""
    out.mkdir(parents=True, exist_ok=True)
    mask_tensors = [None if m is None else torch.from_numpy(np.asarray(m, dtype=bool)) for m in (masks or [])]
    torch.save({"specs": meta.get("specs"), "state_dict": net.state_dict(), "masks": mask_tensors},
               out / "checkpoint.pt")
    (out / "run.json").write_text(json.dumps(meta, indent=2) + "\n")


def load_torch_model(run_dir: Path):
    """(nn.Sequential with the trained weights, run metadata, masks); clear errors for damaged runs.

    masks: one bool numpy array (torch weight layout) or None per conv/dense module."""
    meta = read_run_meta(run_dir)
    ckpt_path = run_dir / "checkpoint.pt"
    if not ckpt_path.exists():
        raise UserError(f"{ckpt_path} is missing: retrain with `mcuprune train`")
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        net = build_network(meta["arch"], ckpt["specs"], tuple(meta["input_shape"]), int(meta["num_classes"]))
        net.load_state_dict(ckpt["state_dict"])
        masks = [None if m is None else m.numpy().astype(bool) for m in ckpt.get("masks", [])]
        for module, mask in zip(_weight_modules(net), masks, strict=False):
            if mask is not None and tuple(mask.shape) != tuple(module.weight.shape):
                raise ValueError(f"mask shape {tuple(mask.shape)} != weight shape {tuple(module.weight.shape)}")
    except UserError:
        raise
    except Exception as exc:  # torch raises many types for truncated/garbled files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{ckpt_path} is corrupt or truncated ({reason}): retrain with `mcuprune train`") from None
    return net, meta, masks


def network_to_ir(net, meta: dict, masks: list | None = None) -> FloatModel:
    """A trained network in the float IR: layer-spec networks by their specs, the others through
    the PyTorch importer (the same door a user's model comes in by)."""
    if meta.get("specs") is not None:
        return export_float_model(net, meta["specs"], tuple(meta["input_shape"]), meta["name"], meta["num_classes"],
                                  masks)
    if any(m is not None for m in masks or []):
        raise UserError(f"run {meta['name']}: pruning masks of {meta['arch']} networks are not supported yet")
    h, w, c = meta["input_shape"]
    return import_module(net, torch.zeros(1, c, h, w), meta["name"])


def load_float_model(run_dir: Path) -> tuple[FloatModel, dict]:
    """The float IR model of a trained run, with its metadata."""
    net, meta, masks = load_torch_model(run_dir)
    return network_to_ir(net, meta, masks), meta


def load_run_model(run_dir: Path) -> tuple[FloatModel | QuantModel, dict]:
    """The IR model of any run (trained, or imported float or int8), with the run's metadata."""
    meta = read_run_meta(run_dir)
    if meta["kind"] != "trained":
        return load_imported_model(run_dir, meta), meta
    return load_float_model(run_dir)
