"""A synthetic SingleWordProductionDutch-iBIDS dataset with a planted, known encoding model.

It is written in the real layout (see :data:`gpurecon.data.ibids.LAYOUT`), so
:func:`gpurecon.data.load_subject` reads it like the real download. Each subject's sEEG holds

- a 1/f^alpha background per channel (alpha in [1.6, 2.2]),
- 50 Hz line noise with harmonics at 100 and 150 Hz,
- high-gamma bursts: 70-170 Hz band-limited noise times a smooth envelope from ``burst[0]`` to
  ``burst[1]`` s after each word onset, of amplitude ``hg_uv * a[t, c]`` with

      a[t, c] = baseline[c] + (planted_map @ word_features[word(t)])[c]

  (``baseline`` is shifted per channel so that ``a >= 0.2``; non-responsive channels have a zero
  row in ``planted_map``: their amplitude is the baseline only),

and the audio holds a speech-like harmonic complex (pitch glide, two moving formants) during each
spoken word, low noise elsewhere.

Ground truth: ``derivatives/synthetic/sub-XX/sub-XX_groundtruth.npz`` (read it with
:func:`load_ground_truth`), keys

==================  ==========================  ==================================================
words               (n_trials,) str             the word of each trial, in trial (onset) order
word_index          (n_trials,) int64           row of ``vocabulary`` / ``word_features``
vocabulary          (n_words,) str              the words, in ``word_features`` row order
word_features       (n_words, n_features)       known per-word feature vectors f_w (seeded normal)
trial_features      (n_trials, n_features)      ``word_features[word_index]``
planted_map         (n_channels, n_features)    the planted linear map M
planted_term        (n_trials, n_channels)      ``trial_features @ planted_map.T``
baseline            (n_channels,)               per-channel baseline amplitude
amplitude           (n_trials, n_channels)      ``baseline + planted_term`` (burst amplitude a)
responsive          (n_channels,) bool          channels with a word-dependent term
onset_sample        (n_trials,) int64           sEEG sample of each word onset
speech_onset        (n_trials,) float           audio: speech start (s, recording time)
speech_offset       (n_trials,) float           audio: speech end (s, recording time)
burst_envelope      (L,) float                  the unit burst envelope r(tau), tau = arange(L)/sfreq
channel_names       (n_channels,) str           as in channels.tsv
seed, sfreq, hg_uv  scalars
==================  ==========================  ==================================================

plus ``params`` (every generator argument, from the file's provenance). The same seed gives
byte-identical arrays; each subject depends only on (seed, subject number), the word features
only on the seed, so a subject generated alone equals the same subject generated with others.

Command line: ``python -m gpurecon.data.synthetic OUT_DIR [--subjects 1 3] [--seed 0]
[--channels N] [--words N] [--small]``.
"""

from __future__ import annotations

import argparse
import datetime
import errno
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.fft

from .. import __version__
from ..errors import DataError
from ..outputs import read_npz, remove_stale_temps, temp_prefix, write_json, write_npz, write_text
from .ibids import SYNTHETIC_GENERATOR, TASK, _parse_subject_number, is_synthetic, subject_files, subject_id
from .words import WORDS

# Channels per participant of the real dataset (sub-01 .. sub-10).
REAL_CHANNEL_COUNTS = {1: 127, 2: 127, 3: 127, 4: 115, 5: 60, 6: 127, 7: 127, 8: 54, 9: 117, 10: 122}

HG_BAND = (70.0, 170.0)
LINE_FREQ = 50.0
_EPOCH = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)   # fixed: files reproducible

_LABELS_LH = ("ctx_lh_G_and_S_subcentral", "ctx_lh_G_front_inf-Opercular", "ctx_lh_G_temp_sup-Lateral",
              "ctx_lh_S_central", "ctx_lh_G_precentral", "ctx_lh_G_postcentral", "ctx_lh_G_insular_short",
              "ctx_lh_S_temporal_sup", "Left-Hippocampus", "Left-Amygdala", "Left-Cerebral-White-Matter",
              "Unknown")


def ground_truth_path(root: str | Path, subject: int | str) -> Path:
    """Where the ground truth of a synthetic subject lives."""
    sub = subject_id(subject)
    return Path(root) / "derivatives" / "synthetic" / sub / f"{sub}_groundtruth.npz"


def load_ground_truth(root: str | Path, subject: int | str) -> dict:
    """Read a synthetic subject's ground truth (keys: see the module docstring) plus ``params``."""
    path = ground_truth_path(root, subject)
    if not path.is_file():
        raise DataError(f"missing ground truth {path}: only datasets written by gpurecon.data.synthetic "
                        f"have one (`python -m gpurecon.data.synthetic OUT_DIR`)")
    arrays, provenance = read_npz(path)
    out: dict = dict(arrays)
    out["params"] = provenance or {}
    return out


# ----------------------------------------------------------------------------- arguments

def _check_args(subjects, n_channels, n_words, n_features, sfreq, audio_sfreq, word_duration,
                fixation_duration, burst, ramp, responsive_fraction) -> list[int]:
    numbers = [_parse_subject_number(s) for s in subjects]
    if not numbers:
        raise ValueError("subjects must name at least one subject, e.g. (1,) or (1, 3)")
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"subjects has duplicates: {list(subjects)}")
    if n_channels is None:
        unknown = [n for n in numbers if n not in REAL_CHANNEL_COUNTS]
        if unknown:
            raise ValueError(f"n_channels=None uses the real per-subject channel counts, known for subjects 1-10 "
                             f"only; got subject(s) {unknown}: pass n_channels")
    elif int(n_channels) < 1:
        raise ValueError(f"n_channels must be >= 1 (or None for the real counts), got {n_channels}")
    if not 1 <= int(n_words) <= len(WORDS):
        raise ValueError(f"n_words must be in 1..{len(WORDS)} (the built-in word list), got {n_words}")
    if int(n_features) < 1:
        raise ValueError(f"n_features must be >= 1, got {n_features}")
    if sfreq < 2.2 * (HG_BAND[1] + 5):
        raise ValueError(f"sfreq must be >= {2.2 * (HG_BAND[1] + 5):g} Hz so that the 70-170 Hz high-gamma "
                         f"band is below Nyquist, got {sfreq}")
    if audio_sfreq < 4000:
        raise ValueError(f"audio_sfreq must be >= 4000 Hz, got {audio_sfreq}")
    if word_duration <= 0 or fixation_duration < 0:
        raise ValueError(f"word_duration must be > 0 and fixation_duration >= 0, got "
                         f"{word_duration}, {fixation_duration}")
    start, end = burst
    if not (0 <= start < end <= word_duration + fixation_duration) or not (0 < ramp <= (end - start) / 2):
        raise ValueError(f"burst=(start, end) must satisfy 0 <= start < end <= word_duration + fixation_duration "
                         f"({word_duration + fixation_duration:g} s) and 0 < ramp <= (end-start)/2; "
                         f"got burst={burst}, ramp={ramp}")
    if not 0 <= responsive_fraction <= 1:
        raise ValueError(f"responsive_fraction must be in [0, 1], got {responsive_fraction}")
    return numbers


# ----------------------------------------------------------------------------- content

def _burst_envelope(sfreq: float, burst: tuple[float, float], ramp: float) -> np.ndarray:
    """r(tau), tau = arange(L)/sfreq: 0 before burst[0], raised-cosine ramps, 1 on the plateau."""
    tau = np.arange(int(np.ceil(burst[1] * sfreq)) + 1) / sfreq
    up = np.clip((tau - burst[0]) / ramp, 0, 1)
    down = np.clip((burst[1] - tau) / ramp, 0, 1)
    return 0.5 - 0.5 * np.cos(np.pi * np.minimum(up, down))


def _band_mask(freqs: np.ndarray, low: float, high: float, taper: float = 5.0) -> np.ndarray:
    """Flat in [low+taper, high-taper], raised-cosine to zero at low and high."""
    up = np.clip((freqs - low) / taper, 0, 1)
    down = np.clip((high - freqs) / taper, 0, 1)
    return 0.5 - 0.5 * np.cos(np.pi * np.minimum(up, down))


def _channel_layout(rng: np.random.Generator, n_channels: int) -> tuple[list[str], list[str], np.ndarray, tuple]:
    """sEEG shafts (names like LA1.., RB1..), anatomical labels and ACPC coordinates (mm).

    Also returns one extra contact (name, xyz) that electrodes.tsv lists but channels.tsv does not.
    """
    names, labels, coords = [], [], []
    shaft = 0
    extra = None
    while len(names) < n_channels:
        side = "L" if shaft % 2 == 0 else "R"
        prefix = f"{side}{chr(ord('A') + shaft // 2 % 26)}{'' if shaft < 52 else shaft // 52}"
        n_contacts = min(int(rng.integers(8, 17)), n_channels - len(names))
        sign = -1.0 if side == "L" else 1.0
        entry = np.array([sign * rng.uniform(50, 65), rng.uniform(-60, 40), rng.uniform(-20, 50)])
        direction = np.array([-sign, rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3)])
        direction /= np.linalg.norm(direction)
        start_label = int(rng.integers(len(_LABELS_LH)))
        for k in range(n_contacts):
            names.append(f"{prefix}{k + 1}")
            label = _LABELS_LH[(start_label + k // 3) % len(_LABELS_LH)]
            if side == "R":
                label = label.replace("_lh_", "_rh_").replace("Left-", "Right-")
            labels.append(label)
            coords.append(np.round(entry + 3.5 * k * direction, 2))
        extra = (f"{prefix}{n_contacts + 1}", np.round(entry + 3.5 * n_contacts * direction, 2))
        shaft += 1
    return names, labels, np.array(coords), extra


def _seeg(seed: int, number: int, n_samples: int, sfreq: float, amplitude: np.ndarray,
          onset_sample: np.ndarray, envelope: np.ndarray, hg_uv: float, background_uv: float,
          line_uv: float, dtype, tick=None) -> np.ndarray:
    """(n_samples, n_channels) sEEG; each channel from its own seeded generator.

    Computed in float32 (noise does not need more, and it halves the time of a full subject).
    """
    n_channels = amplitude.shape[1]
    channels_first = np.empty((n_channels, n_samples), dtype=dtype)
    # Noise is shaped in the frequency domain on a fast FFT length, then cut to n_samples.
    n_fft = scipy.fft.next_fast_len(n_samples, real=True)
    freqs = scipy.fft.rfftfreq(n_fft, 1.0 / sfreq)
    log_f = np.log(np.maximum(freqs, 0.5))
    hg_mask = _band_mask(freqs, *HG_BAND).astype(np.float32)
    t = np.arange(n_samples) / sfreq
    harmonics = [(h, w) for h, w in ((1, 1.0), (2, 0.5), (3, 0.3)) if h * LINE_FREQ < sfreq / 2 - 1]
    # Line noise of any phase is a sin/cos mix: 2H coefficients per channel times one (2H, n) basis.
    basis = np.stack([f(2 * np.pi * h * LINE_FREQ * t) for h, _ in harmonics for f in (np.sin, np.cos)]
                     ).astype(np.float32)
    envelope = envelope.astype(np.float32)
    L = envelope.shape[0]
    spectrum = np.empty(freqs.size, dtype=np.complex64)

    def noise(rng: np.random.Generator, gain: np.ndarray) -> np.ndarray:
        parts = rng.standard_normal((2, freqs.size), dtype=np.float32)
        spectrum.real, spectrum.imag = parts[0] * gain, parts[1] * gain
        return scipy.fft.irfft(spectrum, n_fft)[:n_samples]

    for c in range(n_channels):
        rng = np.random.default_rng([seed, number, 1, c])
        alpha = rng.uniform(1.6, 2.2)
        pink = np.exp(-0.5 * alpha * log_f).astype(np.float32)
        pink[0] = 0.0
        x = noise(rng, pink)
        x *= np.float32(background_uv * rng.uniform(0.7, 1.4) / x.std(dtype=np.float64))
        carrier = noise(rng, hg_mask)
        burst = np.zeros(n_samples, dtype=np.float32)
        for s, a in zip(onset_sample, amplitude[:, c].astype(np.float32)):
            stop = min(s + L, n_samples)
            burst[s:stop] += a * envelope[: stop - s]
        burst *= np.float32(hg_uv / carrier.std(dtype=np.float64))
        carrier *= burst
        x += carrier
        line_amp = line_uv * rng.uniform(0.5, 1.5)
        phase = rng.uniform(0, 2 * np.pi, len(harmonics))
        weights = line_amp * np.array([w for _, w in harmonics])
        coef = (np.stack([np.cos(phase), np.sin(phase)], axis=1) * weights[:, None]).ravel()
        x += coef.astype(np.float32) @ basis
        channels_first[c] = x
        if tick is not None:
            tick(c + 1)
    # NWB wants samples x channels; transposing in blocks keeps it cache-friendly.
    out = np.empty((n_samples, n_channels), dtype=dtype)
    for start in range(0, n_samples, 1024):
        out[start:start + 1024] = channels_first[:, start:start + 1024].T
    return out


def _speech(rng: np.random.Generator, audio_sfreq: float) -> tuple[float, np.ndarray]:
    """One word's speech-like sound: harmonic complex, pitch glide, two moving formants."""
    start = rng.uniform(0.3, 0.45)
    duration = rng.uniform(0.45, 0.7)
    f0 = rng.uniform(100, 220)
    formants = rng.uniform([300, 850], [850, 2400], size=(2, 2))   # two vowels x (F1, F2)
    m = int(round(duration * audio_sfreq))
    u = np.linspace(0, 1, m)
    pitch = f0 * (1.0 - 0.15 * u)
    phase = 2 * np.pi * np.cumsum(pitch) / audio_sfreq
    # Harmonic weights (formant resonances) change slowly: compute them every ~1 ms.
    step = max(1, int(audio_sfreq // 1000))
    uc, pc = u[::step], pitch[::step]
    f1 = formants[0, 0] + (formants[1, 0] - formants[0, 0]) * uc
    f2 = formants[0, 1] + (formants[1, 1] - formants[0, 1]) * uc
    h = np.arange(1, int(min(4000.0, 0.45 * audio_sfreq) // f0) + 1)[:, None]
    weight = 1 / (1 + ((h * pc - f1) / 80) ** 2) + 0.7 / (1 + ((h * pc - f2) / 120) ** 2)
    weight = np.repeat(weight, step, axis=1)[:, :m]
    # sin(h*phase) by the Chebyshev recurrence sin((h+1)x) = 2cos(x)sin(hx) - sin((h-1)x).
    two_cos, previous, current = 2 * np.cos(phase), np.zeros(m), np.sin(phase)
    sound = np.zeros(m)
    for w in weight:
        sound += w * current
        previous, current = current, two_cos * current - previous
    attack, release = np.clip(u * duration / 0.03, 0, 1), np.clip((1 - u) * duration / 0.06, 0, 1)
    sound *= np.minimum(attack, release) * rng.uniform(0.2, 0.4) / np.abs(sound).max()
    return start, sound


def _make_subject(number: int, *, seed: int, sfreq: float, n_channels: int, n_words: int,
                  word_duration: float, fixation_duration: float, lead_in: float, audio_sfreq: float,
                  n_features: int, responsive_fraction: float, word_scale: float, hg_uv: float,
                  background_uv: float, line_uv: float, burst: tuple[float, float], ramp: float,
                  dtype: str, tick=None) -> dict:
    vocabulary = list(WORDS[:n_words])
    # Word features depend on the seed only: the same word has the same features in every subject.
    word_features = np.random.default_rng([seed, 0]).standard_normal((n_words, n_features))
    rng = np.random.default_rng([seed, number])
    word_index = rng.permutation(n_words)
    names, labels, coords, extra = _channel_layout(rng, n_channels)

    responsive = rng.random(n_channels) < responsive_fraction
    if responsive_fraction > 0 and not responsive.any():
        responsive[0] = True
    planted_map = rng.standard_normal((n_channels, n_features)) * (word_scale / np.sqrt(n_features))
    planted_map[~responsive] = 0.0
    trial_features = word_features[word_index]
    planted_term = trial_features @ planted_map.T
    # Shift each baseline so that every amplitude is >= 0.2: a stays exactly linear in f_w.
    baseline = np.maximum(rng.uniform(0.5, 1.5, n_channels), 0.2 - planted_term.min(axis=0))
    amplitude = baseline + planted_term

    period = word_duration + fixation_duration
    onset_sample = np.round((lead_in + period * np.arange(n_words)) * sfreq).astype(np.int64)
    n_samples = int(round((2 * lead_in + period * n_words) * sfreq))
    envelope = _burst_envelope(sfreq, burst, ramp)
    seeg = _seeg(seed, number, n_samples, sfreq, amplitude, onset_sample, envelope,
                 hg_uv, background_uv, line_uv, np.dtype(dtype), tick=tick)

    stimulus = np.full(n_samples, "", dtype=object)
    word_samples = int(round(word_duration * sfreq))
    words = [vocabulary[i] for i in word_index]
    for s, word in zip(onset_sample, words):
        stimulus[s: s + word_samples] = word

    audio_rng = np.random.default_rng([seed, number, 2])
    audio = 1e-3 * audio_rng.standard_normal(int(round(n_samples / sfreq * audio_sfreq)))
    speech_onset, speech_offset = np.empty(n_words), np.empty(n_words)
    for k, (s, w) in enumerate(zip(onset_sample, word_index)):
        # The same word sounds the same in every subject and trial (seeded by the word).
        start, sound = _speech(np.random.default_rng([seed, 3, int(w)]), audio_sfreq)
        first = int(round((s / sfreq + start) * audio_sfreq))
        audio[first: first + sound.size] += sound[: max(0, audio.size - first)]
        speech_onset[k], speech_offset[k] = first / audio_sfreq, (first + sound.size) / audio_sfreq

    return dict(
        names=names, labels=labels, coords=coords, extra=extra, seeg=seeg, stimulus=stimulus,
        audio=audio.astype(np.float32), onset_sample=onset_sample, n_samples=n_samples,
        truth=dict(
            words=np.array(words, dtype=str), word_index=word_index.astype(np.int64),
            vocabulary=np.array(vocabulary, dtype=str), word_features=word_features,
            trial_features=trial_features, planted_map=planted_map, planted_term=planted_term,
            baseline=baseline, amplitude=amplitude, responsive=responsive, onset_sample=onset_sample,
            speech_onset=speech_onset, speech_offset=speech_offset, burst_envelope=envelope,
            channel_names=np.array(names, dtype=str), seed=np.int64(seed), sfreq=np.float64(sfreq),
            hg_uv=np.float64(hg_uv),
        ),
    )


# ----------------------------------------------------------------------------- writing

def _tsv(header: list[str], rows: list[list]) -> str:
    def cell(v) -> str:
        if isinstance(v, (float, np.floating)):
            return "n/a" if not np.isfinite(v) else repr(float(v))
        return str(v)
    return "\n".join(["\t".join(header)] + ["\t".join(cell(v) for v in row) for row in rows]) + "\n"


def _write_nwb(path: Path, sub: str, data: dict, sfreq: float, audio_sfreq: float, seed: int) -> None:
    from pynwb import NWBHDF5IO, NWBFile, TimeSeries

    nwb = NWBFile(session_description="synthetic single-word production (gpurecon)",
                  identifier=f"gpurecon-synthetic-{sub}-seed{seed}", session_start_time=_EPOCH,
                  file_create_date=_EPOCH, experiment_description="synthetic, planted encoding model")
    nwb.add_acquisition(TimeSeries(name="iEEG", data=data["seeg"], unit="uV", rate=float(sfreq),
                                   description="sEEG, samples x channels (channels.tsv order)"))
    nwb.add_acquisition(TimeSeries(name="Audio", data=data["audio"], unit="a.u.", rate=float(audio_sfreq),
                                   description="microphone"))
    nwb.add_acquisition(TimeSeries(name="Stimulus", data=data["stimulus"], unit="n/a", rate=float(sfreq),
                                   description="word on screen per sEEG sample, empty string otherwise"))
    with NWBHDF5IO(str(path), mode="w") as io:
        io.write(nwb)


def _write_subject(root: Path, number: int, data: dict, params: dict) -> None:
    sub = subject_id(number)
    files = subject_files(root, sub)
    files["nwb"].parent.mkdir(parents=True, exist_ok=True)
    sfreq, n_samples = params["sfreq"], data["n_samples"]
    _write_nwb(files["nwb"], sub, data, sfreq, params["audio_sfreq"], params["seed"])

    n_channels = len(data["names"])
    write_text(files["channels"], _tsv(
        ["name", "type", "units", "low_cutoff", "high_cutoff", "description", "sampling_frequency", "status"],
        [[n, "SEEG", "uV", "n/a", "n/a", lab, sfreq, "good"] for n, lab in zip(data["names"], data["labels"])]))
    rows = []
    for s, word in zip(data["onset_sample"], data["truth"]["words"]):
        fixation = s + int(round(params["word_duration"] * sfreq))
        rows.append([s / sfreq, float(params["word_duration"]), "word", word, int(s)])
        rows.append([fixation / sfreq, float(params["fixation_duration"]), "fixation", "+", int(fixation)])
    write_text(files["events"], _tsv(["onset", "duration", "trial_type", "value", "sample"], rows))
    extra_name, extra_xyz = data["extra"]
    write_text(files["electrodes"], _tsv(
        ["name", "x", "y", "z", "size"],
        [[n, *map(float, xyz), 5.0] for n, xyz in zip(data["names"], data["coords"])]
        + [[extra_name, *map(float, extra_xyz), 5.0]]))
    write_json(files["ieeg_json"], {
        "TaskName": TASK, "SamplingFrequency": sfreq, "PowerLineFrequency": LINE_FREQ,
        "RecordingDuration": n_samples / sfreq, "RecordingType": "continuous",
        "SEEGChannelCount": n_channels, "ECOGChannelCount": 0, "EEGChannelCount": 0,
        "iEEGReference": f"contact {extra_name} (synthetic)", "SoftwareFilters": "n/a",
        "Manufacturer": "gpurecon synthetic"})
    write_json(files["coordsystem"], {
        "iEEGCoordinateSystem": "ACPC", "iEEGCoordinateUnits": "mm",
        "iEEGCoordinateSystemDescription": "synthetic shaft positions, not a real brain"})
    write_npz(ground_truth_path(root, number), provenance=params, **data["truth"])


def _describe(subject_params: dict[str, dict]) -> dict:
    return {
        "Name": "Synthetic SingleWordProductionDutch-iBIDS (gpurecon)",
        "BIDSVersion": "1.8.0",
        "DatasetType": "raw",
        "GeneratedBy": [{"Name": SYNTHETIC_GENERATOR, "Version": __version__,
                         "Description": "synthetic sEEG with planted high-gamma encoding model"}],
        "GpureconSynthetic": {"subjects": subject_params},
    }


def _write_dataset_files(root: Path, subject_params: dict[str, dict]) -> None:
    write_text(root / "participants.tsv",
               _tsv(["participant_id", "age", "sex"], [[s, "n/a", "n/a"] for s in sorted(subject_params)]))
    write_json(root / "dataset_description.json", _describe(subject_params))
    write_json(root / "derivatives" / "synthetic" / "dataset_description.json", {
        "Name": "gpurecon synthetic ground truth", "BIDSVersion": "1.8.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": SYNTHETIC_GENERATOR, "Version": __version__}]})


def _commit(tmp: Path, out_dir: Path, subs: list[str], subject_params: dict[str, dict]) -> None:
    """Move the finished temp dataset into place: whole-folder rename, or per-subject merge."""
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    if not out_dir.exists():
        _write_dataset_files(tmp, subject_params)
        try:
            os.replace(tmp, out_dir)
            return
        except OSError as err:
            # Another writer renamed its copy into place first (ENOTEMPTY/EEXIST): merge ours
            # into it like any existing synthetic dataset instead of failing.
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
    if not is_synthetic(out_dir):
        raise ValueError(f"out_dir {out_dir} exists and is not a dataset written by {SYNTHETIC_GENERATOR}; "
                         f"refusing to write into it (choose a new or empty folder)")
    try:
        previous = json.loads((out_dir / "dataset_description.json").read_text())["GpureconSynthetic"]["subjects"]
    except (KeyError, TypeError, ValueError):
        previous = {}
    trash = tmp / ".replaced"
    trash.mkdir()
    for sub in subs:
        for rel in (Path(sub), Path("derivatives") / "synthetic" / sub):
            target = out_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                os.replace(target, trash / f"{len(list(trash.iterdir()))}")
            os.replace(tmp / rel, target)
    _write_dataset_files(out_dir, {**previous, **subject_params})
    shutil.rmtree(tmp)


def write_synthetic_dataset(out_dir: str | os.PathLike, subjects: Sequence[int | str] = (1,), *,
                            seed: int = 0, sfreq: float = 1024.0, n_channels: int | None = None,
                            n_words: int = 100, word_duration: float = 2.0, fixation_duration: float = 1.0,
                            lead_in: float = 0.5, audio_sfreq: float = 48000.0, n_features: int = 16,
                            responsive_fraction: float = 0.75, word_scale: float = 0.5, hg_uv: float = 10.0,
                            background_uv: float = 20.0, line_uv: float = 10.0,
                            burst: tuple[float, float] = (0.1, 1.5), ramp: float = 0.15,
                            dtype: str = "float32", progress=None) -> Path:
    """Write a synthetic iBIDS dataset (real layout + ground truth) for the given subjects.

    Parameters
    ----------
    out_dir : path
        Dataset root to create. If it already holds a synthetic dataset, the given subjects are
        added or replaced; any other existing non-empty folder is refused.
    subjects : sequence of int or str
        Subject numbers (1, "03", "sub-03"); the real dataset has 1..10.
    seed : int
        Everything is a deterministic function of (seed, subject number).
    sfreq : float
        sEEG rate (Hz); must leave 70-170 Hz below Nyquist.
    n_channels : int, optional
        Channels per subject; None uses the real counts (127, 127, 127, 115, 60, 127, 127, 54, 117, 122).
    n_words : int
        Trials per subject, one per word: the first ``n_words`` of :data:`gpurecon.data.words.WORDS`.
    word_duration, fixation_duration, lead_in : float
        Seconds a word is shown, then the fixation cross; silence before the first word and after
        the last. Recording length ``2*lead_in + n_words*(word_duration+fixation_duration)``.
    audio_sfreq : float
        Audio rate (Hz), 48 kHz in the real data; lower it for fast tests.
    n_features : int
        Length of the per-word feature vectors.
    responsive_fraction : float
        Share of channels whose burst amplitude depends on the word.
    word_scale : float
        Standard deviation of the planted word term ``(M f_w)_c`` across words.
    hg_uv, background_uv, line_uv : float
        Scales (uV) of the high-gamma burst (times the amplitude a), the 1/f background (std) and
        the 50 Hz line noise.
    burst, ramp : float
        Burst start/end after word onset (s) and the length of its raised-cosine ramps (s).
    dtype : str
        Sample type of the NWB iEEG data.
    progress : callable, optional
        ``progress(done, total)`` in channels generated, over all subjects.

    Returns
    -------
    Path
        ``out_dir``.
    """
    numbers = _check_args(subjects, n_channels, n_words, n_features, sfreq, audio_sfreq, word_duration,
                          fixation_duration, burst, ramp, responsive_fraction)
    out_dir = Path(out_dir).expanduser().resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out_dir {out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not is_synthetic(out_dir):
        raise ValueError(f"out_dir {out_dir} exists and is not a dataset written by {SYNTHETIC_GENERATOR}; "
                         f"refusing to write into it (choose a new or empty folder)")
    remove_stale_temps(out_dir.parent, out_dir.name)   # temp folders of writers that were killed
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(out_dir.name), dir=out_dir.parent))
    try:
        subject_params = {}
        counts = [int(n_channels if n_channels is not None else REAL_CHANNEL_COUNTS[k]) for k in numbers]
        for i, number in enumerate(numbers):
            tick = None if progress is None else (
                lambda c, before=sum(counts[:i]): progress(before + c, sum(counts)))
            params = dict(seed=int(seed), sfreq=float(sfreq), n_words=int(n_words),
                          n_channels=int(n_channels if n_channels is not None else REAL_CHANNEL_COUNTS[number]),
                          word_duration=float(word_duration), fixation_duration=float(fixation_duration),
                          lead_in=float(lead_in), audio_sfreq=float(audio_sfreq), n_features=int(n_features),
                          responsive_fraction=float(responsive_fraction), word_scale=float(word_scale),
                          hg_uv=float(hg_uv), background_uv=float(background_uv), line_uv=float(line_uv),
                          burst=[float(b) for b in burst], ramp=float(ramp), dtype=str(np.dtype(dtype)))
            data = _make_subject(number, **{**params, "burst": tuple(params["burst"])}, tick=tick)
            _write_subject(tmp, number, data, {**params, "subject": subject_id(number), "version": __version__})
            subject_params[subject_id(number)] = params
        os.chmod(tmp, 0o755)   # mkdtemp makes it private; a dataset folder is not
        _commit(tmp, out_dir, [subject_id(n) for n in numbers], subject_params)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


# ----------------------------------------------------------------------------- command line

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gpurecon.data.synthetic",
        description="Write a synthetic SingleWordProductionDutch-iBIDS dataset with a planted encoding model.")
    parser.add_argument("out_dir", help="dataset root to create")
    parser.add_argument("--subjects", nargs="+", default=["1"], metavar="N",
                        help="subject numbers (default: 1); 'all' for 1..10")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--channels", type=int, default=None, help="channels per subject (default: real counts)")
    parser.add_argument("--words", type=int, default=None, help=f"trials/words per subject (1..{len(WORDS)})")
    parser.add_argument("--audio-sfreq", type=float, default=None, help="audio rate in Hz (default 48000)")
    parser.add_argument("--small", action="store_true",
                        help="a small, fast dataset: 16 channels, 20 words, 16 kHz audio")
    args = parser.parse_args(argv)
    subjects = list(REAL_CHANNEL_COUNTS) if args.subjects == ["all"] else args.subjects
    small = dict(n_channels=16, n_words=20, audio_sfreq=16000.0) if args.small else {}
    overrides = {k: v for k, v in (("n_channels", args.channels), ("n_words", args.words),
                                   ("audio_sfreq", args.audio_sfreq)) if v is not None}
    try:
        root = write_synthetic_dataset(args.out_dir, subjects, seed=args.seed, **{**small, **overrides})
    except (ValueError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote synthetic dataset {root} ({', '.join(subject_id(s) for s in subjects)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
