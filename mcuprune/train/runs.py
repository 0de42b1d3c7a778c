"""Run directories: the model a pipeline starts from, whether mcuprune trained it or a user brought it.

    RUN/run.json        metadata; its "kind" says what the folder holds:
      "trained"         RUN/checkpoint.pt: a network mcuprune trained (training.py), exported to the IR
                        on load (mlp/cnn by their layer specs, the others through the PyTorch importer)
      "float"           RUN/float/model.json + model.npz: a float IR model (`mcuprune import MODEL.pt2`);
                        compile quantizes it with calibration inputs
      "quantized"       RUN/int8/model.json + model.npz: an int8 IR model taken as is from a fully
                        integer-quantized .tflite (`mcuprune import MODEL.tflite`); compile skips quantization

A run is written into a temporary folder beside its destination and renamed into place, so a
failure leaves no half-written run behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from mcuprune.errors import UserError
from mcuprune.model.ir import (
    FloatModel,
    QuantModel,
    load_float_model,
    load_quant_model,
    save_float_model,
    save_quant_model,
)

RUN_FORMAT_VERSION = 1
KINDS = ("trained", "float", "quantized")
FLOAT_DIR, INT8_DIR = "float", "int8"


def read_run_meta(run_dir: Path) -> dict:
    meta_path = Path(run_dir) / "run.json"
    if not meta_path.exists():
        raise UserError(f"{run_dir} is not a run directory (no run.json): create one with `mcuprune train` or "
                        "`mcuprune import`")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{meta_path} is corrupt ({exc}): create the run again") from None
    if meta.get("format_version") != RUN_FORMAT_VERSION:
        raise UserError(f"{meta_path} has format {meta.get('format_version')}, this mcuprune reads "
                        f"{RUN_FORMAT_VERSION}: create the run again")
    if meta.setdefault("kind", "trained") not in KINDS:
        raise UserError(f"{meta_path} has an unknown kind {meta['kind']!r}: create the run again")
    return meta


def check_new_output(out: Path) -> None:
    """An output folder must not be an existing file (a folder is replaced)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a directory: choose another --out")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomically(out: Path, fill: Callable[[Path], None]) -> None:
    """Fill a temporary folder beside `out`, then put it in `out`'s place (replacing an old one)."""
    out = Path(out)
    check_new_output(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        fill(tmp)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it owner-only; the result is an ordinary folder
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_imported_run(out: Path, model: FloatModel | QuantModel, meta: dict,
                       extra_files: Callable[[Path], None] | None = None) -> dict:
    """Write a run holding an IR model (kind "float" or "quantized"); returns its run.json.
    `extra_files(folder)` may add files beside it (a pruned run's qsae.npz)."""
    quantized = isinstance(model, QuantModel)
    doc = {"format_version": RUN_FORMAT_VERSION, "kind": "quantized" if quantized else "float", "name": model.name,
           "input_shape": list(model.input_shape), "num_classes": model.num_classes, **meta}

    def fill(tmp: Path) -> None:
        if quantized:
            save_quant_model(model, tmp / INT8_DIR)
        else:
            save_float_model(model, tmp / FLOAT_DIR)
        if extra_files is not None:
            extra_files(tmp)
        (tmp / "run.json").write_text(json.dumps(doc, indent=2) + "\n")

    write_atomically(out, fill)
    return doc


def load_imported_model(run_dir: Path, meta: dict) -> FloatModel | QuantModel:
    """The IR model of an imported run (kind "float" or "quantized")."""
    folder = Path(run_dir) / (INT8_DIR if meta["kind"] == "quantized" else FLOAT_DIR)
    try:
        return load_quant_model(folder) if meta["kind"] == "quantized" else load_float_model(folder)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{run_dir} is damaged ({exc}): import the model again") from None
