"""Count what a forward pass asks of the machine: operators and host reads.

On a GPU every operator is a kernel launch issued by Python, and every *host read* (a value
the host needs before it can issue the next operator: ``.item()``, ``.tolist()``,
``float()`` / ``bool()`` of a tensor, an operator whose output shape depends on values such
as ``nonzero``) makes the host wait until the device has caught up. Both are independent of
the input size, so they can be counted on a CPU: :func:`count_dispatch` runs a function
under a :class:`~torch.utils._python_dispatch.TorchDispatchMode` that sees every ATen
operator, and additionally watches ``Tensor.tolist`` (which on CPU tensors reads memory
without dispatching an operator).

torch.compile does not run compiled code under a dispatch mode (it falls back to eager), so
compiled callables are counted with the profiler instead (:func:`profile_count`): ATen
operators called from outside compiled code or as its external kernels, the kernels that
inductor generated (visible on CPU when compiled with
``torch._inductor.config.cpp.enable_kernel_profile``), the compiled regions entered, host
reads, and on CUDA the kernel launches, CUDA-graph launches and synchronisations that the
CUDA runtime saw. :func:`profile_count` works for eager callables too; on CUDA it is the
count of what the device was actually asked to do.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["DispatchCount", "count_dispatch", "counting", "profile_count"]

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
    method: str = "dispatch"
    #: profiler only: compiled regions entered, and CUDA runtime calls (launches, syncs)
    extra: Dict[str, int] = field(default_factory=dict)

    @property
    def kernels(self) -> int:
        return sum(n for name, n in self.ops.items() if not name.startswith("view:"))

    def as_dict(self) -> Dict[str, object]:
        return {"kernels": self.kernels, "host_reads": self.host_reads,
                "host_read_ops": sorted(Counter(self.where).items()),
                "count_method": self.method, **self.extra}

    def top(self, n: int = 8) -> List[Tuple[str, int]]:
        """The ``n`` most frequent kernel-running operators."""
        return Counter({k: v for k, v in self.ops.items()
                        if not k.startswith("view:")}).most_common(n)

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
def _counting_tolist(record: DispatchCount) -> Iterator[None]:
    original = torch.Tensor.tolist

    def tolist(self):
        record.host_reads += 1
        record.where.append("tolist")
        return original(self)

    torch.Tensor.tolist = tolist
    try:
        yield
    finally:
        torch.Tensor.tolist = original


@contextlib.contextmanager
def counting() -> Iterator[DispatchCount]:
    """Count the operators and host reads of everything run inside the block."""
    record = DispatchCount()
    with _counting_tolist(record), _Mode(record):
        yield record


def count_dispatch(fn: Callable, *args, **kwargs) -> Tuple[object, DispatchCount]:
    """``fn(*args, **kwargs)`` and what it dispatched."""
    with counting() as record:
        out = fn(*args, **kwargs)
    return out, record


_HOST_READ_NAMES = {"aten::" + op.overloadpacket.__name__ for op in _HOST_READS}
_CUDA_LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel",
                  "cuLaunchKernelEx", "cudaLaunchCooperativeKernel")
_CUDA_SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


def _is_view(name: str) -> bool:
    """Whether ATen operator ``name`` (profiler spelling ``aten::x``) is a view or metadata
    operator (no kernel)."""
    packet = getattr(_aten, name[len("aten::"):], None)
    if packet is None:
        return False
    try:
        overload = getattr(packet, packet.overloads()[0])
    except (AttributeError, IndexError):
        return False
    return overload.is_view or overload in _FREE


def profile_count(fn: Callable, *args, **kwargs) -> Tuple[object, DispatchCount]:
    """``fn(*args, **kwargs)`` and what it ran, seen by ``torch.profiler`` (works for
    compiled callables; see the module docstring). ``ops`` holds the outermost ATen
    operators (those not called by another ATen operator) and ``kernel:NAME`` for every
    kernel generated by inductor; ``extra``: ``compiled_regions`` and, on CUDA,
    ``cuda_kernel_launches``, ``cuda_graph_launches`` and ``cuda_syncs``."""
    from torch.profiler import ProfilerActivity, profile

    record = DispatchCount(method="profiler")
    activities = [ProfilerActivity.CPU]
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    if cuda:
        activities.append(ProfilerActivity.CUDA)
        torch.cuda.synchronize()
    with _counting_tolist(record), profile(activities=activities) as prof:
        out = fn(*args, **kwargs)
        if cuda:
            torch.cuda.synchronize()
    extra = Counter(compiled_regions=0)
    for event in prof.events():
        name = event.name
        if name.startswith("Torch-Compiled Region"):
            extra["compiled_regions"] += 1
        elif name in _CUDA_LAUNCHES:
            extra["cuda_kernel_launches"] += 1
        elif name == "cudaGraphLaunch":
            extra["cuda_graph_launches"] += 1
        elif name in _CUDA_SYNCS:
            extra["cuda_syncs"] += 1
        elif "cpp_fused" in name or name.startswith("triton_"):
            if event.device_type == torch.autograd.DeviceType.CPU:
                record.ops["kernel:" + name] += 1
        elif name.startswith("aten::"):
            if name in _HOST_READ_NAMES:  # also inside another operator (item, indexing)
                record.host_reads += 1
                record.where.append(name[len("aten::"):])
            parent = event.cpu_parent
            while parent is not None and not parent.name.startswith("aten::"):
                parent = parent.cpu_parent
            if parent is None:  # an outermost operator
                record.ops[("view:" if _is_view(name) else "") + name[len("aten::"):]] += 1
    if cuda:  # the last synchronisation is this function's own
        extra["cuda_syncs"] = max(0, extra.get("cuda_syncs", 0) - 1)
    record.extra = dict(extra)
    return out, record
