"""The high-gamma filters: designed through MNE (Butterworth SOS), applied as FFT-bin gains.

A zero-phase IIR (``sosfiltfilt``) has magnitude ``|H(f)|^2`` and no phase, so in the
frequency domain the whole cascade band-pass x band-stops is ONE real gain per bin. The
ends need more care: ``sosfiltfilt`` pads each end with an odd extension of ``padlen``
samples and starts each pass from the filter's steady state (``sosfilt_zi``), which is a
transient the circular FFT does not have. :func:`sosfiltfilt_fft` reproduces those ends
exactly with FFTs, for the short head and tail segments (or a whole short signal).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.fft
import scipy.signal
import torch
from mne.filter import construct_iir_filter

# Relative size at which a filter's impulse response counts as decayed, per working dtype
# (below that dtype's round-off). It sets the reach of the end effects, hence the cost of
# the head/tail segments.
DECAY_TOL = {torch.float64: 1e-10, torch.float32: 1e-7}


@dataclass(frozen=True, eq=False)
class FilterBank:
    """The band-pass and band-stop filters of one high-gamma setting (SOS, float64)."""

    key: tuple                       # (sfreq, l_freq, h_freq, stops, order): identifies the design
    sections: tuple[np.ndarray, ...]  # read-only SOS: band-pass first, then each band-stop
    padlens: tuple[int, ...]         # sosfiltfilt's default padlen of each filter
    radii: tuple[float, ...]         # largest pole radius of each filter (its slowest decay)

    def __eq__(self, other):
        return isinstance(other, FilterBank) and self.key == other.key

    def __hash__(self):
        return hash(self.key)

    @property
    def sfreq(self) -> float:
        return self.key[0]

    @property
    def sos(self) -> list[np.ndarray]:
        """Writable copies of the SOS arrays, in the order they are applied."""
        return [s.copy() for s in self.sections]

    def decays(self, dtype: torch.dtype = torch.float64) -> tuple[int, ...]:
        """Samples after which each impulse response is below ``DECAY_TOL[dtype]``."""
        tol = DECAY_TOL[dtype]
        return tuple(int(math.ceil(math.log(tol) / math.log(r))) for r in self.radii)

    def reach(self, dtype: torch.dtype = torch.float64) -> int:
        """Samples from an end beyond which sosfiltfilt equals the circular FFT filter."""
        # End transients of the filters in cascade decay independently (each band-stop
        # passes the other's ringing), so the slowest filter sets the reach.
        return max(self.decays(dtype)) + max(self.padlens)

    @property
    def min_samples(self) -> int:
        """Shortest signal accepted: scipy's sosfiltfilt needs more samples than padlen."""
        return max(self.padlens) + 1


def validate_band(sfreq, l_freq, h_freq, stops, order) -> tuple[float, float, float,
                                                               tuple[tuple[float, float], ...], int]:
    """Check the filter arguments; return them normalised (floats, a tuple of stop pairs)."""
    if isinstance(sfreq, bool) or not isinstance(sfreq, (int, float, np.integer, np.floating)) \
            or not math.isfinite(sfreq) or sfreq <= 0:
        raise ValueError(f"sfreq must be a positive finite number (Hz), got {sfreq!r}")
    nyq = float(sfreq) / 2.0
    for name, f in (("l_freq", l_freq), ("h_freq", h_freq)):
        if isinstance(f, bool) or not isinstance(f, (int, float, np.integer, np.floating)) \
                or not 0.0 < f < nyq:
            raise ValueError(f"{name} must lie in (0, Nyquist={nyq:g}) Hz, got {f!r}")
    if l_freq >= h_freq:
        raise ValueError(f"l_freq must be below h_freq, got l_freq={l_freq!r} >= h_freq={h_freq!r}")
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or not 1 <= order <= 16:
        raise ValueError(f"order must be an integer in [1, 16], got {order!r}")
    pairs = []
    try:
        pairs = [(float(lo), float(hi)) for lo, hi in (stops or ())]
    except (TypeError, ValueError):
        raise ValueError(f"stops must be a sequence of (low, high) pairs in Hz, got {stops!r}") from None
    for lo, hi in pairs:
        if not 0.0 < lo < hi < nyq:
            raise ValueError(f"stops: each band-stop needs 0 < low < high < Nyquist={nyq:g} Hz, "
                             f"got ({lo:g}, {hi:g})")
        if hi <= l_freq or lo >= h_freq:
            raise ValueError(f"stops: band-stop ({lo:g}, {hi:g}) Hz lies outside the pass-band "
                             f"({float(l_freq):g}, {float(h_freq):g}) Hz, where it does nothing")
    ordered = sorted(pairs)
    for (lo1, hi1), (lo2, hi2) in zip(ordered, ordered[1:]):
        if lo2 < hi1:
            raise ValueError(f"stops: band-stops ({lo1:g}, {hi1:g}) and ({lo2:g}, {hi2:g}) Hz overlap")
    return float(sfreq), float(l_freq), float(h_freq), tuple(pairs), int(order)


def design_filters(sfreq: float, *, l_freq: float = 70.0, h_freq: float = 170.0,
                   stops=((98.0, 102.0), (148.0, 152.0)), order: int = 4) -> FilterBank:
    """Design the filters exactly as the field does: Butterworth SOS through MNE's
    ``mne.filter.construct_iir_filter`` (which calls ``scipy.signal.iirfilter``).

    Parameters
    ----------
    sfreq : float
        Sampling rate (Hz).
    l_freq, h_freq : float
        Band-pass edges (Hz), ``0 < l_freq < h_freq < sfreq / 2``.
    stops : sequence of (low, high)
        Band-stops (Hz), each of ``order`` (line-noise harmonics); may be empty.
    order : int
        ``iirfilter`` order of every filter (4 sections for order 4).

    Returns
    -------
    FilterBank
        The SOS arrays in the order they are applied, their padlens and pole radii.
    """
    return _design(*validate_band(sfreq, l_freq, h_freq, stops, order))


@lru_cache(maxsize=32)
def _design(sfreq, l_freq, h_freq, stops, order) -> FilterBank:
    bands = [([l_freq, h_freq], "bandpass")] + [([lo, hi], "bandstop") for lo, hi in stops]
    sos_list, padlens, radii = [], [], []
    for edges, btype in bands:
        # MNE designs the IIR (it calls scipy.signal.iirfilter: the same SOS to the bit).
        params = construct_iir_filter(dict(order=order, ftype="butter", output="sos"),
                                      np.asarray(edges, dtype=np.float64), None, sfreq, btype,
                                      return_copy=False, verbose=False)
        sos = np.asarray(params["sos"], dtype=np.float64)
        sos.setflags(write=False)
        # scipy.signal.sosfiltfilt's default padlen (odd extension length).
        ntaps = 2 * len(sos) + 1 - min(int((sos[:, 2] == 0).sum()), int((sos[:, 5] == 0).sum()))
        sos_list.append(sos)
        padlens.append(3 * ntaps)
        radii.append(float(np.abs(scipy.signal.sos2zpk(sos)[1]).max()))
    return FilterBank((sfreq, l_freq, h_freq, stops, order), tuple(sos_list), tuple(padlens),
                      tuple(radii))


def fft_length(n: int) -> int:
    """The FFT length the field's Hilbert uses: ``scipy.fftpack.next_fast_len`` (5-smooth)."""
    return int(scipy.fft.next_fast_len(int(n), real=True))


def response(sos: np.ndarray, n_fft: int) -> np.ndarray:
    """Complex frequency response of ``sos`` at the ``n_fft // 2 + 1`` rfft bins (float64)."""
    w = 2.0 * np.pi * np.arange(n_fft // 2 + 1) / n_fft
    return scipy.signal.sosfreqz(sos, worN=w)[1]


@lru_cache(maxsize=64)
def _cached_response(sos_bytes: bytes, shape: tuple, n_fft: int) -> np.ndarray:
    out = response(np.frombuffer(sos_bytes).reshape(shape), n_fft)
    out.setflags(write=False)
    return out


@lru_cache(maxsize=16)
def _zero_phase_gain(bank: FilterBank, n_fft: int) -> np.ndarray:
    gain = np.ones(n_fft // 2 + 1)
    for sos in bank.sections:
        gain *= np.abs(response(sos, n_fft)) ** 2
    gain.setflags(write=False)
    return gain


def zero_phase_gain(bank: FilterBank, n_fft: int) -> np.ndarray:
    """``prod_i |H_i|^2`` at the rfft bins of length ``n_fft``: the whole zero-phase cascade.

    Computed with ``scipy.signal.sosfreqz`` in float64 (cached; read-only).
    """
    return _zero_phase_gain(bank, int(n_fft))


def hilbert_quadrature_mask(n_fft: int) -> np.ndarray:
    """``-1j * sign(f)`` at the rfft bins: the spectrum of the analytic signal's imaginary part.

    scipy's Hilbert multiplies the full spectrum by ``[1, 2, .., 2, 1, 0, ..]``; the real part
    of that analytic signal is the input itself and the imaginary part has this spectrum
    (zero at DC and, for even lengths, at Nyquist), so one real inverse FFT gives it.
    """
    mask = np.full(n_fft // 2 + 1, -1j)
    mask[0] = 0.0
    if n_fft % 2 == 0:
        mask[-1] = 0.0
    return mask


def odd_extend(u: torch.Tensor, edge: int) -> torch.Tensor:
    """``scipy.signal._arraytools.odd_ext`` along the last axis."""
    n = u.shape[-1]
    left = 2 * u[..., :1] - u[..., 1:edge + 1].flip(-1)
    right = 2 * u[..., -1:] - u[..., n - edge - 1:n - 1].flip(-1)
    return torch.cat([left, u, right], dim=-1)


def sosfiltfilt_fft(u: torch.Tensor, sos: np.ndarray, padlen: int, decay: int,
                    head_only: bool = False) -> torch.Tensor:
    """``scipy.signal.sosfiltfilt(sos, u, axis=-1)`` (defaults) with FFTs, ends included.

    sosfiltfilt odd-extends ``padlen`` samples, runs the filter forward from the steady state
    of a constant input equal to the first extended sample, then backward from the steady
    state of the last forward output. Steady state from a constant = the constant extended
    forever, so each pass is a circular convolution over a buffer whose wrap-around region
    holds that constant for ``decay`` samples (long enough for the impulse response to die).

    Costs two FFT pairs over ``len(u) + 2 * padlen + decay`` samples: meant for short
    segments (the head and tail of a long signal), not whole recordings. With
    ``head_only=True`` it costs one pair (forward and backward fused into ``|H|^2``) and
    only the first ``len(u) - decay`` samples are exact: the backward pass's start at the
    far end is not reproduced.
    """
    m = u.shape[-1] + 2 * padlen
    n_fft = fft_length(m + decay)
    h = torch.tensor(_cached_response(sos.tobytes(), sos.shape, n_fft), dtype=_complex(u.dtype),
                     device=u.device)
    # Buffer: odd extension, then (wrapping round to before the start) the constant whose
    # steady state sosfilt_zi starts from.
    buf = u.new_empty(*u.shape[:-1], n_fft)
    buf[..., :m] = odd_extend(u, padlen)
    buf[..., m:] = buf[..., :1]
    spectrum = torch.fft.rfft(buf)
    if head_only:
        both = torch.fft.irfft(spectrum.mul_(h.real.square() + h.imag.square()), n=n_fft)
        return both[..., padlen:m - padlen]
    buf = torch.fft.irfft(spectrum.mul_(h), n=n_fft)            # forward pass
    buf[..., m:] = buf[..., m - 1:m]                              # backward starts from steady state
    back = torch.fft.irfft(torch.fft.rfft(buf).mul_(h.conj()), n=n_fft)
    return back[..., padlen:m - padlen]


def cascade_fft(u: torch.Tensor, bank: FilterBank, head_only: bool = False) -> torch.Tensor:
    """Every filter of ``bank`` in turn with :func:`sosfiltfilt_fft`, as the field chains them.

    ``head_only=True``: exact only up to ``bank.reach(u.dtype)`` samples before the end of ``u``.
    """
    for sos, padlen, decay in zip(bank.sections, bank.padlens, bank.decays(u.dtype)):
        u = sosfiltfilt_fft(u, sos, padlen, decay, head_only)
    return u


def _complex(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64
