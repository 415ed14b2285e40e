"""Resolve the one torch device a run uses (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``)."""

from __future__ import annotations

import re

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Return a ``torch.device`` for a config value.

    Parameters
    ----------
    device : str | torch.device
        ``"auto"`` picks CUDA when present, else the CPU. ``"cuda"`` without a GPU is
        an error rather than a silent fallback, so CPU/GPU comparisons stay honest.
    """
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise ValueError(f"device must be one of auto, cpu, cuda, cuda:N, got {device!r}")
    name = device.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise ValueError(f"device must be one of auto, cpu, cuda, cuda:N, got {device!r}")
    if not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but torch sees no CUDA device "
            f"(torch {torch.__version__}); use device=cpu or device=auto"
        )
    if match[1] is not None and int(match[1]) >= torch.cuda.device_count():
        raise ValueError(f"device={device!r}: torch sees {torch.cuda.device_count()} CUDA "
                         f"device(s), cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    """A human-readable name for logs and provenance (e.g. ``cuda:0 (NVIDIA H100)``)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return "cpu"
