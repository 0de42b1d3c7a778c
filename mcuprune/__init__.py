"""mcuprune: trained network -> pruned int8 firmware for Cortex-M, run bit-exact in QEMU.

The public Python API sits here; the stages are the sub-packages (docs/architecture.md).
"""

from __future__ import annotations

__version__ = "0.1.0"


def import_torch(module, example_input, name: str | None = None):  # noqa: ANN001, ANN201 - torch types, lazily
    """A float PyTorch module -> the float IR model (mcuprune.model.ir.FloatModel), through torch.export:
    batch norm folded into the preceding conv/dense layer, layouts converted to HWC. `example_input` is
    one NCHW (or (N, features)) float tensor. Quantize it with mcuprune.quantize.quantize_model.

    Imported here, not at the top: `import mcuprune` must not pay for importing torch."""
    from mcuprune.frontend.torch_export import import_module

    return import_module(module, example_input, name)
