"""High-gamma envelope: detrend, zero-phase band-pass and band-stops, |analytic signal|.

How it matches scipy at every sample with FFTs (n samples, N = next_fast_len(n)):

1. Filters: one rfft of the detrended signal zero-padded to N, times ``prod |H_i|^2``
   (float64 ``sosfreqz``, cast), one irfft. That is sosfiltfilt everywhere except within
   ``reach`` samples (about 3-5 s for the 4 Hz band-stops) of either end, where
   sosfiltfilt's odd padding and steady-state start make their own transients.
2. Ends: those ``reach`` samples are replaced by sosfiltfilt emulated with FFTs on head
   and tail segments of ``2 * reach`` samples (``filters.cascade_fft``).
3. Hilbert exactly as ``scipy.signal.hilbert(y, N)[:n]``: the analytic signal's real part
   is y itself and its imaginary part is one irfft of ``-1j*sign(f)`` times rfft(y).
"""

from __future__ import annotations

import numpy as np
import torch

from ..device import resolve_device
from .filters import (FilterBank, cascade_fft, design_filters, fft_length, hilbert_quadrature_mask,
                      zero_phase_gain)

# Working memory for one chunk of channels when `chunk_channels` is None. On a GPU a share
# of its TOTAL memory (not the free memory, which varies): the same input on the same
# device is always cut into the same chunks, hence gives bit-identical results.
CPU_BUDGET_BYTES = 1 << 30
CUDA_BUDGET_FRACTION = 0.125
# Arrays of about the FFT length alive at once per channel (signal, spectra, outputs).
_ARRAYS_PER_CHANNEL = 8


def as_float_tensor(x, name: str) -> torch.Tensor:
    """``x`` (tensor or numpy array, not copied when possible) as a float32/float64 tensor."""
    if isinstance(x, np.ndarray):
        if x.dtype not in (np.float32, np.float64):
            raise ValueError(f"{name} must have a float32 or float64 dtype, got {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{name} must have a float32 or float64 dtype, got {x.dtype}")
    return x


def target_device(device, x: torch.Tensor) -> torch.device:
    """``device`` resolved (``None``: where ``x`` is); a CUDA device without CUDA is an error."""
    if device is None:
        return x.device
    if not isinstance(device, (str, torch.device)):
        raise ValueError(f"device must be None, a str or a torch.device, got {device!r}")
    return resolve_device(str(device))


def detrend(x: torch.Tensor) -> torch.Tensor:
    """Remove the least-squares line along the last axis (``scipy.signal.detrend`` 'linear').

    Two matrix products (coefficients, then the subtraction); keeps ``x``'s dtype and device.
    """
    n = x.shape[-1]
    t = torch.arange(n, device=x.device, dtype=torch.float64) - (n - 1) / 2.0
    basis = torch.stack([torch.ones_like(t), t])                      # (2, n): constant, line
    # Least-squares coefficients: the basis is orthogonal once t is centred.
    project = (basis / basis.square().sum(-1, keepdim=True)).to(x.dtype)
    rows = x.reshape(-1, n)
    coef = rows @ project.T                                            # (rows, 2)
    return torch.addmm(rows, coef, basis.to(x.dtype), alpha=-1.0).reshape(x.shape)


def high_gamma(x, sfreq: float, *, l_freq: float = 70.0, h_freq: float = 170.0,
               stops=((98.0, 102.0), (148.0, 152.0)), order: int = 4, detrend: bool = True,
               chunk_channels: int | None = None, device=None, progress=None) -> torch.Tensor:
    """High-gamma envelope of each channel, as the field computes it, with FFTs in torch.

    Steps (REFERENCE.md section 2): linear detrend; band-pass ``l_freq``-``h_freq`` Hz and
    each band-stop, Butterworth ``iirfilter(order, ...)`` applied zero-phase (sosfiltfilt);
    ``|scipy.signal.hilbert(y, N=next_fast_len(n))[:n]|``. The ends are reproduced too,
    sosfiltfilt's padding transients and the Hilbert of the truncated signal included:
    the difference to scipy is float round-off at every sample (~1e-11 x the envelope's RMS
    in float64, ~1e-5 in float32; see the module docstring for how).

    Parameters
    ----------
    x : torch.Tensor | numpy.ndarray, shape (..., channels, samples)
        float32 or float64. Any leading dimensions are treated as more channels.
    sfreq : float
        Sampling rate (Hz).
    l_freq, h_freq : float
        Band-pass edges (Hz), ``0 < l_freq < h_freq < sfreq / 2``.
    stops : sequence of (low, high)
        Band-stops (Hz) inside the pass-band, not overlapping; ``()`` for none.
    order : int
        ``iirfilter`` order of every filter.
    detrend : bool
        Remove the least-squares line first (the field does).
    chunk_channels : int, optional
        Channels per FFT batch; bounds memory. Default: as many as fit in 1 GiB on the CPU,
        or in 1/8 of the GPU's memory. Results do not depend on it beyond round-off (FFT
        and BLAS libraries choose batch-size dependent code paths); the same input, device
        and ``chunk_channels`` always give bit-identical results.
    device : str | torch.device, optional
        Where to compute and return the result; default: ``x``'s device (CPU for numpy).
    progress : callable, optional
        ``progress(done, total)`` in channels, called after each chunk.

    Returns
    -------
    torch.Tensor, shape of ``x``
        The envelope, same dtype as ``x``, on ``device``.

    Raises
    ------
    ValueError
        Bad shape or dtype, band edges, band-stops, ``chunk_channels``, or a
        signal of ``padlen`` samples or fewer (28 samples minimum for order 4, as
        ``scipy.signal.sosfiltfilt`` requires).
    """
    bank = design_filters(sfreq, l_freq=l_freq, h_freq=h_freq, stops=stops, order=order)
    x = as_float_tensor(x, "x")
    if x.ndim < 2:
        raise ValueError(f"x must have shape (..., channels, samples), got shape {tuple(x.shape)}")
    n = x.shape[-1]
    if n < bank.min_samples:
        raise ValueError(f"x has {n} samples; at least {bank.min_samples} are needed "
                         f"(more than sosfiltfilt's padlen {max(bank.padlens)})")
    if not isinstance(detrend, bool):
        raise ValueError(f"detrend must be True or False, got {detrend!r}")
    target = target_device(device, x)
    rows = x.reshape(-1, n)
    chunk = _chunk_size(chunk_channels, rows.shape[0], n, x.dtype, target)
    out = torch.empty(rows.shape, dtype=x.dtype, device=target)
    gains: dict = {}
    for start in range(0, rows.shape[0], chunk):
        block = rows[start:start + chunk].to(target)
        if detrend:
            block = _detrend(block)
        _envelope(block, bank, gains, out[start:start + chunk])
        if progress is not None:
            progress(min(start + chunk, rows.shape[0]), rows.shape[0])
    return out.reshape(x.shape)


_detrend = detrend  # high_gamma's `detrend` argument shadows the function inside it


def _spectral_gain(bank: FilterBank, n_fft: int, like: torch.Tensor, gains: dict):
    """Filter gain and Hilbert quadrature mask as tensors (converted once per call)."""
    if n_fft not in gains:
        gain = zero_phase_gain(bank, n_fft)
        quad = hilbert_quadrature_mask(n_fft)
        real = like.dtype
        cplx = torch.complex128 if real == torch.float64 else torch.complex64
        gains[n_fft] = (torch.tensor(gain, dtype=real, device=like.device),
                        torch.tensor(quad, dtype=cplx, device=like.device))
    return gains[n_fft]


def _envelope(x: torch.Tensor, bank: FilterBank, gains: dict, out: torch.Tensor) -> None:
    """Write the envelope of rows ``x`` into ``out``: filter pass with scipy's ends, then
    scipy's Hilbert (FFT length next_fast_len(n))."""
    n = x.shape[-1]
    n_fft = fft_length(n)
    reach = bank.reach(x.dtype)
    gain, quad = _spectral_gain(bank, n_fft, x, gains)
    if n <= 4 * reach:
        # Short signal: emulate sosfiltfilt on all of it.
        y = x.new_zeros(*x.shape[:-1], n_fft)
        y[..., :n] = cascade_fft(x, bank)
    else:
        y = torch.fft.irfft(torch.fft.rfft(x, n=n_fft).mul_(gain), n=n_fft)
        # Beyond `reach` samples from an end, the circular filter equals sosfiltfilt; within
        # it, take sosfiltfilt's ends computed on head and tail segments of 2 * reach.
        seg = 2 * reach
        y[..., :reach] = cascade_fft(x[..., :seg], bank, head_only=True)[..., :reach]
        y[..., n - reach:n] = cascade_fft(x[..., n - seg:], bank)[..., seg - reach:]
        y[..., n:] = 0.0
    quadrature = torch.fft.irfft(torch.fft.rfft(y).mul_(quad), n=n_fft)
    torch.hypot(y[..., :n], quadrature[..., :n], out=out)


def _chunk_size(chunk_channels, rows: int, n: int, dtype, device) -> int:
    if chunk_channels is not None:
        if isinstance(chunk_channels, bool) or not isinstance(chunk_channels, (int, np.integer)) \
                or chunk_channels < 1:
            raise ValueError(f"chunk_channels must be a positive integer or None, got {chunk_channels!r}")
        return int(chunk_channels)
    if device.type == "cuda":
        budget = int(torch.cuda.get_device_properties(device).total_memory * CUDA_BUDGET_FRACTION)
    else:
        budget = CPU_BUDGET_BYTES
    itemsize = 8 if dtype == torch.float64 else 4
    per_row = _ARRAYS_PER_CHANNEL * itemsize * fft_length(n)
    return max(1, min(rows, budget // per_row))
