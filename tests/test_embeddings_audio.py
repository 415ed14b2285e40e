"""Audio windows: onset alignment at 48 and 16 kHz, resampling against scipy, bad windows."""

import numpy as np
import pytest
from scipy.signal import resample_poly

from _embeddings_helpers import make_recording
from gpurecon.embeddings.audio import audio_windows, onset_to_audio_index, resample_audio
from gpurecon.errors import DataError


@pytest.mark.parametrize("fs", [48000.0, 16000.0, 44100.0])
def test_onset_index_is_the_nearest_audio_sample(fs):
    samples = np.arange(0, 300 * 1024, 977)  # all residues of the 1024 -> fs ratio
    idx = onset_to_audio_index(samples, 1024.0, fs)
    err = idx / fs - samples / 1024.0
    assert np.all(np.abs(err) <= 0.5 / fs + 1e-12)
    assert idx.dtype == np.int64


def test_windows_start_at_the_onset_at_48_and_16_khz():
    # Onsets on multiples of 64 sEEG samples fall on whole 48 kHz and 16 kHz samples
    # (64/1024 s = 3000 resp. 1000 audio samples): a click there starts each window.
    samples = 64 * np.array([10, 57, 123])
    audio = np.zeros(48000 * 12)
    audio[samples * 3000 // 64] = 1.0
    rec = make_recording(["a", "b", "c"], onset_samples=samples, audio=audio)
    w48 = audio_windows(rec, 1.0)
    assert w48.shape == (3, 48000)
    assert np.all(w48[:, 0] == 1.0) and np.all(w48[:, 1:] == 0.0)
    w16 = audio_windows(rec, 1.0, to_sfreq=16000)
    assert w16.shape == (3, 16000)
    assert np.all(np.argmax(np.abs(w16), axis=1) == 0)  # the resampled click peaks at sample 0


def test_resampling_is_scipy_resample_poly():
    x = np.random.default_rng(0).standard_normal(48000 * 3)
    np.testing.assert_array_equal(resample_audio(x, 48000, 16000), resample_poly(x, 1, 3))
    np.testing.assert_array_equal(resample_audio(x, 44100, 16000), resample_poly(x, 160, 441))
    np.testing.assert_array_equal(resample_audio(x, 16000, 16000), x)


def test_16khz_windows_cut_the_whole_resampled_recording():
    rec = make_recording(["hond", "kat", "fiets"], seed=3)
    whole = resample_poly(rec.audio, 1, 3)
    starts = np.floor(rec.trials.sample * 16000 / rec.sfreq + 0.5).astype(int)
    ref = np.stack([whole[s:s + 32000] for s in starts])
    np.testing.assert_array_equal(audio_windows(rec, 2.0, to_sfreq=16000), ref)


def test_window_past_the_audio_end_names_the_trial():
    rec = make_recording(["hond", "kat", "fiets"], tail=1.0)
    with pytest.raises(DataError, match=r"trial 2 \(word 'fiets'"):
        audio_windows(rec, 2.0, to_sfreq=16000)
    audio_windows(rec, 0.9, to_sfreq=16000)  # a shorter window fits


def test_missing_audio_and_bad_window():
    rec = make_recording(["hond"], audio=np.zeros(0))
    with pytest.raises(DataError, match="no 1-D audio"):
        audio_windows(rec, 2.0)
    with pytest.raises(ValueError, match="window"):
        audio_windows(make_recording(["hond"]), 0.0)
