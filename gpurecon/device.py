"""Resolve the one torch device a run uses (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``)."""

from __future__ import annotations

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
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    name = device.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r} was requested but torch sees no CUDA device "
                f"(torch {torch.__version__}); use device=cpu or device=auto"
            )
        return torch.device(name)
    raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")


def describe_device(device: torch.device) -> str:
    """A human-readable name for logs and provenance (e.g. ``cuda:0 (NVIDIA H100)``)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return "cpu"
