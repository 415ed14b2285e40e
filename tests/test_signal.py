"""gpurecon.signal against scipy, MNE and direct numpy loops of the field's reference script."""

import math

import mne
import numpy as np
import pytest
import scipy.fftpack
import scipy.signal
import torch

from gpurecon.signal import (design_filters, detrend, epoch_frames, epochs, fft_length,
                             frame_bounds, frames, high_gamma, sosfiltfilt_fft, stack_context,
                             trial_mean, zero_phase_gain)

SFREQ = 1024.0
BANDS = [([70.0, 170.0], "bandpass"), ([98.0, 102.0], "bandstop"), ([148.0, 152.0], "bandstop")]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def realistic_seeg(n_channels, n_samples, sfreq=SFREQ, seed=0):
    """1/f noise, drift and offsets, 50 Hz line noise with harmonics, bursts of high gamma."""
    rng = np.random.default_rng(seed)
    freqs = np.fft.rfftfreq(n_samples, 1 / sfreq)
    spectrum = (rng.standard_normal((n_channels, freqs.size))
                + 1j * rng.standard_normal((n_channels, freqs.size))) / np.maximum(freqs, 0.5)
    x = np.fft.irfft(spectrum, n_samples) * np.sqrt(n_samples) * 20
    t = np.arange(n_samples) / sfreq
    phase = rng.uniform(0, 2 * np.pi, (n_channels, 1))
    x += 30 * np.sin(2 * np.pi * 50 * t + phase) + 5 * np.sin(2 * np.pi * 100 * t + phase)
    x += 3 * np.sin(2 * np.pi * 150 * t + 2 * phase)
    band = scipy.signal.butter(4, [70, 170], "bandpass", fs=sfreq, output="sos")
    bursts = 1 + 3 * np.maximum(0, np.sin(2 * np.pi * t / 3.0 + phase))
    x += 3 * bursts * scipy.signal.sosfilt(band, rng.standard_normal((n_channels, n_samples)))
    x += 0.5 * t * rng.standard_normal((n_channels, 1)) + 50 * rng.standard_normal((n_channels, 1))
    return x


def scipy_high_gamma(x, sfreq=SFREQ, l_freq=70.0, h_freq=170.0,
                     stops=((98.0, 102.0), (148.0, 152.0)), order=4):
    """The field's extractHG filtering (reference script), float64, along the last axis."""
    x = scipy.signal.detrend(x, axis=-1)
    bands = [([l_freq, h_freq], "bandpass")] + [(list(s), "bandstop") for s in stops]
    for edges, btype in bands:
        sos = scipy.signal.iirfilter(order, [f / (sfreq / 2) for f in edges], btype=btype,
                                     output="sos")
        x = scipy.signal.sosfiltfilt(sos, x, axis=-1)
    n = x.shape[-1]
    return np.abs(scipy.signal.hilbert(x, scipy.fftpack.next_fast_len(n), axis=-1)[..., :n])


@pytest.fixture(scope="module")
def recording():
    x = realistic_seeg(3, 24 * 1024, seed=1)  # 24 s: the FFT path with patched ends
    return x, scipy_high_gamma(x)


# ---------------------------------------------------------------- high gamma vs scipy
@pytest.mark.parametrize("dtype, everywhere", [(torch.float64, 1e-8), (torch.float32, 1e-4)])
def test_high_gamma_matches_scipy(recording, dtype, everywhere):
    x, ref = recording
    out = high_gamma(torch.from_numpy(x).to(dtype), SFREQ)
    assert out.dtype == dtype and out.shape == x.shape
    err = np.abs(out.double().numpy() - ref) / np.sqrt(np.mean(ref ** 2))
    s = int(SFREQ)
    assert err[:, 5 * s:-5 * s].max() <= 1e-3          # the spec's interior bound
    # The ends too: sosfiltfilt's padding transients and the truncated Hilbert are reproduced.
    assert max(err[:, :s].max(), err[:, -s:].max()) <= everywhere
    assert err.max() <= everywhere


@pytest.mark.parametrize("n_samples", [28, 1000, 12 * 1024 + 7])
def test_high_gamma_short_signals_match_scipy(n_samples):
    # Below 4 * reach samples the whole signal goes through the sosfiltfilt emulation.
    x = realistic_seeg(2, n_samples, seed=n_samples)
    ref = scipy_high_gamma(x)
    out = high_gamma(x, SFREQ).numpy()
    assert np.abs(out - ref).max() <= 1e-8 * np.sqrt(np.mean(ref ** 2))


def test_high_gamma_other_rate_and_bands():
    sfreq, stops = 2000.0, ((99.0, 101.0),)
    x = realistic_seeg(2, 45 * 2000 + 3, sfreq=sfreq, seed=5)
    ref = scipy_high_gamma(x, sfreq, 60.0, 200.0, stops, order=3)
    out = high_gamma(x, sfreq, l_freq=60.0, h_freq=200.0, stops=stops, order=3).numpy()
    assert np.abs(out - ref).max() <= 1e-8 * np.sqrt(np.mean(ref ** 2))


def test_high_gamma_without_detrend_or_stops():
    x = realistic_seeg(2, 30 * 1024, seed=3)
    y = x.copy()
    sos = scipy.signal.iirfilter(4, [70, 170], btype="bandpass", output="sos", fs=SFREQ)
    y = scipy.signal.sosfiltfilt(sos, y, axis=-1)
    ref = np.abs(scipy.signal.hilbert(y, fft_length(y.shape[-1]), axis=-1)[..., :y.shape[-1]])
    out = high_gamma(x, SFREQ, stops=(), detrend=False).numpy()
    assert np.abs(out - ref).max() <= 1e-8 * np.sqrt(np.mean(ref ** 2))


def test_detrend_matches_scipy():
    x = realistic_seeg(3, 5001, seed=2)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        out = detrend(torch.from_numpy(x).to(dtype)).double().numpy()
        ref = scipy.signal.detrend(x, axis=-1)
        assert np.abs(out - ref).max() <= tol * np.abs(x).max()


@pytest.mark.parametrize("index", range(3))
def test_sosfiltfilt_fft_matches_scipy_at_every_sample(index):
    bank = design_filters(SFREQ)
    u = realistic_seeg(2, 3000, seed=index)
    ref = scipy.signal.sosfiltfilt(bank.sos[index], u, axis=-1)
    out = sosfiltfilt_fft(torch.from_numpy(u), bank.sos[index], bank.padlens[index],
                          bank.decays()[index]).numpy()
    assert np.abs(out - ref).max() <= 1e-9 * np.abs(ref).max()


def test_fft_length_is_the_fields_next_fast_len():
    for n in (28, 1000, 20481, 307200, 307457):
        assert fft_length(n) == scipy.fftpack.next_fast_len(n)


# ---------------------------------------------------------------- filter design and gains
def test_design_is_the_fields_iirfilter():
    bank = design_filters(SFREQ)
    assert len(bank.sos) == 3
    for sos, (edges, btype) in zip(bank.sos, BANDS):
        ref = scipy.signal.iirfilter(4, [f / (SFREQ / 2) for f in edges], btype=btype, output="sos")
        np.testing.assert_allclose(sos, ref, rtol=1e-12, atol=1e-15)
    assert bank.padlens == (27, 27, 27)          # scipy's 3 * (2 * n_sections + 1)


def test_gain_is_product_of_squared_sosfreqz():
    bank = design_filters(SFREQ)
    n_fft = 4096
    freqs = np.arange(n_fft // 2 + 1) * SFREQ / n_fft
    ref = np.ones(freqs.size)
    for edges, btype in BANDS:
        sos = scipy.signal.butter(4, edges, btype=btype, fs=SFREQ, output="sos")
        ref *= np.abs(scipy.signal.sosfreqz(sos, worN=freqs, fs=SFREQ)[1]) ** 2
    np.testing.assert_allclose(zero_phase_gain(bank, n_fft), ref, rtol=1e-9, atol=1e-14)


def test_gain_is_a_zero_phase_forward_backward_filter():
    # Circularly, sosfilt forward then backward is exactly the real gain |H|^2 per bin.
    bank = design_filters(SFREQ)
    n = 8192
    x = realistic_seeg(1, n, seed=9)[0]
    y = x
    for sos in bank.sos:
        # Periodic steady state: filter three periods, keep the last (impulse responses die).
        y = scipy.signal.sosfilt(sos, np.tile(y, 3))[-n:]
        y = scipy.signal.sosfilt(sos, np.tile(y[::-1], 3))[-n:][::-1]
    via_gain = np.fft.irfft(np.fft.rfft(x) * zero_phase_gain(bank, n), n)
    assert np.abs(via_gain - y).max() <= 1e-9 * np.abs(y).max()


def test_mne_designs_the_same_filters():
    # MNE's create_filter(method='iir', order=4, butter, sos) returns scipy's single-pass SOS;
    # with phase='zero' it runs it forward and backward, so its magnitude is |H|^2 (the
    # order "doubles"), the same gain as ours. Only its padding (padlen) differs.
    bank = design_filters(SFREQ)
    params = dict(order=4, ftype="butter", output="sos")
    data = np.zeros(4096)
    gain = np.ones(2049)
    for l_freq, h_freq in ((70.0, 170.0), (102.0, 98.0), (152.0, 148.0)):  # l > h: band-stop
        mne_params = mne.filter.create_filter(data, SFREQ, l_freq, h_freq, method="iir",
                                              iir_params=params, phase="zero", verbose=False)
        w = 2 * np.pi * np.arange(2049) / 4096
        gain *= np.abs(scipy.signal.sosfreqz(mne_params["sos"], worN=w)[1]) ** 2
    np.testing.assert_allclose(zero_phase_gain(bank, 4096), gain, rtol=1e-9, atol=1e-14)


# ---------------------------------------------------------------- frames, context, epochs
def reference_frames(data, sr, window_length=0.05, frameshift=0.01):
    """extractHG's framing loop from the field's extract_features.py (samples x channels)."""
    num_windows = int(np.floor((data.shape[0] - window_length * sr) / (frameshift * sr)))
    feat = np.zeros((num_windows, data.shape[1]))
    for win in range(num_windows):
        start = int(np.floor((win * frameshift) * sr))
        stop = int(np.floor(start + window_length * sr))
        feat[win, :] = np.mean(data[start:stop, :], axis=0)
    return feat


def reference_stack(features, model_order=4, step_size=5):
    """stackFeatures from the field's extract_features.py (windows x features)."""
    stacked = np.zeros((features.shape[0] - (2 * model_order * step_size),
                        (2 * model_order + 1) * features.shape[1]))
    for f_num, i in enumerate(range(model_order * step_size,
                                    features.shape[0] - model_order * step_size)):
        ef = features[i - model_order * step_size:i + model_order * step_size + 1:step_size, :]
        stacked[f_num, :] = ef.flatten()
    return stacked


@pytest.mark.parametrize("sfreq, window, shift", [(1024.0, 0.05, 0.01), (1000.0, 0.05, 0.01),
                                                  (2048.0, 0.03, 0.007)])
def test_frames_match_reference_loop(sfreq, window, shift):
    env = np.random.default_rng(0).random((4, 3 * int(sfreq) + 13))
    ref = reference_frames(env.T, sfreq, window, shift).T
    for dtype in (np.float64, np.float32):
        out = frames(env.astype(dtype), sfreq, window, shift)
        assert out.dtype == torch.from_numpy(env.astype(dtype)).dtype
        np.testing.assert_allclose(out.double().numpy(), ref, rtol=1e-6 if dtype == np.float32 else 1e-12)


def test_frame_bounds_follow_the_reference_script():
    starts, stops = frame_bounds(2048, 1024.0)
    assert starts[4] == 40 and stops[4] == 91            # floor(40.96)=40, 40 + floor(51.2)
    assert np.all(stops - starts == 51)
    assert len(starts) == int(np.floor((2048 - 51.2) / 10.24))


def test_frames_keep_leading_dims():
    env = torch.rand(2, 3, 5000, dtype=torch.float64)
    out = frames(env, SFREQ)
    np.testing.assert_allclose(out[1].numpy(), frames(env[1], SFREQ).numpy())
    assert out.shape[:2] == (2, 3)


def test_stack_context_matches_stack_features():
    feat = np.random.default_rng(1).random((5, 120))    # (features, frames)
    ref = reference_stack(feat.T).T
    out = stack_context(torch.from_numpy(feat), order=4, step=5)
    assert out.shape == (45, 80)
    np.testing.assert_array_equal(out.numpy(), ref)
    np.testing.assert_array_equal(stack_context(feat, order=2, step=3).numpy(),
                                  reference_stack(feat.T, 2, 3).T)


def test_epochs_trial_mean_and_epoch_frames_match_numpy_loops():
    rng = np.random.default_rng(2)
    env = rng.random((6, 20000))
    onsets = np.array([0, 1500, 4096, 17000, 18976])
    ep = epochs(env, onsets, SFREQ, length=1.0)
    assert ep.shape == (5, 6, 1024)
    for i, s in enumerate(onsets):
        np.testing.assert_array_equal(ep[i].numpy(), env[:, s:s + 1024])
    np.testing.assert_allclose(trial_mean(ep).numpy(),
                               np.stack([env[:, s:s + 1024].mean(-1) for s in onsets]), rtol=1e-12)
    two = epochs(env, onsets[:4], SFREQ, length=2.0, offset=-0.0)
    assert two.shape == (4, 6, 2048)
    shifted = epochs(env, onsets[1:], SFREQ, length=0.5, offset=-0.25)
    np.testing.assert_array_equal(shifted[0].numpy(), env[:, 1500 - 256:1500 + 256])
    ef = epoch_frames(env, onsets, SFREQ, length=1.0)
    assert ef.shape == (5, 6, 95)
    for i, s in enumerate(onsets):
        np.testing.assert_allclose(ef[i].numpy(), reference_frames(env[:, s:s + 1024].T, SFREQ).T,
                                   rtol=1e-12)


# ---------------------------------------------------------------- dtype, device, chunks
def test_dtype_device_chunking_and_determinism():
    x = realistic_seeg(5, 25 * 1024, seed=4)
    for dtype, roundoff in ((np.float32, 2e-5), (np.float64, 1e-12)):
        xd = x.astype(dtype)
        whole = high_gamma(xd, SFREQ)
        assert isinstance(whole, torch.Tensor) and whole.dtype == torch.from_numpy(xd).dtype
        assert whole.device.type == "cpu"
        # Same input, device and chunking: bit-identical.
        assert torch.equal(whole, high_gamma(torch.from_numpy(xd), SFREQ, device="cpu"))
        assert torch.equal(high_gamma(xd, SFREQ, chunk_channels=2),
                           high_gamma(xd, SFREQ, chunk_channels=2))
        # Other chunkings: the same up to round-off (batch-size dependent FFT/BLAS paths).
        rms = whole.double().square().mean().sqrt()
        for chunk in (1, 2, 3):
            diff = (high_gamma(xd, SFREQ, chunk_channels=chunk) - whole).abs().max()
            assert diff <= roundoff * rms
        batched = high_gamma(torch.from_numpy(xd).reshape(5, 1, -1), SFREQ)
        assert batched.shape == (5, 1, x.shape[-1])
        assert torch.equal(batched.reshape(5, -1), whole)


@CUDA
def test_cuda_matches_cpu(recording):
    x, ref = recording
    for dtype, tol in ((torch.float64, 1e-8), (torch.float32, 1e-4)):
        cpu = torch.from_numpy(x).to(dtype)
        gpu = high_gamma(cpu, SFREQ, device="cuda")
        assert gpu.device.type == "cuda" and gpu.dtype == dtype
        assert torch.equal(gpu, high_gamma(cpu.cuda(), SFREQ))
        err = np.abs(gpu.cpu().double().numpy() - ref).max() / np.sqrt(np.mean(ref ** 2))
        assert err <= tol
        env = gpu
        assert frames(env, SFREQ).device.type == "cuda"
        np.testing.assert_allclose(frames(env, SFREQ).cpu().numpy(),
                                   frames(env.cpu(), SFREQ).numpy(), rtol=1e-5)


# ---------------------------------------------------------------- bad arguments
GOOD = dict(l_freq=70.0, h_freq=170.0, stops=((98.0, 102.0), (148.0, 152.0)), order=4)


@pytest.mark.parametrize("change, word", [
    (dict(l_freq=0.0), "l_freq"), (dict(l_freq=-5.0), "l_freq"), (dict(h_freq=512.0), "h_freq"),
    (dict(h_freq=600.0), "h_freq"), (dict(l_freq=170.0, h_freq=70.0), "l_freq must be below"),
    (dict(l_freq=100.0, h_freq=100.0), "l_freq must be below"),
    (dict(stops=((102.0, 98.0),)), "stops"), (dict(stops=((98.0, 102.0), (101.0, 104.0))), "overlap"),
    (dict(stops=((20.0, 30.0),)), "outside the pass-band"), (dict(stops=((400.0, 600.0),)), "stops"),
    (dict(stops=(5.0,)), "stops"), (dict(order=0), "order"), (dict(order=2.5), "order"),
])
def test_bad_filter_arguments(change, word):
    with pytest.raises(ValueError, match=word):
        high_gamma(np.zeros((2, 2048)), SFREQ, **{**GOOD, **change})


@pytest.mark.parametrize("x, sfreq, kwargs, word", [
    (np.zeros(2048), SFREQ, {}, "x must have shape"),
    (np.zeros((2, 27)), SFREQ, {}, "at least 28"),
    (np.zeros((2, 2048), dtype=np.int64), SFREQ, {}, "float32 or float64"),
    (torch.zeros((2, 2048), dtype=torch.float16), SFREQ, {}, "float32 or float64"),
    ([[0.0] * 2048], SFREQ, {}, "torch.Tensor or numpy"),
    (np.zeros((2, 2048)), 0.0, {}, "sfreq"), (np.zeros((2, 2048)), -1024.0, {}, "sfreq"),
    (np.zeros((2, 2048)), SFREQ, dict(chunk_channels=0), "chunk_channels"),
    (np.zeros((2, 2048)), SFREQ, dict(detrend="yes"), "detrend"),
    (np.zeros((2, 2048)), SFREQ, dict(device="tpu"), "device"),
])
def test_bad_high_gamma_arguments(x, sfreq, kwargs, word):
    with pytest.raises(ValueError, match=word):
        high_gamma(x, sfreq, **kwargs)


def test_bad_framing_arguments():
    env = np.zeros((2, 2048))
    for kwargs, word in ((dict(window=0.0), "window"), (dict(shift=-0.01), "shift"),
                         (dict(window=0.0005), "at least one sample"),
                         (dict(sfreq=0.0), "sfreq")):
        with pytest.raises(ValueError, match=word):
            frames(env, **{"sfreq": SFREQ, **kwargs})
    with pytest.raises(ValueError, match="too short"):
        frames(np.zeros((2, 50)), SFREQ)
    with pytest.raises(ValueError, match="env must have shape"):
        frames(np.zeros(2048), SFREQ)
    with pytest.raises(ValueError, match="order"):
        stack_context(np.zeros((2, 100)), order=-1)
    with pytest.raises(ValueError, match="step"):
        stack_context(np.zeros((2, 100)), step=0)
    with pytest.raises(ValueError, match="needs more than 40"):
        stack_context(np.zeros((2, 40)))


def test_bad_epoch_arguments():
    env = np.zeros((2, 3000))
    with pytest.raises(ValueError, match="trial 1 .*past the end"):
        epochs(env, [0, 2500], SFREQ, length=1.0)
    with pytest.raises(ValueError, match="trial 0 .*before the signal"):
        epochs(env, [100], SFREQ, length=1.0, offset=-0.5)
    for onsets, word in (([1.5], "integer"), ([[1, 2]], "1-D"), ([], "non-empty")):
        with pytest.raises(ValueError, match=word):
            epochs(env, onsets, SFREQ)
    for kwargs, word in ((dict(length=0.0), "length"), (dict(sfreq=-1.0), "sfreq"),
                         (dict(offset=math.nan), "offset")):
        with pytest.raises(ValueError, match=word):
            epochs(env, [0], **{"sfreq": SFREQ, **kwargs})
    with pytest.raises(ValueError, match="x must have shape"):
        epochs(np.zeros((1, 2, 3000)), [0], SFREQ)
    with pytest.raises(ValueError, match="ep must have shape"):
        trial_mean(np.zeros((2, 3)))
