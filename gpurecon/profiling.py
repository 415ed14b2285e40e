"""Count what a torch program would cost on a GPU, measured on any device (a CPU included).

On a GPU every ATen operation that computes is (at least) one kernel launch (~5-10 us of host
time each), and every operation whose result the host must read (``.item()``, ``nonzero``, a
boolean-mask index, a device->host copy, ``torch.equal``, ``linalg`` error checks) is a host
synchronisation that drains the launch queue. :class:`OpCounter` counts both, plus the
floating-point operations of matrix products and factorisations, by intercepting every ATen
call (``TorchDispatchMode``) and the Python-level host copies that dispatch nothing on a CPU
(``tolist``, ``numpy``, ``cpu()``; ``TorchFunctionMode``). Counted on a CPU run, every tensor is
treated as if it lived on the GPU.

    >>> with OpCounter() as counts:
    ...     fit(...)
    >>> counts.ops, counts.launches, counts.syncs, counts.flops

Glossary of the counts
----------------------
ops
    Every ATen operation dispatched, views and allocations included.
launches
    ``ops`` that compute (views, ``empty``, host-side checks and scalar reads excluded): an
    estimate of kernel launches. Some operations launch several kernels (``nonzero``, sorts,
    batched factorisations), so it is a lower bound.
syncs
    Host synchronisations (see :data:`SYNC_OPS` and the rules in ``_is_sync``).
flops
    Floating-point operations of matrix products and linear-algebra factorisations/solves
    (element-wise work is memory-bound and not counted).
h2d
    Host->device copies (``torch.tensor(list)`` / ``lift_fresh``, copies from the CPU).
"""

from __future__ import annotations

import math
from collections import Counter

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# Operations whose result the host reads before it can go on (each one drains the GPU queue).
SYNC_OPS = frozenset({
    "aten::_local_scalar_dense",        # .item(), float(t), int(t), bool(t), if t: ...
    "aten::nonzero",                    # and torch.where(mask)
    "aten::masked_select",
    "aten::equal",
    "aten::is_nonzero",
    "aten::unique_dim", "aten::_unique2", "aten::unique_consecutive",
    "aten::_linalg_check_errors",       # torch.linalg.* without _ex reads the info flags
})
# Operations that launch no kernel: allocations and host-side bookkeeping.
NO_KERNEL_OPS = frozenset({
    "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::_unsafe_view", "aten::detach",
    "aten::lift_fresh", "aten::_local_scalar_dense", "aten::_linalg_check_errors", "aten::sym_size",
    "aten::sym_stride", "aten::sym_numel", "aten::sym_storage_offset", "aten::set_",
    "aten::resize_", "aten::_reshape_alias",
})
# Python-level tensor methods that copy to the host without dispatching an ATen op on a CPU.
HOST_COPY_METHODS = frozenset({"tolist", "numpy", "__array__", "cpu"})


def _shape(t) -> tuple:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else ()


def _batch(shape: tuple, core: int) -> int:
    return math.prod(shape[:-core]) if len(shape) > core else 1


def matmul_flops(name: str, args, kwargs=None, out=None) -> int:
    """Floating-point operations of one product or linear-algebra call (0 for anything else).

    Products count 2 flops per multiply-add (``(a, b) @ (b, c)`` = ``2abc``); factorisations
    use the textbook counts (Cholesky ``n^3/3``, LU ``2n^3/3``, solves ``2n^2 k``,
    triangular solves ``n^2 k``, symmetric eigen-decomposition ``9n^3`` with vectors and
    ``4n^3/3`` without, inverse ``2n^3``, SVD ``4mn^2 + 8n^3`` for m >= n), times the batch.
    """
    kwargs = kwargs or {}
    s = [_shape(a) for a in args[:3]] + [(), (), ()]
    if name in ("aten::mm", "aten::addmm"):
        a, b = (s[0], s[1]) if name == "aten::mm" else (s[1], s[2])
        return 2 * a[0] * a[1] * b[1]
    if name in ("aten::bmm", "aten::baddbmm"):
        a, b = (s[0], s[1]) if name == "aten::bmm" else (s[1], s[2])
        return 2 * a[0] * a[1] * a[2] * b[2]
    if name in ("aten::mv", "aten::addmv"):
        a = s[0] if name == "aten::mv" else s[1]
        return 2 * a[0] * a[1]
    if name in ("aten::dot", "aten::vdot"):
        return 2 * s[0][0]
    if name == "aten::linalg_vecdot":
        return 2 * math.prod(torch.broadcast_shapes(s[0], s[1]))
    if name in ("aten::linalg_cholesky_ex", "aten::cholesky"):
        n = s[0][-1]
        return _batch(s[0], 2) * n ** 3 // 3
    if name in ("aten::linalg_lu_factor_ex", "aten::linalg_lu"):
        n = s[0][-1]
        return _batch(s[0], 2) * 2 * n ** 3 // 3
    if name == "aten::_linalg_solve_ex":
        a, b = s[0], s[1]
        n, k = a[-1], (b[-1] if len(b) == len(a) else 1)
        return _batch(a, 2) * (2 * n ** 3 // 3 + 2 * n * n * k)
    if name in ("aten::cholesky_solve", "aten::linalg_lu_solve", "aten::lu_solve"):
        b, a = s[0], s[1]          # cholesky_solve(B, L); lu_solve(LU, pivots, B) handled below
        if name != "aten::cholesky_solve":
            a, b = s[0], s[2]
        n, k = a[-1], b[-1]
        return max(_batch(a, 2), _batch(b, 2)) * 2 * n * n * k
    if name in ("aten::linalg_solve_triangular", "aten::triangular_solve"):
        a, b = (s[0], s[1]) if name == "aten::linalg_solve_triangular" else (s[1], s[0])
        n, k = a[-1], b[-1]
        return max(_batch(a, 2), _batch(b, 2)) * n * n * k
    if name == "aten::_linalg_eigh":
        n = s[0][-1]
        # eigvalsh may compute the vectors anyway (it does under a dispatch mode): ask the output
        vectors = isinstance(out, (tuple, list)) and len(out) > 1 and out[1].numel() > 0
        return _batch(s[0], 2) * (9 * n ** 3 if vectors else 4 * n ** 3 // 3)
    if name == "aten::linalg_inv_ex":
        n = s[0][-1]
        return _batch(s[0], 2) * 2 * n ** 3
    if name == "aten::_linalg_svd":
        m, n = max(s[0][-2:]), min(s[0][-2:])
        return _batch(s[0], 2) * (4 * m * n * n + 8 * n ** 3)
    return 0


def _has_bool_index(indices) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


def _is_sync(name: str, func, args, kwargs) -> bool:
    if name in SYNC_OPS:
        return True
    if name in ("aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"):
        return _has_bool_index(args[1] if len(args) > 1 else kwargs.get("indices"))
    if name == "aten::repeat_interleave":       # the output size is read from the device
        return func._overloadname in ("Tensor", "self_Tensor") and kwargs.get("output_size") is None
    if name == "aten::_to_copy":                # device -> host
        dev = kwargs.get("device")
        src = args[0].device if isinstance(args[0], torch.Tensor) else None
        return dev is not None and torch.device(dev).type == "cpu" and src is not None and src.type != "cpu"
    return False


def _is_h2d(name: str, args, kwargs) -> bool:
    if name == "aten::lift_fresh":
        return True
    if name == "aten::_to_copy":
        dev = kwargs.get("device")
        src = args[0].device if isinstance(args[0], torch.Tensor) else None
        return dev is not None and torch.device(dev).type != "cpu" and src is not None and src.type == "cpu"
    return False


class _HostCopies(TorchFunctionMode):
    """Python-level device->host copies of tensors that already live on the CPU (which dispatch
    no ATen copy); on a GPU the same calls dispatch ``_to_copy`` and are counted there."""

    def __init__(self, counter: "OpCounter"):
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        t = args[0] if args and isinstance(args[0], torch.Tensor) else None
        # ``.to(device)`` is not counted: device-generic code moves tensors to the compute
        # device with it, which on a CPU run reads as a host copy that a GPU run does not make
        if t is not None and t.device.type == "cpu" and name in HOST_COPY_METHODS:
            self.counter._count_sync(f"Tensor.{name}")
        return func(*args, **kwargs)


class OpCounter(TorchDispatchMode):
    """Count ATen operations, estimated kernel launches, host synchronisations and flops.

    Use as a context manager around the code to measure; read the totals afterwards.

    Attributes
    ----------
    ops, launches, syncs, flops, h2d : int
        Totals (see the module docstring).
    by_op : collections.Counter
        Operation name -> count (every op).
    sync_by_op : collections.Counter
        What caused each synchronisation.
    """

    def __init__(self):
        super().__init__()
        self.ops = self.launches = self.syncs = self.flops = self.h2d = 0
        self.by_op: Counter = Counter()
        self.sync_by_op: Counter = Counter()
        self._fn_mode = _HostCopies(self)

    def _count_sync(self, name: str) -> None:
        self.syncs += 1
        self.sync_by_op[name] += 1

    def __enter__(self):
        self._fn_mode.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._fn_mode.__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        out = func(*args, **kwargs)
        self.ops += 1
        self.by_op[name] += 1
        if not func.is_view and name not in NO_KERNEL_OPS:
            self.launches += 1
        if _is_sync(name, func, args, kwargs):
            self._count_sync(name)
        if _is_h2d(name, args, kwargs):
            self.h2d += 1
        self.flops += matmul_flops(name, args, kwargs, out)
        return out

    def summary(self) -> dict:
        """The totals as a dict (ops, launches, syncs, flops, h2d)."""
        return dict(ops=self.ops, launches=self.launches, syncs=self.syncs, flops=self.flops, h2d=self.h2d)
