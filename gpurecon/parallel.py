"""Several devices for one run: Lightning Fabric ranks share the solver's chunks of work.

``devices=N`` (N > 1) launches N ranks with :class:`lightning.fabric.Fabric` (strategy
``ddp_spawn``: one process per GPU with NCCL, or N CPU processes with gloo). A one-process
:func:`gpurecon.solver.cross_val_predict` solves its columns (the targets, then every permuted
copy) in chunks sized to the memory budget, each chunk on its own; here every rank prepares the
same whole problem, plans the same chunks and solves its contiguous run of them
(``cross_val_predict(..., part=(rank, N))``). Rank 0 gathers the parts (``fabric.all_gather``)
and returns one :class:`~gpurecon.solver.CVResult`, each column copied from the rank that solved
it, to the calling process, which alone writes outputs. Ranks other than 0 return nothing and
write nothing (they only emit warnings).

Bit for bit the one-process result: the same chunks go through the same code. Two conditions
keep it so: one device type and memory budget (the budget decides the chunks: fixed on CPUs,
half the memory on GPUs, or ``memory_budget``), and on CPUs the same threads per process
(LAPACK and BLAS sum in thread-dependent order): ranks run :func:`rank_threads` threads each,
so a one-process run with ``OMP_NUM_THREADS`` set to that matches. A fit that is one chunk
keeps the other ranks idle (a warning says so).

Usable without Hydra: ``sharded_cross_val_predict(X, Y, devices=2, device="cpu", alphas=...)``.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import allocator

log = logging.getLogger("gpurecon")


def _quiet_lightning() -> None:
    """Lightning logs INFO banners from every rank ("Initializing distributed: GLOBAL_RANK: 1")
    before our code runs there: ranks other than 0 may only warn."""
    for name in ("lightning.fabric", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.WARNING)


# Spawned ranks import Lightning (unpickling the launcher) and then this module (unpickling
# the rank function), before Lightning sets up the process group: quiet it here.
_quiet_lightning()

F64 = torch.float64


# --------------------------------------------------------------------------- launching


def rank_device_kind(device) -> str:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:k`` (or a torch.device) -> the Fabric accelerator,
    ``"cuda"`` or ``"cpu"``: with several devices rank k uses ``cuda:k`` whatever the index."""
    d = str(device).strip().lower()
    if d.startswith("cuda:"):
        d = "cuda"
    if d == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if d in ("cpu", "cuda"):
        if d == "cuda" and not torch.cuda.is_available():
            raise ValueError("device='cuda' was requested but CUDA is not available "
                             "(use device=cpu for CPU ranks)")
        return d
    raise ValueError(f"with devices > 1, device must be 'auto', 'cpu' or 'cuda' (rank k uses cuda:k), "
                     f"got {str(device)!r}")


def launch(*, devices: int, device: str, fn: Callable[..., Any], args: tuple = ()) -> Any:
    """Run ``fn(fabric, *args)`` on ``devices`` Lightning Fabric ranks; return rank 0's result.

    Parameters
    ----------
    devices : int
        Number of ranks: GPUs (``cuda:0`` .. ``cuda:N-1``) or CPU processes (gloo backend).
    device : {"auto", "cpu", "cuda"}
        Which accelerator the ranks use.
    fn : callable
        A module-level function (spawned processes import it by name).
    args : tuple
        Picklable arguments (CPU tensors / arrays).
    """
    if isinstance(devices, bool) or not isinstance(devices, (int, np.integer)) or devices < 1:
        raise ValueError(f"devices must be an integer >= 1, got {devices!r}")
    accelerator = rank_device_kind(device)
    if accelerator == "cuda" and devices > torch.cuda.device_count():
        raise ValueError(f"devices={devices} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    from lightning.fabric import Fabric
    from lightning.fabric.plugins.environments import LightningEnvironment

    _quiet_lightning()  # Lightning sets its loggers to INFO when first imported
    # LightningEnvironment: this process spawns its own ranks even inside a SLURM job (whose
    # environment Lightning would otherwise read as ranks launched by srun)
    fabric = Fabric(accelerator=accelerator, devices=int(devices), strategy="ddp_spawn",
                    num_nodes=1, plugins=[LightningEnvironment()])
    # Each rank runs rank_threads(devices) CPU threads, set through OMP_NUM_THREADS for the spawn
    # (else Lightning sets it, and this process's torch threads, to cpu_count // devices); this
    # process keeps its own threads for what runs after.
    threads, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(rank_threads(devices))
    try:
        return fabric.launch(fn, *args)
    finally:
        torch.set_num_threads(threads)
        if omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = omp


def rank_threads(devices: int) -> int:
    """CPU threads of each rank: ``OMP_NUM_THREADS`` when set, else this process's torch threads
    shared out (at least 1). CPU results are bit-identical to a one-process run with as many
    threads (LAPACK and BLAS split their sums by thread count)."""
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) >= 1:
        return int(omp)
    return max(1, torch.get_num_threads() // int(devices))


# --------------------------------------------------------------------------- the sharded fit


def sharded_cross_val_predict(X, Y, *, devices: int, device: str = "auto", permutations=None,
                              **solver_kwargs):
    """:func:`gpurecon.solver.cross_val_predict` with its chunks of work split over Fabric ranks.

    Parameters
    ----------
    X, Y : array or Tensor
        As in :func:`~gpurecon.solver.cross_val_predict` (Y 2-D: samples x targets).
    devices : int
        Number of ranks; 1 calls :func:`~gpurecon.solver.cross_val_predict` directly.
    device : str or torch.device
        The ranks' accelerator (``auto``, ``cpu``, ``cuda``; rank k uses ``cuda:k``) and where
        the result is returned (``cuda:N`` there; ``cuda:0`` for ``auto``/``cuda``).
    permutations : int array (n_permutations, n_samples) or None
        Row permutations of Y fitted as extra targets.
    **solver_kwargs
        Every other argument of :func:`~gpurecon.solver.cross_val_predict` (``alphas``,
        ``l1_ratios``, ``folds``, ``preprocess``, ``tol``, ``memory_budget``, ...; not
        ``device`` or ``part``).

    Returns
    -------
    CVResult
        The one-process result, bit for bit (same device type, same threads per process).
    """
    from .solver import cross_val_predict

    _check_kwargs(solver_kwargs)
    if devices == 1:
        return cross_val_predict(X, Y, permutations=permutations, device=device, **solver_kwargs)
    t0 = time.perf_counter()
    fields, parent = _sharded(X, Y, permutations, solver_kwargs, devices=devices, device=device, nested=None)
    return _to_device(fields, parent, seconds=time.perf_counter() - t0)


def sharded_nested_cross_val_predict(X, Y, alphas, l1_ratios, *, devices: int, device: str = "auto",
                                     inner="kfold:5", select="per_target", permutations=None, **solver_kwargs):
    """:func:`gpurecon.solver.nested_cross_val_predict` (with its ``permutations``) with the chunks of
    both solves, the inner search and the outer fits, split over Fabric ranks; arguments as there
    and in :func:`sharded_cross_val_predict`. Returns the one-process NestedCVResult, bit for bit
    (same conditions)."""
    from .solver import NestedCVResult, nested_cross_val_predict

    _check_kwargs(solver_kwargs)
    if devices == 1:
        return nested_cross_val_predict(X, Y, alphas, l1_ratios, inner=inner, select=select,
                                        permutations=permutations, device=device, **solver_kwargs)
    if callable(inner):
        raise ValueError("a sharded nested fit needs inner as a string ('loo', 'kfold:<k>'): ranks are "
                         "separate processes")
    t0 = time.perf_counter()
    kw = dict(solver_kwargs, alphas=alphas, l1_ratios=l1_ratios)
    fields, parent = _sharded(X, Y, permutations, kw, devices=devices, device=device,
                              nested={"inner": inner, "select": select})
    outer = _to_device(fields, parent, seconds=time.perf_counter() - t0)
    nest = {k: torch.from_numpy(v).to(parent) for k, v in fields["nested"].items()}
    return NestedCVResult(nest["predictions"], nest["choice"], nest["alpha"], nest["l1_ratio"],
                          nest["inner_loss"], outer.grid, outer)


def _check_kwargs(solver_kwargs: dict) -> None:
    if "device" in solver_kwargs:
        raise ValueError("pass the ranks' accelerator as device=, not inside solver_kwargs")
    if "part" in solver_kwargs:
        raise ValueError("part= is set per rank by the sharded fit; do not pass it")


def _sharded(X, Y, permutations, solver_kwargs, *, devices, device, nested):
    """Launch the ranks; rank 0's assembled fields and the device the result goes to."""
    Xc, Yc = _cpu(X), _cpu(Y)
    if Yc.ndim != 2:
        raise ValueError(f"Y must be 2-D (samples x targets) for a sharded fit, got shape {tuple(Yc.shape)}")
    perms = None if permutations is None else np.asarray(_cpu(permutations)).astype(np.int64)
    accelerator = rank_device_kind(device)
    log.info("solver: %d ranks (Lightning Fabric ddp_spawn, %s, %s backend, %d CPU thread(s) each) share "
             "the chunks of %d targets x %d permutations%s", devices, accelerator,
             "gloo" if accelerator == "cpu" else "nccl", rank_threads(devices), Yc.shape[1],
             0 if perms is None else perms.shape[0], "" if nested is None else " and the inner search")
    # Rank 0 hands the result over in a file: Lightning returns rank 0's value through a pipe
    # that it reads only after every rank has exited, so a result larger than the pipe's buffer
    # (a permutation null) would block rank 0 for ever.
    with tempfile.TemporaryDirectory(prefix="gpurecon-ranks-") as tmp:
        handover = Path(tmp) / "result.pkl"
        out = launch(devices=int(devices), device=accelerator, fn=_rank_fit,
                     args=(Xc, Yc, perms, solver_kwargs, str(handover), nested))
        with open(handover, "rb") as fh:
            fields = pickle.load(fh)   # written by this call's own rank 0, in its own folder
    if out["idle_ranks"]:
        log.warning("solver: the work was fewer chunks than ranks at this memory budget, so %d of %d "
                    "ranks had nothing to solve (a smaller solver.memory_budget_gb splits it finer; it "
                    "changes rounding for one-process runs alike)", out["idle_ranks"], devices)
    parent = torch.device(str(device)) if str(device).startswith("cuda:") else torch.device(
        "cuda:0" if accelerator == "cuda" else "cpu")
    return fields, parent


def _cpu(a):
    if isinstance(a, torch.Tensor):
        return a.detach().cpu()
    return torch.as_tensor(np.ascontiguousarray(a))


def _rank_fit(fabric, X, Y, perms, solver_kwargs, handover, nested=None):
    """One rank: solve its part of the chunks, gather every part on rank 0, assemble there and
    write the result to ``handover``."""
    from .solver import cross_val_predict
    from .solver.cv import nested_parts, select_grid_points

    if os.environ.get(allocator.APPLIED) == "1":   # the app's heap setting, in every rank
        allocator.keep_freed_memory()
    rank, world = fabric.global_rank, fabric.world_size
    if nested is None:
        res = cross_val_predict(X, Y, permutations=perms, device=fabric.device, part=(rank, world),
                                **solver_kwargs)
    else:
        loss, solved_targets, res = nested_parts(X, Y, permutations=perms, device=fabric.device,
                                                 part=(rank, world), **nested, **solver_kwargs)
    with warnings.catch_warnings():  # Lightning calls a torch collective torch calls deprecated
        warnings.filterwarnings("ignore", message=".*all_gather is deprecated")
        gathered, ranges = _gather_columns(fabric, res.solved_columns, lambda *c: part_block(res, *c))
        if nested is not None:
            losses, t_ranges = _gather_columns(fabric, solved_targets, lambda *c: column_block(loss, *c))
    _close_process_group(fabric)
    if rank != 0:
        return None
    parts = [({k: v[r] for k, v in gathered.items()}, *ranges[r].tolist()) for r in range(world)]
    merged = merge_parts(res, parts)
    fields = {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in vars(merged).items()}
    if nested is not None:
        full = merge_columns(torch.zeros(loss.shape, dtype=loss.dtype),
                              [(losses[r], *t_ranges[r].tolist()) for r in range(world)])
        chosen = select_grid_points(full, merged, Y, nested["select"])
        fields["nested"] = {k: getattr(chosen, k).cpu().numpy()
                            for k in ("predictions", "choice", "alpha", "l1_ratio", "inner_loss")}
    with open(handover, "wb") as fh:
        pickle.dump(fields, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return {"idle_ranks": int((ranges[:, 1] == ranges[:, 0]).sum())}


def _gather_columns(fabric, solved: torch.Tensor, block: Callable):
    """Every rank's solved column range [lo, hi) (world, 2) and its ``block(lo, hi, width)``
    padded to the widest range, gathered from all ranks."""
    lo, hi = column_range(solved)
    ranges = _gather(fabric, torch.tensor([lo, hi], dtype=torch.int64))
    width = int((ranges[:, 1] - ranges[:, 0]).max())
    return _gather(fabric, block(lo, hi, width)), ranges


def _gather(fabric, data):
    """``fabric.all_gather`` of a tensor or a dict of tensors, sent from the rank's device (NCCL
    takes CUDA tensors only; gloo CPU ones) and returned on the CPU."""
    if isinstance(data, dict):
        out = fabric.all_gather({k: v.to(fabric.device) for k, v in data.items()})
        return {k: v.cpu() for k, v in out.items()}
    return fabric.all_gather(data.to(fabric.device)).cpu()


def _close_process_group(fabric) -> None:
    """Every rank past the gather, then the process group destroyed: a rank that exits with
    gloo's threads still running aborts ("terminate called without an active exception")."""
    import torch.distributed as dist

    fabric.barrier()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def column_range(solved: torch.Tensor) -> tuple[int, int]:
    """[lo, hi) of the columns a part solved (a part is a contiguous run of chunks; (0, 0): none)."""
    idx = torch.nonzero(solved.cpu()).squeeze(1)
    if idx.numel() == 0:
        return 0, 0
    lo, hi = int(idx[0]), int(idx[-1]) + 1
    if idx.numel() != hi - lo:
        raise RuntimeError("a part's solved columns are not contiguous: a bug, please report it")
    return lo, hi


def all_columns(res) -> torch.Tensor:
    """Held-out predictions of every column, (grid, samples, targets [+ permutations*targets]),
    in the solver's column order (targets, then permutation j's copy of target t at T + j*T + t)."""
    pred = res.predictions
    if res.null_predictions is None:
        return pred
    P, G, n, T = res.null_predictions.shape
    return torch.cat([pred, res.null_predictions.permute(1, 2, 0, 3).reshape(G, n, P * T)], -1)


def column_block(t: torch.Tensor, lo: int, hi: int, width: int) -> torch.Tensor:
    """Last-axis columns [lo, hi) of ``t`` on the CPU, zero-padded to ``width``."""
    t = t[..., lo:hi].cpu()
    pad = torch.zeros((*t.shape[:-1], width - t.shape[-1]), dtype=t.dtype)
    return torch.cat([t, pad], -1)


def merge_columns(out: torch.Tensor, parts) -> torch.Tensor:
    """Copy each part's padded columns ``(block, lo, hi)`` into ``out[..., lo:hi]``; every column
    exactly once (a RuntimeError otherwise)."""
    covered = torch.zeros(out.shape[-1], dtype=torch.int64)
    for block, lo, hi in parts:
        covered[lo:hi] += 1
        out[..., lo:hi] = block[..., :hi - lo]
    if not bool((covered == 1).all()):
        raise RuntimeError(f"the ranks' parts do not cover every column once (coverage "
                           f"{covered.min().item()}..{covered.max().item()}): a bug, please report it")
    return out


def part_block(res, lo: int, hi: int, width: int) -> dict:
    """Columns [lo, hi) of a part's result, zero-padded to ``width`` columns so that every rank
    gathers tensors of one shape (CPU tensors; gloo has no bool)."""
    def cols(t):
        return column_block(t, lo, hi, width)

    return {"pred": cols(all_columns(res)), "converged": cols(res.converged.to(torch.uint8)),
            "gap_ratio": cols(res.gap_ratio), "n_iter": cols(res.n_iter),
            "seconds": torch.tensor([res.seconds], dtype=F64)}


def merge_parts(template, parts: list[tuple[dict, int, int]]):
    """One CVResult from every part ``(block, lo, hi)``: columns copied, no arithmetic."""
    from .solver import CVResult

    T = template.predictions.shape[-1]
    P = 0 if template.null_predictions is None else template.null_predictions.shape[0]
    pred = merge_columns(torch.zeros(all_columns(template).shape, dtype=template.predictions.dtype),
                          [(block["pred"], lo, hi) for block, lo, hi in parts])
    stats = {k: merge_columns(torch.zeros(getattr(template, k).shape, dtype=parts[0][0][k].dtype),
                               [(block[k], lo, hi) for block, lo, hi in parts])
             for k in ("converged", "gap_ratio", "n_iter")}
    G, n = pred.shape[:2]
    null = pred[..., T:].reshape(G, n, P, T).permute(2, 0, 1, 3).contiguous() if P else None
    return CVResult(pred[..., :T].contiguous(), template.grid, null, template.permutations,
                    stats["converged"].bool(), stats["gap_ratio"], stats["n_iter"],
                    template.train_masks.cpu(),
                    None if template.n_features is None else template.n_features.cpu(),
                    float(max(float(block["seconds"][0]) for block, _, _ in parts)))


def _to_device(fields: dict, device: torch.device, *, seconds: float):
    from .solver import CVResult

    def move(a):
        return None if a is None else torch.from_numpy(a).to(device)

    return CVResult(move(fields["predictions"]), fields["grid"], move(fields["null_predictions"]),
                    fields["permutations"], move(fields["converged"]), move(fields["gap_ratio"]),
                    move(fields["n_iter"]), move(fields["train_masks"]), move(fields["n_features"]),
                    seconds)


# --------------------------------------------------------------------------- local pools


_CLAIM: dict[str, Any] = {}


def visible_gpu_count() -> int:
    """CUDA devices this process sees (``CUDA_VISIBLE_DEVICES`` applies)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def claim_free_gpu(*, n_gpus: int | None = None, lock_dir: str | os.PathLike | None = None) -> str:
    """``"cuda:k"`` for a visible GPU no other gpurecon process on this machine holds; ``"cpu"``
    without CUDA.

    The claim is an exclusive ``flock`` on ``<lock_dir>/gpu-<id>.lock`` (id: the physical GPU
    from ``CUDA_VISIBLE_DEVICES``), held until this process exits; later calls in the same
    process return the same device. A local pool's workers (``hydra/launcher=local_pool``)
    claim one GPU each, so two jobs never share a GPU by accident.

    Parameters
    ----------
    n_gpus : int or None
        Visible GPUs (None: ask torch).
    lock_dir : path or None
        Where the lock files live (None: ``$GPURECON_GPU_LOCKS`` or ``<tmp>/gpurecon-gpus-<uid>``).
    """
    if "device" in _CLAIM:
        return _CLAIM["device"]
    n = visible_gpu_count() if n_gpus is None else int(n_gpus)
    if n == 0:
        return "cpu"
    import fcntl
    import tempfile

    folder = Path(lock_dir or os.environ.get("GPURECON_GPU_LOCKS")
                  or Path(tempfile.gettempdir()) / f"gpurecon-gpus-{os.getuid()}")
    folder.mkdir(parents=True, exist_ok=True)
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    ids = visible[:n] if len(visible) >= n else [str(k) for k in range(n)]
    for k, gpu in enumerate(ids):
        handle = open(folder / f"gpu-{gpu}.lock", "a")  # noqa: SIM115 - held for the process's life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        _CLAIM.update(device=f"cuda:{k}", handle=handle)
        return _CLAIM["device"]
    raise ValueError(f"all {n} visible GPU(s) are held by other gpurecon jobs on this machine (locks in "
                     f"{folder}): run at most {n} jobs at once (hydra.launcher.n_jobs={n}), or set device=")


def pool_size() -> int:
    """Jobs a local pool runs at once: one per visible GPU, 1 without CUDA."""
    return max(1, visible_gpu_count())
