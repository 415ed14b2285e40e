"""Audio windows from word onsets, at the recording's rate or resampled for a speech model.

Time alignment: a trial's onset is its sEEG sample (events.tsv ``sample``, the same index
the high-gamma epochs start at) divided by the sEEG rate. The audio sample of that instant
at rate ``fs`` is ``floor(sample * fs / sfreq + 0.5)`` (round half up; 48000 / 1024 is not an
integer, so the mapping needs a rounding rule).

Resampling: the WHOLE recording is resampled once with ``scipy.signal.resample_poly``
(48 kHz -> 16 kHz is ``resample_poly(x, 1, 3)``: a polyphase FIR anti-alias filter, Kaiser
window, zero phase), then windows are cut at the target rate. Cutting after resampling
keeps every window free of filter edge effects, which cutting first would put at both ends
of each 2 s window. (The study's exact decimation call is not known: `decimate` with its
default IIR filter adds phase distortion; resample_poly does not.)
"""

from __future__ import annotations

import logging
from fractions import Fraction

import numpy as np
from scipy.signal import resample_poly

from ..errors import DataError

log = logging.getLogger(__name__)


def onset_to_audio_index(sample, sfreq: float, audio_sfreq: float) -> np.ndarray:
    """Audio sample index (int64) at ``audio_sfreq`` of sEEG sample index ``sample`` at ``sfreq``."""
    sample = np.asarray(sample, dtype=np.float64)
    return np.floor(sample * (float(audio_sfreq) / float(sfreq)) + 0.5).astype(np.int64)


def resample_audio(audio: np.ndarray, from_sfreq: float, to_sfreq: float) -> np.ndarray:
    """``scipy.signal.resample_poly`` by the exact rational ratio ``to_sfreq / from_sfreq``."""
    ratio = Fraction(str(float(to_sfreq))) / Fraction(str(float(from_sfreq)))
    if ratio <= 0 or ratio.denominator > 10_000 or ratio.numerator > 10_000:
        raise ValueError(f"cannot resample audio from {from_sfreq} Hz to {to_sfreq} Hz: the rate "
                         "ratio must be a positive fraction with terms below 10000")
    audio = np.asarray(audio, dtype=np.float64)
    if ratio == 1:
        return audio.copy()
    return resample_poly(audio, ratio.numerator, ratio.denominator)


def audio_windows(recording, window: float, to_sfreq: float | None = None) -> np.ndarray:
    """``(n_trials, round(window * fs))`` float64 audio from each word onset.

    Parameters
    ----------
    recording : Recording
        Uses ``audio``, ``audio_sfreq``, ``sfreq``, ``trials.sample`` (and ``trials.word``,
        ``trials.onset`` in messages).
    window : float
        Seconds from each onset (> 0).
    to_sfreq : float, optional
        Resample the recording's audio to this rate first (None: keep ``audio_sfreq``).

    Raises
    ------
    DataError
        No audio, or a window running past the end of the audio (naming the trial).
    """
    if not np.isfinite(window) or window <= 0:
        raise ValueError(f"window must be a positive number of seconds, got {window!r}")
    audio = np.asarray(recording.audio)
    if audio.ndim != 1 or audio.size == 0:
        raise DataError(f"{recording.subject}: the recording has no 1-D audio "
                        f"(audio shape {audio.shape}); a speech model needs the Audio acquisition")
    fs = float(recording.audio_sfreq if to_sfreq is None else to_sfreq)
    if to_sfreq is not None:
        audio = resample_audio(audio, recording.audio_sfreq, fs)
    samples = np.asarray(recording.trials.sample)
    _check_onsets(recording)
    starts = onset_to_audio_index(samples, recording.sfreq, fs)
    length = int(round(window * fs))
    for i, start in enumerate(starts):
        if start < 0 or start + length > audio.size:
            raise DataError(
                f"{recording.subject}: trial {i} (word {recording.trials.word[i]!r}, onset "
                f"{samples[i] / recording.sfreq:.3f} s) needs audio up to "
                f"{(start + length) / fs:.3f} s but the audio lasts {audio.size / fs:.3f} s; "
                f"use a shorter window (window={window})")
    return np.stack([audio[s:s + length] for s in starts])


def _check_onsets(recording) -> None:
    # events.tsv holds both; they should agree to a sample. Warn, don't guess which is right.
    onset = np.asarray(recording.trials.onset, dtype=np.float64)
    from_sample = np.asarray(recording.trials.sample, dtype=np.float64) / recording.sfreq
    if onset.shape == from_sample.shape and onset.size:
        worst = float(np.max(np.abs(onset - from_sample)))
        if worst > 2.0 / recording.sfreq:
            log.warning("%s: events onset and sample/sfreq differ by up to %.4f s; audio windows "
                        "follow `sample` (the high-gamma epochs' reference)", recording.subject, worst)
