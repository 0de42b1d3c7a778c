"""Static activation arena for a chain of layers, sized by tensor liveness.

In a chain, the output of layer i is live only while layer i+1 reads it, so at any moment two
tensors are live: the one being read and the one being written. Alternating tensors between the
two ends of one buffer (even-numbered at offset 0, odd-numbered flush against the end) needs an
arena of max(size[i] + size[i+1]) bytes and never overlaps a live pair. The model input and the
logits live outside the arena (the caller's buffers).
"""

from __future__ import annotations

from dataclasses import dataclass

ALIGN = 4  # kernels load int8 activations as 32-bit words


def align_up(n: int, align: int = ALIGN) -> int:
    return (n + align - 1) // align * align


@dataclass(frozen=True)
class ArenaPlan:
    size: int  # bytes
    offsets: tuple[int, ...]  # byte offset of each intermediate tensor (layer outputs but the last)


def plan_arena(tensor_sizes: list[int]) -> ArenaPlan:
    """Offsets for intermediate tensors 0..n-1 where tensor i feeds tensor i+1."""
    sizes = [align_up(s) for s in tensor_sizes]
    if not sizes:
        return ArenaPlan(size=0, offsets=())
    size = max(sizes)
    for a, b in zip(sizes, sizes[1:], strict=False):
        size = max(size, a + b)
    offsets = tuple(0 if i % 2 == 0 else size - s for i, s in enumerate(sizes))
    return ArenaPlan(size=size, offsets=offsets)
