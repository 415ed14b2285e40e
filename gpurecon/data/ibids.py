"""Read one participant of SingleWordProductionDutch-iBIDS (NWB + BIDS sidecars) into a Recording.

Every file is cross-checked against the others (channel counts, sampling rates, event onsets
against the Stimulus track, audio length) so that a wrong or damaged download fails early with
one message naming the file and field, instead of silently misaligning trials and channels.

Layout (BIDS for iEEG), see :data:`LAYOUT`. The same layout is written by
:mod:`gpurecon.data.synthetic`, which uses :func:`subject_files` to name its files.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path

import numpy as np

from ..errors import DataError
from .recording import Recording, Trials

log = logging.getLogger(__name__)

TASK = "wordProduction"
SYNTHETIC_GENERATOR = "gpurecon.data.synthetic"   # dataset_description.json GeneratedBy Name
ACQUISITIONS = ("iEEG", "Audio", "Stimulus")

LAYOUT = """\
  <root>/participants.tsv                                   (column participant_id; optional)
  <root>/sub-XX/ieeg/sub-XX_task-wordProduction_ieeg.nwb     (acquisitions iEEG, Audio, Stimulus)
  <root>/sub-XX/ieeg/sub-XX_task-wordProduction_ieeg.json
  <root>/sub-XX/ieeg/sub-XX_task-wordProduction_channels.tsv
  <root>/sub-XX/ieeg/sub-XX_task-wordProduction_events.tsv
  <root>/sub-XX/ieeg/sub-XX[_task-wordProduction]_space-ACPC_electrodes.tsv"""

SYNTHETIC_HINT = ("To try the pipeline without the real data, write a synthetic dataset in this layout: "
                  "`python -m gpurecon.data.synthetic OUT_DIR` (or run with data=synthetic).")

# A few samples of slack where two files state the same instant (rounding of onset*sfreq).
_SAMPLE_TOLERANCE = 2.0


# ----------------------------------------------------------------------------- names and paths

def _parse_subject_number(subject: int | str) -> int:
    if isinstance(subject, (bool, np.bool_)):
        raise DataError(f"subject must be a number like 3, '03' or 'sub-03', got {subject!r}")
    if isinstance(subject, (int, np.integer)):
        number = int(subject)
    elif isinstance(subject, str):
        text = subject.strip()
        if text.lower().startswith("sub-"):
            text = text[4:]
        if not text.isdigit():
            raise DataError(f"subject must be a number like 3, '03' or 'sub-03', got {subject!r}")
        number = int(text)
    else:
        raise DataError(f"subject must be a number like 3, '03' or 'sub-03', got {subject!r}")
    if number < 1:
        raise DataError(f"subject must be a positive number (sub-01, sub-02, ...), got {subject!r}")
    return number


def available_subjects(root: str | Path) -> list[str]:
    """Subjects of a dataset: participants.tsv ``participant_id`` when present, else ``sub-*`` folders."""
    root = Path(root)
    participants = root / "participants.tsv"
    if participants.is_file():
        table = _read_tsv(participants, required=("participant_id",))
        return [p.strip() for p in table["participant_id"]]
    return sorted(p.name for p in root.glob("sub-*") if p.is_dir())


def subject_id(subject: int | str, root: str | Path | None = None) -> str:
    """Normalise a subject to its BIDS id: 3, "3", "03", "sub-03" -> "sub-03".

    Parameters
    ----------
    subject : int or str
        The participant, as a number or a BIDS id.
    root : path, optional
        Dataset root. When given, the subject must be listed in ``participants.tsv`` (or, without
        one, have a ``sub-XX`` folder); otherwise a DataError lists the valid subjects.
    """
    sub = f"sub-{_parse_subject_number(subject):02d}"
    if root is None:
        return sub
    root = _check_root(root)
    valid = available_subjects(root)
    if sub not in valid:
        where = "participants.tsv" if (root / "participants.tsv").is_file() else "sub-* folders"
        listed = ", ".join(valid) if valid else "none"
        raise DataError(f"subject {subject!r} ({sub}) is not in dataset {root} "
                        f"(valid subjects from {where}: {listed})")
    return sub


def subject_files(root: str | Path, sub: str) -> dict[str, Path]:
    """The canonical paths of one subject's files (what the synthetic writer writes)."""
    folder = Path(root) / sub / "ieeg"
    stem = f"{sub}_task-{TASK}"
    return {
        "nwb": folder / f"{stem}_ieeg.nwb",
        "ieeg_json": folder / f"{stem}_ieeg.json",
        "channels": folder / f"{stem}_channels.tsv",
        "events": folder / f"{stem}_events.tsv",
        "electrodes": folder / f"{stem}_space-ACPC_electrodes.tsv",
        "coordsystem": folder / f"{stem}_space-ACPC_coordsystem.json",
    }


def _electrodes_candidates(root: Path, sub: str) -> list[Path]:
    folder = root / sub / "ieeg"
    return [folder / f"{sub}_task-{TASK}_space-ACPC_electrodes.tsv",
            folder / f"{sub}_space-ACPC_electrodes.tsv"]


def _check_root(root: str | Path) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset root {root} does not exist (or is not a folder). "
                        f"Expected the SingleWordProductionDutch-iBIDS layout:\n{LAYOUT}\n{SYNTHETIC_HINT}")
    return root


def _require_file(role: str, candidates: list[Path]) -> Path:
    for path in candidates:
        if path.is_file():
            return path
    looked = "\n".join(f"  {p}" for p in candidates)
    raise DataError(f"missing {role} file; looked for:\n{looked}\n"
                    f"Expected layout:\n{LAYOUT}\n{SYNTHETIC_HINT}")


# ----------------------------------------------------------------------------- sidecar readers

def _read_tsv(path: Path, required: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """A BIDS TSV as ``column -> list of str`` (tab separated, first line is the header)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read as UTF-8 text ({err})") from err
    lines = [line.rstrip("\r") for line in text.split("\n") if line.strip()]
    if not lines:
        raise DataError(f"{path}: empty file (expected a header line with columns {', '.join(required)})")
    header = [h.strip() for h in lines[0].split("\t")]
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; "
                        f"found columns: {', '.join(header)}")
    table: dict[str, list[str]] = {h: [] for h in header}
    for number, line in enumerate(lines[1:], start=2):
        cells = line.split("\t")
        if len(cells) != len(header):
            raise DataError(f"{path}: line {number} has {len(cells)} tab-separated fields, "
                            f"the header has {len(header)}")
        for h, cell in zip(header, cells):
            table[h].append(cell.strip())
    return table


def _numbers(path: Path, table: dict[str, list[str]], column: str) -> np.ndarray:
    """A TSV column as float64; ``n/a`` and empty cells become NaN."""
    out = np.empty(len(table[column]))
    for i, cell in enumerate(table[column]):
        if cell in ("n/a", "", "NaN", "nan"):
            out[i] = np.nan
            continue
        try:
            out[i] = float(cell)
        except ValueError:
            raise DataError(f"{path}: column {column!r} row {i + 1} is {cell!r}, not a number") from None
    return out


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _json_number(path: Path, obj: dict, field: str, required: bool) -> float | None:
    if field not in obj or obj[field] in (None, "n/a"):
        if required:
            raise DataError(f"{path}: missing field {field}")
        return None
    try:
        value = float(obj[field])
    except (TypeError, ValueError):
        raise DataError(f"{path}: field {field} is {obj[field]!r}, not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{path}: field {field} is {obj[field]!r}, not a finite number")
    return value


def is_synthetic(root: str | Path) -> bool:
    """True when ``dataset_description.json`` says the dataset was written by the synthetic writer."""
    path = Path(root) / "dataset_description.json"
    if not path.is_file():
        return False
    try:
        desc = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    if not isinstance(desc, dict):
        return False
    if desc.get("GpureconSynthetic"):
        return True
    generated = desc.get("GeneratedBy") or []
    return any(isinstance(g, dict) and g.get("Name") == SYNTHETIC_GENERATOR for g in generated)


# ----------------------------------------------------------------------------- NWB reader

def decode_strings(values) -> np.ndarray:
    """Strings from an HDF5 string dataset (str, bytes or object) as a numpy ``str`` array, stripped."""
    arr = np.asarray(values)
    if arr.dtype.kind == "U":
        return np.char.strip(arr)
    if arr.dtype.kind not in ("S", "O"):
        raise DataError(f"expected strings, got an array of dtype {arr.dtype}")
    memo: dict = {}

    def to_str(v) -> str:
        if isinstance(v, (bytes, np.bytes_)):
            try:
                return bytes(v).decode("utf-8").strip()
            except UnicodeDecodeError:
                return bytes(v).decode("latin-1").strip()
        return str(v).strip()

    # The track repeats a handful of words over ~300k samples: decode each distinct value once.
    flat = [memo[v] if v in memo else memo.setdefault(v, to_str(v)) for v in arr.ravel().tolist()]
    return np.array(flat, dtype=str).reshape(arr.shape)


def _series_rate(series) -> float | None:
    rate = getattr(series, "rate", None)
    if rate is not None:
        return float(rate)
    timestamps = getattr(series, "timestamps", None)
    if timestamps is not None and len(timestamps) > 1:
        step = np.median(np.diff(np.asarray(timestamps[: min(len(timestamps), 100_000)], dtype=float)))
        if step > 0:
            return float(1.0 / step)
    return None


def _read_nwb(path: Path) -> dict:
    """Load the three acquisitions fully into memory and close the file."""
    import h5py
    from pynwb import NWBHDF5IO

    try:
        hdf5 = h5py.is_hdf5(path)
    except OSError:
        hdf5 = False
    if not hdf5:
        raise DataError(f"{path}: not an HDF5/NWB file (no HDF5 signature); re-download it")
    try:
        with warnings.catch_warnings():
            # pynwb warns about cached namespace versions of older files; that is not our problem.
            warnings.filterwarnings("ignore", module=r"(pynwb|hdmf)(\..*)?")
            with NWBHDF5IO(str(path), mode="r") as io:
                nwb = io.read()
                found = list(nwb.acquisition)
                missing = [name for name in ACQUISITIONS if name not in nwb.acquisition]
                if missing:
                    raise DataError(f"{path}: missing NWB acquisition(s) {', '.join(missing)}; "
                                    f"found: {', '.join(found) or 'none'}")
                ieeg, audio, stim = (nwb.acquisition[name] for name in ACQUISITIONS)
                return {
                    "seeg": np.asarray(ieeg.data[()]),
                    "seeg_rate": _series_rate(ieeg),
                    "audio": np.asarray(audio.data[()]),
                    "audio_rate": _series_rate(audio),
                    "stimulus": stim.data[()],
                }
    except DataError:
        raise
    except Exception as err:  # h5py/hdmf raise many types for truncated or foreign files
        raise DataError(f"{path}: cannot be read as NWB ({type(err).__name__}: {err}); "
                        f"the file may be truncated or corrupt: re-download it") from err


# ----------------------------------------------------------------------------- load_subject

def load_subject(root: str | Path, subject: int | str) -> Recording:
    """Read one participant into a :class:`Recording`, cross-checking every file against the others.

    Parameters
    ----------
    root : path
        Dataset root (the ``SingleWordProductionDutch-iBIDS`` folder, or a synthetic twin).
    subject : int or str
        3, "3", "03" or "sub-03".

    Returns
    -------
    Recording
        sEEG as (channels, samples) float64, audio, word trials (events.tsv rows with
        ``trial_type == 'word'`` in onset order), the Stimulus track, channel names/labels,
        ACPC coordinates (NaN where electrodes.tsv lacks a contact) and ``files`` (role -> path).

    Raises
    ------
    DataError
        Missing or unreadable files, or files that disagree; the message names file and field.
        Every channel excluded (none usable as a target) is an error naming channels.tsv and
        its ``status`` column. A channel marked ``bad`` in channels.tsv ``status`` or flat is
        not: it is listed in ``bad_channels`` (with why in ``bad_reasons``) and left out of
        the targets; a flat one is also named in a warning.
    """
    root = _check_root(root)
    sub = subject_id(subject, root)
    if not (root / sub).is_dir():
        raise DataError(f"subject folder {root / sub} not found (it is listed in participants.tsv). "
                        f"Expected layout:\n{LAYOUT}\n{SYNTHETIC_HINT}")
    canonical = subject_files(root, sub)
    files: dict[str, Path] = {}
    for role in ("nwb", "ieeg_json", "channels", "events"):
        files[role] = _require_file(f"{role} ({canonical[role].name})", [canonical[role]])
    files["electrodes"] = _require_file("electrodes.tsv", _electrodes_candidates(root, sub))
    for role, name in (("participants", "participants.tsv"), ("dataset_description", "dataset_description.json")):
        if (root / name).is_file():
            files[role] = root / name

    sidecar = _read_json(files["ieeg_json"])
    channels = _read_tsv(files["channels"], required=("name",))
    events = _read_tsv(files["events"], required=("onset", "trial_type", "value"))
    electrodes = _read_tsv(files["electrodes"], required=("name", "x", "y", "z"))
    nwb = _read_nwb(files["nwb"])

    names = channels["name"]
    seeg = _seeg_channels_first(nwb["seeg"], n_channels=len(names), files=files)
    sfreq = _check_rates(nwb["seeg_rate"], sidecar, files)
    _check_channel_counts(seeg.shape[0], channels, sidecar, files)
    stimulus = decode_strings(nwb["stimulus"]).ravel()
    if stimulus.shape[0] != seeg.shape[1]:
        raise DataError(f"{files['nwb']}: acquisition Stimulus has {stimulus.shape[0]} samples but iEEG has "
                        f"{seeg.shape[1]}; the Stimulus track must hold one string per sEEG sample")
    _check_finite(seeg, names, files["nwb"])
    marked = _status_bad(channels, files["channels"])
    flat = _flat_channels(seeg, names, files["nwb"], skip=marked)
    bad_reasons = _exclusions(names, marked, flat, files)

    trials, last_end = _word_trials(events, files["events"], sfreq, seeg.shape[1], stimulus)
    audio, audio_sfreq = _audio(nwb, files["nwb"])
    _check_audio_covers_trials(audio, audio_sfreq, last_end, files)

    return Recording(
        subject=sub,
        seeg=seeg,
        sfreq=sfreq,
        channel_names=list(names),
        channel_labels=list(channels.get("description", ["n/a"] * len(names))),
        coords=_coords(names, electrodes, files["electrodes"]),
        audio=audio,
        audio_sfreq=audio_sfreq,
        trials=trials,
        stimulus=stimulus,
        source="synthetic" if is_synthetic(root) else "real",
        root=root,
        files=files,
        bad_channels=list(bad_reasons),
        bad_reasons=bad_reasons,
        line_freq=_json_number(files["ieeg_json"], sidecar, "PowerLineFrequency", required=False) or 50.0,
    )


def _seeg_channels_first(data: np.ndarray, n_channels: int, files: dict[str, Path]) -> np.ndarray:
    """NWB iEEG (samples x channels) -> (channels, samples) float64, checking the column count."""
    if data.ndim != 2:
        raise DataError(f"{files['nwb']}: acquisition iEEG has shape {data.shape}; expected 2-D samples x channels")
    if data.shape[1] != n_channels:
        raise DataError(f"{files['channels']} lists {n_channels} channels but {files['nwb']} acquisition iEEG "
                        f"has {data.shape[1]} columns (shape {data.shape}, samples x channels); "
                        f"row i of channels.tsv must be NWB column i")
    if data.shape[0] < data.shape[1]:
        raise DataError(f"{files['nwb']}: acquisition iEEG has shape {data.shape}: fewer samples than channels; "
                        f"expected samples x channels")
    out = np.empty((data.shape[1], data.shape[0]), dtype=np.float64)
    # Transpose in blocks of samples: a whole-array transpose thrashes the cache (3x slower).
    for start in range(0, data.shape[0], 1024):
        out[:, start:start + 1024] = data[start:start + 1024].T
    return out


def _check_rates(nwb_rate: float | None, sidecar: dict, files: dict[str, Path]) -> float:
    json_rate = _json_number(files["ieeg_json"], sidecar, "SamplingFrequency", required=True)
    if json_rate <= 0:
        raise DataError(f"{files['ieeg_json']}: SamplingFrequency is {json_rate}; expected a positive rate in Hz")
    if nwb_rate is None:
        log.info("%s: iEEG series has no rate; using ieeg.json SamplingFrequency %g Hz", files["nwb"], json_rate)
        return json_rate
    if not math.isclose(nwb_rate, json_rate, rel_tol=1e-6):
        raise DataError(f"sampling rate mismatch: {files['nwb']} acquisition iEEG rate is {nwb_rate:g} Hz but "
                        f"{files['ieeg_json']} SamplingFrequency is {json_rate:g} Hz")
    return nwb_rate


def _check_channel_counts(n_columns: int, channels: dict[str, list[str]], sidecar: dict,
                          files: dict[str, Path]) -> None:
    names = channels["name"]
    duplicates = sorted({n for n in names if names.count(n) > 1}) if len(set(names)) != len(names) else []
    if duplicates:
        raise DataError(f"{files['channels']}: duplicate channel name(s) in column name: {', '.join(duplicates)}")
    declared = _json_number(files["ieeg_json"], sidecar, "SEEGChannelCount", required=False)
    if declared is None:
        return
    # SEEGChannelCount counts the SEEG-typed rows; without a type column every row is sEEG.
    types = channels.get("type")
    n_seeg = sum(t.upper() == "SEEG" for t in types) if types is not None else len(names)
    if int(declared) != n_seeg:
        raise DataError(f"channel count mismatch: {files['ieeg_json']} SEEGChannelCount is {int(declared)} but "
                        f"{files['channels']} has {n_seeg} SEEG rows and {files['nwb']} iEEG has {n_columns} columns")


def _describe_channels(names: list[str], mask: np.ndarray) -> str:
    picked = [names[i] for i in np.flatnonzero(mask)]
    more = f" (+{len(picked) - 10} more)" if len(picked) > 10 else ""
    return ", ".join(picked[:10]) + more


def _check_finite(seeg: np.ndarray, names: list[str], path: Path) -> None:
    bad = ~np.isfinite(seeg).all(axis=1)
    if bad.any():
        raise DataError(f"{path}: acquisition iEEG holds NaN or infinite samples in {int(bad.sum())} channel(s): "
                        f"{_describe_channels(names, bad)}")


# channels.tsv ``status`` values (BIDS): ``bad`` channels are excluded from the targets.
CHANNEL_STATUS = ("good", "bad", "n/a")


def _status_bad(channels: dict[str, list[str]], path: Path) -> list[str]:
    """Channels channels.tsv marks ``bad`` in its optional ``status`` column (BIDS: noisy or
    broken contacts). Empty cells count as ``n/a``; any other value is a DataError."""
    status = channels.get("status")
    if status is None:
        return []
    values = [v.strip().lower() or "n/a" for v in status]
    for row, value in enumerate(values, start=2):
        if value not in CHANNEL_STATUS:
            raise DataError(f"{path}: column status line {row} is {status[row - 2]!r}; "
                            f"allowed values: {', '.join(CHANNEL_STATUS)}")
    return [name for name, value in zip(channels["name"], values) if value == "bad"]


def _exclusions(names: list[str], marked: list[str], flat: list[str],
                files: dict[str, Path]) -> dict[str, str]:
    """Why each excluded channel is left out, in channel order; an error if none is left."""
    # flat is tested on the status-good channels only: the two never overlap
    reasons = {name: "status bad in channels.tsv" if name in marked else "flat (constant signal)"
               for name in names if name in marked or name in flat}
    if marked:
        log.info("%s: %d channel(s) with status bad, excluded from the targets: %s", files["channels"],
                 len(marked), _describe_channels(names, np.isin(names, marked)))
    if len(reasons) == len(names):
        flat_note = f" and {len(flat)} flat (constant signal) in {files['nwb']}" if flat else ""
        raise DataError(f"{files['channels']}: no channel is left for the targets: {len(marked)} of "
                        f"{len(names)} have status bad (column status){flat_note}; at least one "
                        f"channel must have status good (or n/a) and a varying signal")
    return reasons


def _flat_channels(seeg: np.ndarray, names: list[str], path: Path, skip=()) -> list[str]:
    """Channels with (almost) no variance: warned about and returned, not an error.

    ``skip``: channels already excluded (status bad); not tested, nor part of the reference
    scale (the median peak-to-peak of the others), which a dead or wild bad contact would bend.
    """
    ptp = np.ptp(seeg, axis=1)
    tested = ~np.isin(names, list(skip))
    if not tested.any():
        return []
    # also catches exactly constant channels (ptp 0)
    flat = tested & (ptp <= 1e-10 * float(np.median(ptp[tested])))
    if flat.any():
        message = (f"{path}: {int(flat.sum())} flat channel(s) (constant signal) marked bad and excluded "
                   f"from targets: {_describe_channels(names, flat)}")
        warnings.warn(message, UserWarning, stacklevel=3)
        log.warning(message)
    return [names[i] for i in np.flatnonzero(flat)]


def _word_trials(events: dict[str, list[str]], path: Path, sfreq: float, n_samples: int,
                 stimulus: np.ndarray) -> tuple[Trials, float]:
    """Word rows in onset order, checked against the sEEG length and the Stimulus track.

    Also returns the end (s) of the last word trial: its onset plus its events.tsv duration.
    """
    onset = _numbers(path, events, "onset")
    if not np.isfinite(onset).all():
        raise DataError(f"{path}: column onset has empty or n/a values (rows "
                        f"{', '.join(str(i + 1) for i in np.flatnonzero(~np.isfinite(onset))[:10])})")
    duration_s = n_samples / sfreq
    past = onset >= duration_s
    if past.any() or (onset < 0).any():
        rows = np.flatnonzero(past | (onset < 0))
        raise DataError(f"{path}: column onset has {len(rows)} value(s) outside the recording [0, {duration_s:g}) s "
                        f"(rows {', '.join(str(i + 1) for i in rows[:10])}, e.g. {onset[rows[0]]:g} s); "
                        f"onsets past the end of the sEEG")
    if "sample" in events:
        sample_f = _numbers(path, events, "sample")
        off = ~np.isfinite(sample_f) | (np.abs(sample_f - onset * sfreq) > _SAMPLE_TOLERANCE)
        if off.any():
            i = int(np.flatnonzero(off)[0])
            raise DataError(f"{path}: column sample disagrees with onset x {sfreq:g} Hz in {int(off.sum())} row(s) "
                            f"(row {i + 1}: onset {onset[i]:g} s -> {onset[i] * sfreq:.1f}, sample {sample_f[i]:g})")
        sample = np.round(sample_f).astype(np.int64)
    else:
        sample = np.round(onset * sfreq).astype(np.int64)
    sample = np.clip(sample, 0, n_samples - 1)

    is_word = np.array([t.strip().lower() == "word" for t in events["trial_type"]], dtype=bool)
    if not is_word.any():
        kinds = sorted(set(events["trial_type"]))
        raise DataError(f"{path}: no rows with trial_type 'word' (found trial_type values: {', '.join(kinds)})")
    idx = np.flatnonzero(is_word)
    idx = idx[np.argsort(onset[idx], kind="stable")]
    words = [events["value"][i].strip() for i in idx]
    _check_stimulus(words, sample[idx], stimulus, sfreq, path)
    last_end = float(onset[idx[-1]])
    if "duration" in events:
        duration = _numbers(path, events, "duration")[idx[-1]]
        last_end += float(duration) if np.isfinite(duration) else 0.0
    return Trials(onset=onset[idx].astype(np.float64), sample=sample[idx], word=words), last_end


def _check_stimulus(words: list[str], samples: np.ndarray, stimulus: np.ndarray, sfreq: float,
                    path: Path) -> None:
    """The word on screen at each onset sample must be the events value.

    A word found within 50 ms of the onset passes too: the two files may round the screen flip
    differently, while a swapped or shifted word list (words 3 s apart) still fails.
    """
    tol = max(int(_SAMPLE_TOLERANCE), int(round(0.05 * sfreq)))
    mismatches = []
    for k, (word, s) in enumerate(zip(words, samples)):
        if stimulus[s] == word:
            continue
        if word in set(stimulus[max(0, s - tol): s + tol + 1].tolist()):
            continue
        mismatches.append(f"trial {k + 1} at sample {s}: events value {word!r}, Stimulus shows {stimulus[s]!r}")
    if mismatches:
        raise DataError(f"{path}: column value disagrees with the NWB Stimulus track in {len(mismatches)} of "
                        f"{len(words)} word trials ({'; '.join(mismatches[:5])})")


def _audio(nwb: dict, path: Path) -> tuple[np.ndarray, float]:
    audio = nwb["audio"]
    if audio.ndim == 2 and 1 in audio.shape:
        audio = audio.ravel()
    if audio.ndim != 1:
        raise DataError(f"{path}: acquisition Audio has shape {audio.shape}; expected 1-D (mono)")
    rate = nwb["audio_rate"]
    if rate is None or rate <= 0:
        raise DataError(f"{path}: acquisition Audio has no sampling rate (rate or timestamps)")
    return np.asarray(audio, dtype=np.float64), float(rate)


def _check_audio_covers_trials(audio: np.ndarray, audio_sfreq: float, last_end: float,
                               files: dict[str, Path]) -> None:
    """The audio must last until the end of the last word trial (onset + events.tsv duration)."""
    audio_s = audio.shape[0] / audio_sfreq
    if audio_s + 1e-3 < last_end:
        raise DataError(f"{files['nwb']}: acquisition Audio lasts {audio_s:.3f} s but the last word trial in "
                        f"{files['events']} ends at {last_end:.3f} s; the audio is shorter than the last trial")


def _coords(names: list[str], electrodes: dict[str, list[str]], path: Path) -> np.ndarray:
    """ACPC coordinates merged on channel name; NaN for contacts electrodes.tsv does not list."""
    xyz = np.stack([_numbers(path, electrodes, c) for c in ("x", "y", "z")], axis=1)
    where: dict[str, int] = {}
    for i, name in enumerate(electrodes["name"]):
        where.setdefault(name, i)
    coords = np.full((len(names), 3), np.nan)
    missing = []
    for c, name in enumerate(names):
        if name in where:
            coords[c] = xyz[where[name]]
        else:
            missing.append(name)
    if missing:
        log.info("%s lacks %d channel(s) (coordinates NaN): %s", path, len(missing), ", ".join(missing[:10]))
    return coords
