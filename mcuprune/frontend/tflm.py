"""TFLite Micro's own interpreter (PyPI ``tflite-micro``, reference kernels) as the independent oracle.

The int8 reference must agree with it element for element; `evaluate --oracle tflm` and the
tests run every input through it. ``arena_bytes`` reports the arena TFLM's planner used for a
model, to compare mcuprune's memory plan with.
"""

from __future__ import annotations

import os
import re
import tempfile

import numpy as np
from tflite_micro.python.tflite_micro import runtime

_MIN_ARENA = 8 << 20  # bytes; the wrapper's default (10x the file) is too small for models with few constants


def _interpreter(model: bytes, config: runtime.InterpreterConfig) -> runtime.Interpreter:
    arena = max(10 * len(model), _MIN_ARENA)
    return runtime.Interpreter.from_bytes(bytes(model), arena_size=arena, intrepreter_config=config)


def run_tflm(model: bytes, x: np.ndarray) -> np.ndarray:
    """Every sample of the batch `x` (N, ...) through one interpreter (prepared once, as on a device);
    returns the outputs flattened per sample (N, outputs)."""
    interpreter = _interpreter(model, runtime.InterpreterConfig.kAllocationRecording)
    shape = tuple(interpreter.get_input_details(0)["shape"])
    outputs = []
    for sample in x:
        interpreter.set_input(np.ascontiguousarray(sample).reshape(shape), 0)
        interpreter.invoke()
        outputs.append(np.array(interpreter.get_output(0), copy=True).reshape(-1))
    return np.stack(outputs)


def arena_bytes(model: bytes) -> dict[str, int]:
    """TFLM's arena use after one invocation on zeros: {"total", "head", "tail"} bytes. The head is
    the activation plan (what mcuprune's arena compares with); the tail holds persistent structures,
    measured on this 64-bit host (smaller on a 32-bit Cortex-M)."""
    interpreter = _interpreter(model, runtime.InterpreterConfig.kAllocationRecording)
    details = interpreter.get_input_details(0)
    interpreter.set_input(np.zeros(tuple(details["shape"]), dtype=details["dtype"]), 0)
    interpreter.invoke()
    with tempfile.TemporaryFile(mode="w+b") as captured:
        saved = os.dup(2)  # print_allocations writes to the C-level stderr
        try:
            os.dup2(captured.fileno(), 2)
            interpreter.print_allocations()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        text = captured.read().decode("utf-8", errors="replace")
    found = {key: re.search(rf"Arena allocation {key} (\d+) bytes", text) for key in ("total", "head", "tail")}
    if found["total"] is None:
        raise RuntimeError(f"could not read TFLM's allocation report: {text[:200]!r}")
    return {key: int(m.group(1)) for key, m in found.items() if m}
