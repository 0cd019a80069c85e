"""Count what a forward pass asks of the machine: operators and host reads.

On a GPU every operator is a kernel launch issued by Python, and every *host read* (a value
the host needs before it can issue the next operator: ``.item()``, ``.tolist()``,
``float()`` / ``bool()`` of a tensor, an operator whose output shape depends on values such
as ``nonzero``) makes the host wait until the device has caught up. Both are independent of
the input size, so they can be counted on a CPU: :func:`count_dispatch` runs a function
under a :class:`~torch.utils._python_dispatch.TorchDispatchMode` that sees every ATen
operator, and additionally watches ``Tensor.tolist`` (which on CPU tensors reads memory
without dispatching an operator).
"""
from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["DispatchCount", "count_dispatch", "counting"]

_aten = torch.ops.aten
# operators that hand a value to the host, or whose output shape depends on tensor values
_HOST_READS = {
    _aten._local_scalar_dense.default,  # item(), float(t), bool(t), int(t)
    _aten.nonzero.default,
    _aten.masked_select.default,
    _aten.unique_consecutive.default,
    _aten._unique2.default,
    _aten.equal.default,
}
# metadata-only operators: no kernel runs
_FREE = {
    _aten.detach.default,
    _aten.alias.default,
    _aten.lift_fresh.default,
}


@dataclass
class DispatchCount:
    """What :func:`count_dispatch` saw. ``kernels``: operators that run a kernel (views and
    metadata operators excluded); ``host_reads``: values read back by the host or
    data-dependent shapes, with ``where`` naming each (operator names)."""

    ops: Counter = field(default_factory=Counter)
    host_reads: int = 0
    where: List[str] = field(default_factory=list)

    @property
    def kernels(self) -> int:
        return sum(n for name, n in self.ops.items() if not name.startswith("view:"))

    def as_dict(self) -> Dict[str, object]:
        return {"kernels": self.kernels, "host_reads": self.host_reads,
                "host_read_ops": sorted(Counter(self.where).items())}

    def count(self, name: str) -> int:
        """Calls of ATen operator ``name`` (e.g. ``"convolution"``)."""
        return self.ops.get(name, 0)


class _Mode(TorchDispatchMode):
    def __init__(self, record: DispatchCount):
        super().__init__()
        self.record = record

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if func in _HOST_READS or _bool_index(func, args):
            self.record.host_reads += 1
            self.record.where.append(name)
        if func.is_view or func in _FREE:
            self.record.ops["view:" + name] += 1
        else:
            self.record.ops[name] += 1
        return func(*args, **kwargs)


def _bool_index(func, args) -> bool:
    """Indexing with a boolean mask has a data-dependent output shape."""
    if func not in (_aten.index.Tensor, _aten.index_put.default, _aten.index_put_.default):
        return False
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())


@contextlib.contextmanager
def counting() -> Iterator[DispatchCount]:
    """Count the operators and host reads of everything run inside the block."""
    record = DispatchCount()
    original = torch.Tensor.tolist

    def tolist(self):
        record.host_reads += 1
        record.where.append("tolist")
        return original(self)

    torch.Tensor.tolist = tolist
    try:
        with _Mode(record):
            yield record
    finally:
        torch.Tensor.tolist = original


def count_dispatch(fn: Callable, *args, **kwargs) -> Tuple[object, DispatchCount]:
    """``fn(*args, **kwargs)`` and what it dispatched."""
    with counting() as record:
        out = fn(*args, **kwargs)
    return out, record
