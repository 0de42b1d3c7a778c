"""The activation arena: one static buffer holding every intermediate tensor, planned by liveness.

A tensor is live from the layer that writes it to the last layer that reads it. Two tensors may
share bytes only if their lifetimes do not overlap; a layer's inputs and its output always overlap
(the kernel reads one while it writes the other). Placement is greedy, the way tflite-micro's
greedy memory planner does it: tensors in order of decreasing size, each at the lowest offset
where it collides with no tensor placed before it that is live at the same time.

Three kinds of tensor live outside the arena: the model input and the model output (the caller's
buffers), and the output of a RESHAPE, which is its input's bytes under another shape (an alias:
its reader reads the aliased tensor's buffer, whose lifetime grows to cover the alias's readers).
"""

from __future__ import annotations

from dataclasses import dataclass

from mcuprune.model.ir import INPUT, FloatModel, Op, QuantModel, shape_product

ALIGN = 4  # kernels load int8 activations as 32-bit words


def align_up(n: int, align: int = ALIGN) -> int:
    return (n + align - 1) // align * align


OUTPUT = "output"  # where the model's last layer writes: the caller's buffer


@dataclass(frozen=True)
class ArenaPlan:
    size: int  # bytes
    offsets: dict[str, int]  # tensor (layer) name -> byte offset, for tensors in the arena
    storage: dict[str, str]  # every tensor name -> the tensor whose buffer holds it (itself, INPUT, OUTPUT, ...)
    lifetimes: dict[str, tuple[int, int]]  # arena tensor -> (first, last) layer index it is live in

    def location(self, tensor: str) -> str:
        """Where a tensor's bytes are, as a C expression over mcup_run's `input` and `logits` and `mcup_arena`."""
        owner = self.storage[tensor]
        if owner == INPUT:
            return "input"
        if owner == OUTPUT:
            return "logits"
        return f"mcup_arena + {self.offsets[owner]}"


def _storage(model: FloatModel | QuantModel) -> dict[str, str]:
    """Tensor -> the tensor whose buffer holds it: reshapes alias their input, the last layer writes OUTPUT."""
    storage = {INPUT: INPUT}
    last = model.layers[-1].name
    for layer in model.layers:
        if layer.name == last:
            storage[layer.name] = OUTPUT
        elif layer.op is Op.RESHAPE:
            storage[layer.name] = storage[layer.inputs[0]]
        else:
            storage[layer.name] = layer.name
    return storage


def plan_arena(model: FloatModel | QuantModel) -> ArenaPlan:
    """Offsets of every intermediate tensor of `model` in one arena, and the arena's size."""
    storage = _storage(model)
    lifetimes: dict[str, tuple[int, int]] = {}
    for index, layer in enumerate(model.layers):
        owner = storage[layer.name]
        if owner == layer.name:
            lifetimes[owner] = (index, index)
        for name in layer.inputs:
            owner = storage[name]
            if owner in lifetimes:
                first, _ = lifetimes[owner]
                lifetimes[owner] = (first, index)
    sizes = {name: align_up(shape_product(layer.out_shape)) for layer in model.layers
             for name in (layer.name,) if name in lifetimes}
    placed: list[tuple[int, int, int, int]] = []  # offset, end, first, last
    offsets: dict[str, int] = {}
    # Largest first (ties in execution order), each at the lowest offset that fits between the
    # tensors already placed that are live at the same time.
    for name in sorted(lifetimes, key=lambda n: (-sizes[n], lifetimes[n][0])):
        first, last = lifetimes[name]
        busy = sorted((o, e) for o, e, f, l_ in placed if f <= last and first <= l_)
        offset = 0
        for o, e in busy:
            if offset + sizes[name] <= o:
                break
            offset = max(offset, e)
        offsets[name] = offset
        placed.append((offset, offset + sizes[name], first, last))
    size = max((end for _, end, _, _ in placed), default=0)
    return ArenaPlan(size=size, offsets=offsets, storage=storage, lifetimes=lifetimes)
