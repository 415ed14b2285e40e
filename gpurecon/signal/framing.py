"""Frames (50 ms windows, 10 ms shift), context stacking, and word epochs of an envelope.

Frame indices follow the field's reference script (SingleWordProductionDutch
``extract_features.py``) to the sample, including its float rounding::

    numWindows = int(np.floor((n - windowLength*sr) / (frameshift*sr)))
    start = int(np.floor((win*frameshift)*sr)); stop = int(np.floor(start + windowLength*sr))

Note ``stop`` is computed from the already floored ``start``: at 1024 Hz every frame is
51 samples (``floor(w*10.24) + 51``), not ``floor(w*10.24 + 51.2)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .envelope import as_float_tensor


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def frame_bounds(n_samples: int, sfreq: float, window: float = 0.05,
                 shift: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Start (inclusive) and stop (exclusive) sample of every frame, as the field computes them.

    Returns
    -------
    starts, stops : numpy.ndarray of int64, shape (n_frames,)

    Raises
    ------
    ValueError
        Non-positive ``sfreq``/``window``/``shift``, a window under one sample, or a signal
        shorter than one frame.
    """
    sfreq, window, shift = (_positive("sfreq", sfreq), _positive("window", window),
                            _positive("shift", shift))
    if math.floor(window * sfreq) < 1:
        raise ValueError(f"window must cover at least one sample, got window={window} s "
                         f"at sfreq={sfreq} Hz")
    n_frames = int(np.floor((n_samples - window * sfreq) / (shift * sfreq)))
    if n_frames < 1:
        raise ValueError(f"signal of {n_samples} samples is too short for one frame of "
                         f"window={window} s plus shift={shift} s at {sfreq} Hz")
    starts = np.floor((np.arange(n_frames) * shift) * sfreq)
    stops = np.floor(starts + window * sfreq)
    return starts.astype(np.int64), stops.astype(np.int64)


def frames(env, sfreq: float, window: float = 0.05, shift: float = 0.01) -> torch.Tensor:
    """Mean of ``env`` within each frame.

    Parameters
    ----------
    env : torch.Tensor | numpy.ndarray, shape (..., channels, samples)
        float32 or float64.
    sfreq : float
        Sampling rate (Hz).
    window, shift : float
        Frame length and frame shift (s).

    Returns
    -------
    torch.Tensor, shape (..., channels, n_frames)
        Same dtype and device as ``env``; frame bounds from :func:`frame_bounds`.
    """
    env = as_float_tensor(env, "env")
    if env.ndim < 2:
        raise ValueError(f"env must have shape (..., channels, samples), got shape {tuple(env.shape)}")
    starts, stops = frame_bounds(env.shape[-1], sfreq, window, shift)
    # Differences of a float64 cumulative sum: every frame mean in one pass.
    csum = torch.nn.functional.pad(torch.cumsum(env, dim=-1, dtype=torch.float64), (1, 0))
    lo = torch.from_numpy(starts).to(env.device)
    hi = torch.from_numpy(stops).to(env.device)
    means = (csum[..., hi] - csum[..., lo]) / (hi - lo).to(torch.float64)
    return means.to(env.dtype)


def stack_context(feat, order: int = 4, step: int = 5) -> torch.Tensor:
    """Stack each frame with its neighbours at offsets ``-order*step, .., 0, .., +order*step``.

    Like the field's ``stackFeatures``: the first and last ``order*step`` frames, which lack
    a full context, are dropped.

    Parameters
    ----------
    feat : torch.Tensor | numpy.ndarray, shape (..., features, frames)
    order, step : int
        ``2*order + 1`` context frames, ``step`` frames apart (4 and 5: i-20, i-15, .., i+20).

    Returns
    -------
    torch.Tensor, shape (..., (2*order+1) * features, frames - 2*order*step)
        Row ``k*features + f`` holds feature ``f`` at offset ``(k - order)*step``, i.e. the
        stacked dimension is offset-major, like ``stackFeatures``' row-major flatten of
        (offset, channel): ``out[..., :, j]`` is context of frame ``j + order*step``.
    """
    feat = as_float_tensor(feat, "feat")
    if feat.ndim < 2:
        raise ValueError(f"feat must have shape (..., features, frames), got shape {tuple(feat.shape)}")
    for name, value, low in (("order", order, 0), ("step", step, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    span = 2 * order * step
    n_out = feat.shape[-1] - span
    if n_out < 1:
        raise ValueError(f"feat has {feat.shape[-1]} frames; stacking order={order}, step={step} "
                         f"needs more than {span}")
    parts = [feat[..., k * step:k * step + n_out] for k in range(2 * order + 1)]
    stacked = torch.stack(parts, dim=-3)                   # (..., offsets, features, frames)
    return stacked.reshape(*feat.shape[:-2], -1, n_out)


def _onset_samples(onsets) -> np.ndarray:
    arr = onsets.detach().cpu().numpy() if isinstance(onsets, torch.Tensor) else np.asarray(onsets)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"onsets must be a non-empty 1-D sequence of sample indices, "
                         f"got shape {arr.shape}")
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"onsets must be integer sample indices, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def epochs(x, onsets, sfreq: float, length: float = 1.0, offset: float = 0.0) -> torch.Tensor:
    """Cut one window per word from each onset.

    Parameters
    ----------
    x : torch.Tensor | numpy.ndarray, shape (channels, samples)
        float32 or float64 (typically the high-gamma envelope).
    onsets : sequence of int, shape (trials,)
        Onset sample indices (events.tsv ``sample``).
    sfreq : float
        Sampling rate (Hz).
    length : float
        Window length (s); ``round(length * sfreq)`` samples (the study: 1 s or 2 s).
    offset : float
        Window start relative to the onset (s), e.g. -0.5 to include a baseline.

    Returns
    -------
    torch.Tensor, shape (trials, channels, round(length * sfreq))
        ``out[i, :, j] = x[:, onsets[i] + round(offset * sfreq) + j]``; same dtype and device.

    Raises
    ------
    ValueError
        Bad shape/dtype/arguments, or a window that starts before 0 or runs past the end
        (the message names the trial).
    """
    x = as_float_tensor(x, "x")
    if x.ndim != 2:
        raise ValueError(f"x must have shape (channels, samples), got shape {tuple(x.shape)}")
    sfreq, length = _positive("sfreq", sfreq), _positive("length", length)
    if isinstance(offset, bool) or not isinstance(offset, (int, float, np.integer, np.floating)) \
            or not math.isfinite(offset):
        raise ValueError(f"offset must be a finite number of seconds, got {offset!r}")
    n_per = int(round(length * sfreq))
    if n_per < 1:
        raise ValueError(f"length={length} s is under one sample at sfreq={sfreq} Hz")
    onset_samples = _onset_samples(onsets)
    starts = onset_samples + int(round(offset * sfreq))
    n = x.shape[-1]
    for i, (onset, s) in enumerate(zip(onset_samples, starts)):
        if s < 0 or s + n_per > n:
            where = "starts before the signal" if s < 0 else f"runs past the end ({n} samples)"
            raise ValueError(f"onsets: the window of trial {i} (onset sample {onset}) needs "
                             f"samples [{s}, {s + n_per}) and {where}")
    index = torch.from_numpy(starts[:, None] + np.arange(n_per)).to(x.device)
    return x[:, index].permute(1, 0, 2).contiguous()      # (trials, channels, samples)


def trial_mean(ep) -> torch.Tensor:
    """Average each epoch over time: (trials, channels, samples) -> (trials, channels).

    The study's target: one number per electrode per trial. Accumulates in float64.
    """
    ep = as_float_tensor(ep, "ep")
    if ep.ndim != 3:
        raise ValueError(f"ep must have shape (trials, channels, samples), got shape {tuple(ep.shape)}")
    return ep.mean(dim=-1, dtype=torch.float64).to(ep.dtype)


def epoch_frames(env, onsets, sfreq: float, length: float = 1.0, window: float = 0.05,
                 shift: float = 0.01, offset: float = 0.0) -> torch.Tensor:
    """The time-resolved target: :func:`frames` inside each epoch.

    Frames are counted from each epoch's first sample (frame 0 starts at the onset plus
    ``offset``) with the same rule as :func:`frames`.

    Returns
    -------
    torch.Tensor, shape (trials, channels, n_frames)
        ``n_frames = floor((L - window*sfreq) / (shift*sfreq))`` for ``L = round(length*sfreq)``
        (95 for 1 s at 1024 Hz).
    """
    return frames(epochs(env, onsets, sfreq, length=length, offset=offset), sfreq,
                  window=window, shift=shift)
