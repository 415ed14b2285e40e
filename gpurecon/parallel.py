"""Several devices for one run: Lightning Fabric ranks share the solver's problems.

``devices=N`` (N > 1) launches N ranks with :class:`lightning.fabric.Fabric` (strategy
``ddp_spawn``: one process per GPU with NCCL, or N CPU processes with gloo). The problems of a
cross-validated fit are split across the ranks by target column (each rank fits its targets,
every fold and grid point, and the permuted copies of its targets), or by permutation when there
are fewer targets than ranks. Every rank solves its shard with
:func:`gpurecon.solver.cross_val_predict`; rank 0 gathers the shards (``fabric.all_gather``) and
returns one :class:`~gpurecon.solver.CVResult` to the calling process, which alone writes
outputs. Ranks other than 0 return nothing and write nothing (they only emit warnings).

A shard is the same problem as in a one-process fit (same X, same folds and grid, the same
target columns and permutations), but the batched solver makes some choices per batch (working
set sizes, when a Newton polish pays off), so predictions agree with a one-process fit to the
solver's tolerance, not bit for bit; the same shards give bit-identical results run in one
process or on N ranks (see tests/test_parallel.py).

Usable without Hydra: ``sharded_cross_val_predict(X, Y, devices=2, device="cpu", alphas=...)``.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

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


# --------------------------------------------------------------------------- the plan


@dataclass
class Shard:
    """The problems of one rank: target columns and (optionally) permutation rows."""

    targets: np.ndarray          # indices into Y's columns
    permutations: np.ndarray     # indices into the permutation rows (empty: none)


def plan_shards(*, n_targets: int, n_permutations: int, n_ranks: int) -> list[Shard]:
    """Split the (target, permutation) problems into ``n_ranks`` contiguous shards.

    By target columns when there are at least as many targets as ranks (each rank also fits
    every permuted copy of its targets); otherwise by permutations (each rank fits every target
    once more, a small cost beside many permutations). A rank may get an empty shard when
    there is less work than ranks.
    """
    if n_ranks < 1:
        raise ValueError(f"devices must be >= 1, got {n_ranks}")
    all_t, all_p = np.arange(n_targets), np.arange(n_permutations)
    if n_targets >= n_ranks or n_permutations < n_ranks:
        return [Shard(t, all_p) for t in np.array_split(all_t, n_ranks)]
    return [Shard(all_t, p) for p in np.array_split(all_p, n_ranks)]


def by_permutation(shards: list[Shard]) -> bool:
    """True when the shards split the permutations (every shard holds every target)."""
    return len(shards) > 1 and all(len(s.targets) == len(shards[0].targets) for s in shards) \
        and all(np.array_equal(s.targets, shards[0].targets) for s in shards)


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
    return fabric.launch(fn, *args)


# --------------------------------------------------------------------------- the sharded fit


def sharded_cross_val_predict(X, Y, *, devices: int, device: str = "auto", permutations=None,
                              **solver_kwargs):
    """:func:`gpurecon.solver.cross_val_predict` with its problems split over Fabric ranks.

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
        ``l1_ratios``, ``folds``, ``preprocess``, ``tol``, ...; not ``device``).

    Returns
    -------
    CVResult
        Assembled in the column order of a one-process fit.
    """
    from .solver import cross_val_predict

    if "device" in solver_kwargs:
        raise ValueError("pass the ranks' accelerator as device=, not inside solver_kwargs")
    if devices == 1:
        return cross_val_predict(X, Y, permutations=permutations, device=device, **solver_kwargs)
    Xc = _cpu(X)
    Yc = _cpu(Y)
    if Yc.ndim != 2:
        raise ValueError(f"Y must be 2-D (samples x targets) for a sharded fit, got shape {tuple(Yc.shape)}")
    perms = None if permutations is None else np.asarray(_cpu(permutations)).astype(np.int64)
    shards = plan_shards(n_targets=Yc.shape[1], n_permutations=0 if perms is None else perms.shape[0],
                         n_ranks=int(devices))
    if any(len(s.targets) == 0 for s in shards):
        raise ValueError(f"devices={devices} is more ranks than the work can be split into "
                         f"({Yc.shape[1]} targets, {0 if perms is None else perms.shape[0]} permutations)")
    t0 = time.perf_counter()
    accelerator = rank_device_kind(device)
    log.info("solver: %d ranks (Lightning Fabric ddp_spawn, %s, %s backend) share %d targets x %d "
             "permutations, split by %s", devices, accelerator, "gloo" if accelerator == "cpu" else "nccl",
             Yc.shape[1], 0 if perms is None else perms.shape[0],
             "permutation" if by_permutation(shards) else "target")
    out = launch(devices=int(devices), device=accelerator, fn=_rank_fit,
                 args=(Xc, Yc, perms, shards, solver_kwargs))
    parent = torch.device(str(device)) if str(device).startswith("cuda:") else torch.device(
        "cuda:0" if accelerator == "cuda" else "cpu")
    return _to_device(out, parent, seconds=time.perf_counter() - t0)


def _cpu(a):
    if isinstance(a, torch.Tensor):
        return a.detach().cpu()
    return torch.as_tensor(np.ascontiguousarray(a))


def _rank_fit(fabric, X, Y, perms, shards, solver_kwargs):
    """One rank: fit its shard, gather every shard on rank 0, assemble there."""
    from .solver import cross_val_predict

    rank, world = fabric.global_rank, fabric.world_size
    shard = shards[rank]
    block = solve_shard(X, Y, perms, shard, solver_kwargs, device=fabric.device,
                        fit=cross_val_predict)
    with warnings.catch_warnings():  # Lightning calls a torch collective torch calls deprecated
        warnings.filterwarnings("ignore", message=".*all_gather is deprecated")
        gathered = fabric.all_gather(pad_block(block, shards))             # each (world, ...)
    _close_process_group(fabric)
    if rank != 0:
        return None
    blocks = [{k: v[r].cpu() for k, v in gathered.items()} for r in range(world)]
    res = assemble(blocks, shards, n_targets=Y.shape[1], perms=perms, template=block)
    # numpy, not tensors: torch would pass tensors through shared memory that dies with the rank
    return {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in vars(res).items()}


def _close_process_group(fabric) -> None:
    """Every rank past the gather, then the process group destroyed: a rank that exits with
    gloo's threads still running aborts ("terminate called without an active exception")."""
    import torch.distributed as dist

    fabric.barrier()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def solve_shard(X, Y, perms, shard: Shard, solver_kwargs: dict, *, device, fit) -> dict:
    """Fit one shard; returns its block: predictions (G, n, S), null (Q, G, n, S) and the
    per-problem statistics (F, G, 1 + Q, S), plus what every rank shares (grid, masks)."""
    Ys = Y[:, torch.as_tensor(shard.targets, dtype=torch.long)].contiguous()
    Q = len(shard.permutations)
    p = None if perms is None or Q == 0 else perms[shard.permutations]
    res = fit(X, Ys, permutations=p, device=device, **solver_kwargs)
    G, n, S = res.predictions.shape
    F = res.train_masks.shape[0]

    def stats(t):  # (F, G, S + Q*S) -> (F, G, 1 + Q, S)
        return t.reshape(F, G, 1 + Q, S)

    null = res.null_predictions if Q else torch.zeros((0, G, n, S), dtype=res.predictions.dtype)
    return {"pred": res.predictions.cpu(), "null": null.cpu(),
            "converged": stats(res.converged).to(torch.uint8).cpu(),   # gloo has no bool
            "gap_ratio": stats(res.gap_ratio).cpu(), "n_iter": stats(res.n_iter).cpu(),
            "train_masks": res.train_masks.to(torch.uint8).cpu(),
            "n_features": (torch.zeros(0, dtype=torch.int64) if res.n_features is None
                           else torch.as_tensor(res.n_features).to(torch.int64).cpu()),
            "seconds": torch.tensor([res.seconds], dtype=F64), "grid": res.grid}


_GATHERED = ("pred", "null", "converged", "gap_ratio", "n_iter", "train_masks", "n_features", "seconds")


def pad_block(block: dict, shards: list[Shard]) -> dict:
    """Zero-pad a block to the largest shard so every rank gathers tensors of one shape."""
    S = max(len(s.targets) for s in shards)
    Q = max(len(s.permutations) for s in shards)
    out = {}
    for key in _GATHERED:
        t = block[key]
        if key in ("pred",):
            t = _pad(t, {2: S})
        elif key == "null":
            t = _pad(t, {0: Q, 3: S})
        elif key in ("converged", "gap_ratio", "n_iter"):
            t = _pad(t, {2: 1 + Q, 3: S})
        out[key] = t.contiguous()
    return out


def _pad(t: torch.Tensor, sizes: dict[int, int]) -> torch.Tensor:
    shape = list(t.shape)
    for dim, size in sizes.items():
        shape[dim] = size
    if list(t.shape) == shape:
        return t
    out = torch.zeros(shape, dtype=t.dtype, device=t.device)
    out[tuple(slice(0, s) for s in t.shape)] = t
    return out


def assemble(blocks: list[dict], shards: list[Shard], *, n_targets: int, perms, template: dict):
    """One CVResult from every rank's (padded) block, in a one-process fit's column order."""
    from .solver import CVResult

    G, n = blocks[0]["pred"].shape[:2]
    F = blocks[0]["train_masks"].shape[0]
    T, P = n_targets, (0 if perms is None else perms.shape[0])
    pred = torch.zeros((G, n, T), dtype=blocks[0]["pred"].dtype)
    null = torch.zeros((P, G, n, T), dtype=blocks[0]["null"].dtype) if P else None
    stats = {k: torch.zeros((F, G, 1 + P, T), dtype=blocks[0][k].dtype)
             for k in ("converged", "gap_ratio", "n_iter")}
    split_perms = by_permutation(shards)
    for r, (block, shard) in enumerate(zip(blocks, shards)):
        t = torch.as_tensor(shard.targets, dtype=torch.long)
        q = torch.as_tensor(shard.permutations, dtype=torch.long)
        S, Q = len(t), len(q)
        if S == 0:
            continue
        if not split_perms or r == 0:          # the real targets: from their rank (or rank 0)
            pred[:, :, t] = block["pred"][:, :, :S]
            for k in stats:
                stats[k][:, :, 0, t] = block[k][:, :, 0, :S]
        if Q:
            null[q[:, None], :, :, t[None, :]] = block["null"][:Q, :, :, :S].permute(0, 3, 1, 2)
            for k in stats:
                stats[k][:, :, (1 + q)[:, None], t[None, :]] = block[k][:, :, 1:1 + Q, :S]
    flat = {k: v.reshape(F, G, (1 + P) * T) for k, v in stats.items()}
    n_features = blocks[0]["n_features"]
    return CVResult(pred, template["grid"], null, perms, flat["converged"].bool(), flat["gap_ratio"],
                    flat["n_iter"], blocks[0]["train_masks"].bool(),
                    n_features if n_features.numel() else None,
                    float(max(float(b["seconds"][0]) for b in blocks)))


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
