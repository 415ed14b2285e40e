"""The synthetic iBIDS dataset: layout, round trip through load_subject, determinism, ground
truth, and recovery of the planted high-gamma amplitudes (scipy reference and gpurecon.signal)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.fft
import scipy.signal as ss

from gpurecon.data import load_ground_truth, load_subject, write_synthetic_dataset
from gpurecon.data import synthetic as synthetic_module
from gpurecon.data.words import WORDS

SMALL = dict(n_channels=12, n_words=24, audio_sfreq=8000.0, sfreq=1024.0, seed=7)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("synth") / "ds", subjects=(1, 3), **SMALL)


def _ieeg(root: Path, sub: str) -> Path:
    return root / sub / "ieeg"


def _tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", keep_default_na=False, dtype=str)


# ----------------------------------------------------------------------------- layout

def test_layout_files_and_sidecars(dataset):
    assert _tsv(dataset / "participants.tsv")["participant_id"].tolist() == ["sub-01", "sub-03"]
    desc = json.loads((dataset / "dataset_description.json").read_text())
    assert desc["GeneratedBy"][0]["Name"] == "gpurecon.data.synthetic"
    for sub in ("sub-01", "sub-03"):
        folder = _ieeg(dataset, sub)
        stem = f"{sub}_task-wordProduction"
        for suffix in ("ieeg.nwb", "ieeg.json", "channels.tsv", "events.tsv",
                       "space-ACPC_electrodes.tsv", "space-ACPC_coordsystem.json"):
            assert (folder / f"{stem}_{suffix}").is_file(), suffix
        assert (dataset / "derivatives" / "synthetic" / sub / f"{sub}_groundtruth.npz").is_file()

        channels = _tsv(folder / f"{stem}_channels.tsv")
        assert list(channels.columns) == ["name", "type", "units", "low_cutoff", "high_cutoff",
                                          "description", "sampling_frequency", "status"]
        assert len(channels) == SMALL["n_channels"] and set(channels["type"]) == {"SEEG"}
        assert channels["description"].str.len().min() > 0

        events = pd.read_csv(folder / f"{stem}_events.tsv", sep="\t", keep_default_na=False)
        assert list(events.columns) == ["onset", "duration", "trial_type", "value", "sample"]
        words = events[events.trial_type == "word"]
        fixations = events[events.trial_type == "fixation"]
        assert len(words) == len(fixations) == SMALL["n_words"]
        assert set(fixations["value"]) == {"+"}
        np.testing.assert_allclose(events["sample"], events["onset"] * SMALL["sfreq"], atol=0.5)
        assert sorted(words["value"]) == sorted(WORDS[: SMALL["n_words"]])

        electrodes = _tsv(folder / f"{stem}_space-ACPC_electrodes.tsv")
        extra = set(electrodes["name"]) - set(channels["name"])
        assert len(extra) == 1 and set(channels["name"]) <= set(electrodes["name"])

        sidecar = json.loads((folder / f"{stem}_ieeg.json").read_text())
        assert sidecar["SamplingFrequency"] == SMALL["sfreq"] and sidecar["PowerLineFrequency"] == 50
        assert sidecar["SEEGChannelCount"] == SMALL["n_channels"]
        assert "iEEGReference" in sidecar
        n_samples = h5py.File(folder / f"{stem}_ieeg.nwb", "r")["acquisition/iEEG/data"].shape[0]
        assert sidecar["RecordingDuration"] == pytest.approx(n_samples / SMALL["sfreq"])


# ----------------------------------------------------------------------------- round trip

def test_round_trip_through_load_subject(dataset):
    rec = load_subject(dataset, "3")
    truth = load_ground_truth(dataset, 3)
    folder = _ieeg(dataset, "sub-03")
    stem = "sub-03_task-wordProduction"
    with h5py.File(folder / f"{stem}_ieeg.nwb", "r") as f:   # independent reader: h5py
        ieeg = f["acquisition/iEEG/data"][()]
        audio = f["acquisition/Audio/data"][()]
        stimulus = np.array([s.decode() for s in f["acquisition/Stimulus/data"][()]])
        audio_rate = f["acquisition/Audio/starting_time"].attrs["rate"]
    channels = _tsv(folder / f"{stem}_channels.tsv")
    electrodes = pd.read_csv(folder / f"{stem}_space-ACPC_electrodes.tsv", sep="\t").set_index("name")

    assert rec.subject == "sub-03" and rec.source == "synthetic" and rec.root == dataset
    assert rec.seeg.dtype == np.float64 and rec.seeg.flags.c_contiguous
    np.testing.assert_array_equal(rec.seeg, ieeg.T.astype(np.float64))
    assert rec.sfreq == SMALL["sfreq"] and rec.line_freq == 50.0
    assert rec.channel_names == channels["name"].tolist() == truth["channel_names"].tolist()
    assert rec.channel_labels == channels["description"].tolist()
    np.testing.assert_array_equal(rec.coords, electrodes.loc[rec.channel_names, ["x", "y", "z"]].to_numpy())
    np.testing.assert_array_equal(rec.audio, audio.astype(np.float64))
    assert rec.audio_sfreq == audio_rate == SMALL["audio_sfreq"]
    assert rec.trials.word == truth["words"].tolist()
    np.testing.assert_array_equal(rec.trials.sample, truth["onset_sample"])
    np.testing.assert_allclose(rec.trials.onset, truth["onset_sample"] / SMALL["sfreq"])
    assert len(rec.trials) == SMALL["n_words"]
    np.testing.assert_array_equal(rec.stimulus, stimulus)
    assert all(rec.stimulus[s] == w for s, w in zip(rec.trials.sample, rec.trials.word))
    assert rec.bad_channels == [] and rec.good_channels.all()
    assert set(rec.files) >= {"nwb", "ieeg_json", "channels", "events", "electrodes", "participants",
                              "dataset_description"}
    assert all(p.is_file() for p in rec.files.values())


def test_audio_is_speech_during_words_and_quiet_otherwise(dataset):
    rec = load_subject(dataset, 1)
    truth = load_ground_truth(dataset, 1)
    sr = rec.audio_sfreq
    inside = np.zeros(rec.audio.size, dtype=bool)
    for on, off in zip(truth["speech_onset"], truth["speech_offset"]):
        inside[int(on * sr): int(off * sr)] = True
    rms_in = np.sqrt(np.mean(rec.audio[inside] ** 2))
    rms_out = np.sqrt(np.mean(rec.audio[~inside] ** 2))
    assert rms_in > 30 * rms_out
    # speech starts after the word appears and ends before the next word
    assert np.all(truth["speech_onset"] > rec.trials.onset)
    assert np.all(truth["speech_offset"][:-1] < rec.trials.onset[1:])
    # each word is a harmonic sound: a peaky spectrum (low spectral flatness), unlike the noise floor
    def flatness(x):
        p = ss.welch(x, fs=sr, nperseg=1024)[1][1:]
        return np.exp(np.mean(np.log(p))) / np.mean(p)

    for on, off, onset in zip(truth["speech_onset"], truth["speech_offset"], rec.trials.onset):
        assert flatness(rec.audio[int(on * sr): int(off * sr)]) < 0.1
        assert flatness(rec.audio[int(onset * sr): int((onset + 0.25) * sr)]) > 0.5


def test_seeg_spectrum_has_line_noise_and_word_locked_high_gamma(dataset):
    rec = load_subject(dataset, 1)
    truth = load_ground_truth(dataset, 1)
    f, p = ss.welch(rec.seeg, fs=rec.sfreq, nperseg=16 * 1024, axis=-1)
    for line in (50, 100, 150):
        i, near = np.argmin(np.abs(f - line)), (np.abs(np.abs(f - line) - 3) < 1)
        assert np.all(p[:, i] > 5 * p[:, near].mean(axis=1))      # a narrow peak on every channel
    assert np.all(p[:, np.argmin(np.abs(f - 10))] > p[:, np.argmin(np.abs(f - 300))])   # 1/f
    # 70-170 Hz power during the burst window vs the fixation window, per channel
    hg = _scipy_high_gamma(rec.seeg, rec.sfreq) ** 2        # line harmonics notched out
    fs = int(rec.sfreq)
    during = np.mean([hg[:, s + fs // 4: s + fs] for s in rec.trials.sample], axis=(0, 2))
    after = np.mean([hg[:, s + 2 * fs: s + 3 * fs - 100] for s in rec.trials.sample[:-1]], axis=(0, 2))
    assert np.all(during > 3 * after)
    assert truth["amplitude"].min() > 0


# ----------------------------------------------------------------------------- determinism

def test_same_seed_gives_identical_arrays_and_subjects_are_independent(tmp_path, dataset):
    small = {**SMALL, "n_channels": 5, "n_words": 6}
    a = write_synthetic_dataset(tmp_path / "a", subjects=(3,), **small)
    b = write_synthetic_dataset(tmp_path / "b", subjects=(1, 3), **small)
    c = write_synthetic_dataset(tmp_path / "c", subjects=(3,), **{**small, "seed": small["seed"] + 1})
    ta, tb, tc = (load_ground_truth(r, 3) for r in (a, b, c))
    for key in ta:
        if isinstance(ta[key], np.ndarray):
            assert ta[key].dtype == tb[key].dtype and ta[key].tobytes() == tb[key].tobytes(), key
    ra, rb, rc = (load_subject(r, 3) for r in (a, b, c))
    assert ra.seeg.tobytes() == rb.seeg.tobytes() and ra.audio.tobytes() == rb.audio.tobytes()
    assert ra.stimulus.tolist() == rb.stimulus.tolist()
    assert not np.array_equal(ra.seeg, rc.seeg)
    assert not np.array_equal(ta["planted_map"], tc["planted_map"])
    # word features belong to the words: the same in every subject of one seed
    np.testing.assert_array_equal(tb["word_features"], load_ground_truth(b, 1)["word_features"])


# ----------------------------------------------------------------------------- ground truth

def test_ground_truth_is_consistent(dataset):
    for sub in (1, 3):
        t = load_ground_truth(dataset, sub)
        n_trials, n_ch, n_feat = SMALL["n_words"], SMALL["n_channels"], 16
        assert t["word_features"].shape == (n_trials, n_feat)
        assert t["planted_map"].shape == (n_ch, n_feat) and t["baseline"].shape == (n_ch,)
        assert t["amplitude"].shape == (n_trials, n_ch)
        assert t["vocabulary"].tolist() == list(WORDS[:n_trials])
        assert t["words"].tolist() == t["vocabulary"][t["word_index"]].tolist()
        assert sorted(t["word_index"].tolist()) == list(range(n_trials))     # each word once
        np.testing.assert_array_equal(t["trial_features"], t["word_features"][t["word_index"]])
        planted = t["trial_features"] @ t["planted_map"].T
        np.testing.assert_allclose(t["planted_term"], planted, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(t["amplitude"], t["baseline"] + planted, rtol=1e-12, atol=1e-12)
        assert np.all(t["amplitude"] > 0)
        assert np.all((np.abs(t["planted_map"]).sum(1) > 0) == t["responsive"])
        assert 0 < t["responsive"].sum() < n_ch or n_ch < 4
        assert int(t["seed"]) == SMALL["seed"] and t["params"]["n_channels"] == n_ch
        env = t["burst_envelope"]
        assert env[0] == 0 and env.max() == 1 and np.all(env >= 0)


# ----------------------------------------------------------------------------- planted recovery

def _scipy_high_gamma(x: np.ndarray, sfreq: float) -> np.ndarray:
    """REFERENCE.md section 2 with scipy: detrend, band-pass, band-stops, |hilbert|."""
    x = ss.detrend(x, axis=-1)
    x = ss.sosfiltfilt(ss.iirfilter(4, [70, 170], btype="bandpass", output="sos", fs=sfreq), x, axis=-1)
    for low, high in ((98, 102), (148, 152)):
        x = ss.sosfiltfilt(ss.iirfilter(4, [low, high], btype="bandstop", output="sos", fs=sfreq), x, axis=-1)
    n = x.shape[-1]
    return np.abs(ss.hilbert(x, N=scipy.fft.next_fast_len(n), axis=-1)[..., :n])


def _pooled_r(y: np.ndarray, amplitude: np.ndarray) -> float:
    return float(np.corrcoef(y.ravel(), amplitude.ravel())[0, 1])


def test_planted_amplitudes_recovered_with_scipy_reference(dataset):
    rec = load_subject(dataset, 1)
    truth = load_ground_truth(dataset, 1)
    envelope = _scipy_high_gamma(rec.seeg, rec.sfreq)
    n = int(rec.sfreq * 1.0)
    y = np.stack([envelope[:, s:s + n].mean(axis=1) for s in rec.trials.sample])    # trials x channels
    assert _pooled_r(y, truth["amplitude"]) > 0.9
    # and it is the word-dependent part that is recovered, not just the channel baselines
    resp = np.flatnonzero(truth["responsive"])
    per_channel = [np.corrcoef(y[:, c], truth["planted_term"][:, c])[0, 1] for c in resp]
    assert np.median(per_channel) > 0.8
    # a shuffled control fails the same bar
    shuffled = truth["amplitude"][np.random.default_rng(0).permutation(len(y))]
    assert np.median([np.corrcoef(y[:, c], shuffled[:, c])[0, 1] for c in resp]) < 0.5


def test_planted_amplitudes_recovered_with_gpurecon_signal(dataset):
    from gpurecon import signal   # an import error is a failure, not a skip
    rec = load_subject(dataset, 1)
    truth = load_ground_truth(dataset, 1)
    envelope = signal.high_gamma(rec.seeg, rec.sfreq, device="cpu")
    ep = signal.epochs(envelope, rec.trials.sample, rec.sfreq, length=1.0)
    y = signal.trial_mean(ep).cpu().numpy().astype(np.float64)      # (trials, channels)
    assert y.shape == truth["amplitude"].shape
    assert _pooled_r(y, truth["amplitude"]) > 0.9


# ----------------------------------------------------------------------------- writer behaviour

def test_adding_a_subject_to_an_existing_synthetic_dataset(tmp_path):
    small = {**SMALL, "n_channels": 4, "n_words": 5}
    root = write_synthetic_dataset(tmp_path / "ds", subjects=(2,), **small)
    before = load_subject(root, 2).seeg.copy()
    write_synthetic_dataset(root, subjects=(5,), **small)
    assert _tsv(root / "participants.tsv")["participant_id"].tolist() == ["sub-02", "sub-05"]
    np.testing.assert_array_equal(load_subject(root, 2).seeg, before)
    assert load_subject(root, 5).n_channels == 4
    desc = json.loads((root / "dataset_description.json").read_text())
    assert set(desc["GpureconSynthetic"]["subjects"]) == {"sub-02", "sub-05"}
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]    # no temp folders left behind


def test_a_crash_leaves_no_half_dataset(tmp_path, monkeypatch):
    calls = []
    real = synthetic_module._write_nwb

    def failing(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(synthetic_module, "_write_nwb", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        write_synthetic_dataset(tmp_path / "ds", subjects=(1, 2), **{**SMALL, "n_channels": 3, "n_words": 4})
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_write_into_a_foreign_folder(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "participants.tsv").write_text("participant_id\nsub-01\n")
    with pytest.raises(ValueError, match="out_dir"):
        write_synthetic_dataset(tmp_path / "real", n_channels=3, n_words=4, audio_sfreq=8000.0)
    assert (tmp_path / "real" / "participants.tsv").read_text() == "participant_id\nsub-01\n"


@pytest.mark.parametrize("kwargs, field", [
    (dict(n_words=0), "n_words"),
    (dict(n_words=len(WORDS) + 1), "n_words"),
    (dict(n_channels=0), "n_channels"),
    (dict(n_features=0), "n_features"),
    (dict(sfreq=200.0), "sfreq"),
    (dict(audio_sfreq=1000.0), "audio_sfreq"),
    (dict(burst=(0.1, 5.0)), "burst"),
    (dict(responsive_fraction=1.5), "responsive_fraction"),
    (dict(subjects=(11,), n_channels=None), "n_channels"),
    (dict(subjects=("x",)), "subject"),
])
def test_bad_arguments_raise_value_error(tmp_path, kwargs, field):
    args = {**SMALL, "n_channels": 3, "n_words": 4, **kwargs}
    with pytest.raises(ValueError, match=field):
        write_synthetic_dataset(tmp_path / "ds", **args)
    assert not (tmp_path / "ds").exists()


def test_real_channel_counts_are_the_default():
    assert [synthetic_module.REAL_CHANNEL_COUNTS[s] for s in range(1, 11)] == \
        [127, 127, 127, 115, 60, 127, 127, 54, 117, 122]


def test_word_list():
    assert len(WORDS) == len(set(WORDS)) == 100
    assert {"9", "12", "'s"} <= set(WORDS)


def test_command_line(tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "gpurecon.data.synthetic",
                           str(out), "--subjects", "2", "4", "--seed", "3", "--channels", "3", "--words", "4",
                           "--audio-sfreq", "8000"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout
    rec = load_subject(out, 4)
    assert rec.n_channels == 3 and len(rec.trials) == 4 and rec.audio_sfreq == 8000
    assert load_ground_truth(out, 2)["params"]["seed"] == 3


def test_command_line_small_flag_and_errors(tmp_path, capsys):
    assert synthetic_module.main([str(tmp_path / "x"), "--words", "0"]) == 1
    assert "n_words" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert synthetic_module.main([str(tmp_path / "s"), "--small", "--words", "3"]) == 0
    truth = load_ground_truth(tmp_path / "s", 1)
    assert truth["params"]["n_channels"] == 16 and truth["params"]["n_words"] == 3
    assert truth["params"]["audio_sfreq"] == 16000.0
