"""A model file a user brings, by its kind: a fully integer-quantized .tflite or a torch.export .pt2."""

from __future__ import annotations

import re
from pathlib import Path

from mcuprune.errors import UserError
from mcuprune.frontend.tflite import import_tflite
from mcuprune.frontend.torch_export import load_pt2
from mcuprune.model.ir import FloatModel, QuantModel

KINDS = (".tflite", ".pt2")


def model_name(path: Path) -> str:
    """A C-identifier-safe model name from a file name."""
    name = re.sub(r"[^0-9A-Za-z_]+", "_", Path(path).stem).strip("_")
    return name if name and not name[0].isdigit() else f"m_{name}"


def import_model_file(path: Path) -> tuple[FloatModel | QuantModel, dict]:
    """(the model in the IR, what to remember about where it came from)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist or is not a file")
    if path.suffix == ".tflite":
        return import_tflite(path.read_bytes(), model_name(path)), {"source": "tflite"}
    if path.suffix == ".pt2":
        return load_pt2(path), {"source": "torch.export"}
    raise UserError(f"{path}: unknown model file type {path.suffix or '(none)'}; give one of {', '.join(KINDS)}")
